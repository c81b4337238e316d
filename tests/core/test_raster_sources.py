"""Rasters as public sources ship them: calibrated products named by their metadata, undescribed
band stacks that need a word from the user, cut cloud-optimized GeoTIFFs, headers of huge rasters;
and what the reader reports about how it placed each band."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from eov_edge.core.bands import CANVAS_SLOTS, SLOT_INDEX
from eov_edge.core.errors import BandMismatchError, ImageTooLargeError, RasterReadError
from eov_edge.core.raster import MAX_SOURCE_PIXELS, Window, read_view

UTM = dict(crs="EPSG:32633", transform=from_origin(500000, 4000000, 30, 30))


def write(path, data, dtype, descriptions=None, scales=None, offsets=None, units=None, **profile):
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                       **UTM, **profile) as ds:
        ds.write(data.astype(dtype))
        for i in range(count):
            if descriptions:
                ds.set_band_description(i + 1, descriptions[i])
            if units:
                ds.set_band_unit(i + 1, units[i])
        if scales:
            ds.scales = scales
        if offsets:
            ds.offsets = offsets
    return str(path)


def thermal_value(view, y=3, x=4):
    slot = CANVAS_SLOTS[SLOT_INDEX["thermal_ir"]]
    return view.canvas[SLOT_INDEX["thermal_ir"], y, x] * slot.std + slot.mean  # back to 0-1 brightness


def test_a_kelvin_lwir_band_reads_with_no_option(tmp_path):
    """uint16 described LWIR, unit K, scale 0.01 (K*100, as Landsat-style products store it)."""
    kelvin = np.full((1, 16, 16), 300.0)
    kelvin[0, 3, 4] = 285.0
    path = write(tmp_path / "st.tif", np.round(kelvin * 100), "uint16", ["LWIR"], scales=[0.01], units=["K"])
    view = read_view(path)
    assert view.band_set == "thermal_kelvin" and view.modality == "infrared"
    assert thermal_value(view) == pytest.approx((285.0 - 250) / 70, abs=1e-5)
    assert view.extra["bands"] == [{"band": "LWIR", "slot": "thermal_ir", "decided_by": "band descriptions"}]
    celsius = write(tmp_path / "c.tif", kelvin - 273.15, "float32", ["LWIR"], units=["celsius"])
    assert thermal_value(read_view(celsius)) == pytest.approx((285.0 - 250) / 70, abs=1e-4)
    radiance = write(tmp_path / "r.tif", kelvin, "float32", ["LWIR"], units=["W/(m2 sr um)"])
    with pytest.raises(BandMismatchError, match="reads kelvin"):
        read_view(radiance)
    # a one-band float32 without a name is not taken for a temperature (a DEM looks the same)
    with pytest.raises(BandMismatchError, match="match no known band set"):
        read_view(write(tmp_path / "dem.tif", kelvin, "float32"))


def test_undescribed_band_stacks_are_not_guessed_between_sensors(tmp_path):
    data = np.random.default_rng(0).integers(500, 3000, (7, 16, 16))
    path = write(tmp_path / "seven.tif", data, "uint16")
    with pytest.raises(BandMismatchError, match="landsat8_sr or 7 of the bands of sentinel2.*--bands"):
        read_view(path)
    assert read_view(path, band_set="landsat8_sr").band_set == "landsat8_sr"
    names = "B02,B03,B04,B05,B06,B07,B08"
    view = read_view(path, bands=names)
    assert view.band_set.startswith("sentinel2_l2a[") and len(view.extra["bands"]) == 7
    assert {b["decided_by"] for b in view.extra["bands"]} == {"--bands"}
    red = CANVAS_SLOTS[SLOT_INDEX["red"]]  # the third band is B04
    assert view.canvas[SLOT_INDEX["red"], 2, 5] == pytest.approx((data[2, 2, 5] * 1e-4 - red.mean) / red.std, rel=1e-5)
    reordered = read_view(path, bands="B08,B07,B06,B05,B04,B03,B02")  # file order is what --bands says
    assert reordered.canvas[SLOT_INDEX["red"], 2, 5] == pytest.approx(
        (data[4, 2, 5] * 1e-4 - red.mean) / red.std, rel=1e-5)
    with pytest.raises(BandMismatchError, match="names 3 band"):
        read_view(path, bands="B02,B03,B04")
    with pytest.raises(BandMismatchError, match="not band names"):
        read_view(path, bands="B02,B03,B04,B05,B06,B07,X9")
    four = write(tmp_path / "rgbn.tif", data[:4], "uint16")  # RGBN: no band set has 4 bands
    with pytest.raises(BandMismatchError, match="--bands B04,B03,B02,B08"):
        read_view(four)
    assert read_view(four, bands="B04,B03,B02,B08").present.sum() == 4


def test_a_cut_cloud_optimized_geotiff_is_refused_though_its_overviews_survive(tmp_path):
    from rasterio.enums import Resampling
    from rasterio.shutil import copy

    data = np.random.default_rng(1).integers(20, 200, (3, 1024, 1024))
    tiled = write(tmp_path / "tiled.tif", data, "uint8", tiled=True, blockxsize=256, blockysize=256,
                  compress="deflate")
    with rasterio.open(tiled, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
    cog = tmp_path / "cog.tif"
    copy(tiled, cog, driver="COG")  # overviews first, full resolution last
    assert read_view(str(cog), size=128).valid.all()
    whole = cog.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with rasterio.open(cut) as ds:  # GDAL itself answers the reduced read from the overviews
        assert ds.read(1, out_shape=(128, 128)).shape == (128, 128)
    with pytest.raises(RasterReadError, match="truncated"):
        read_view(str(cut), size=128)
    with pytest.raises(RasterReadError, match="truncated"):
        read_view(str(cut), size=128, window=Window(768, 768, 256, 256))
    assert read_view(str(cut), size=128, window=Window(0, 0, 256, 256)).valid.all()  # the first blocks are there


def test_a_huge_raster_is_refused_before_reading_and_its_tiles_read(tmp_path):
    side = 100_000
    path = tmp_path / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, nodata=0, **UTM) as ds:
        ds.write(np.full((1, 512, 512), 90, np.uint8), window=rasterio.windows.Window(0, 0, 512, 512))
    assert path.stat().st_size < 10 << 20  # a header and one block
    assert side * side > MAX_SOURCE_PIXELS
    with pytest.raises(ImageTooLargeError, match="--tile"):
        read_view(str(path), band_set="thermal8", size=224)
    view = read_view(str(path), band_set="thermal8", size=224, window=Window(0, 0, 512, 512))
    assert view.valid.all()
