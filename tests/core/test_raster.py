"""Reading real rasters from calib_data onto the canvas, and every kind of bad input."""

import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine

from eov_edge.core.bands import CANVAS_SLOTS, SLOT_INDEX, get_band_set
from eov_edge.core.errors import (
    BandMismatchError,
    ImageTooLargeError,
    NoValidPixelsError,
    RasterReadError,
)
from eov_edge.core.raster import band_files_in, read_view


def slots_of(view):
    return {CANVAS_SLOTS[i].name for i in np.flatnonzero(view.present)}


def test_eurosat_ms_thirteen_bands_guessed_as_l1c(calib_samples):
    path = calib_samples["eurosat_ms_annualcrop_1"].views[0][0]
    view = read_view(path)
    assert view.band_set == "sentinel2_l1c" and view.modality == "multispectral"
    assert view.canvas.shape == (16, 64, 64) and len(slots_of(view)) == 13
    # hand check one pixel of B04 (red) against the raw file
    with rasterio.open(path) as ds:
        raw = ds.read(4)[10, 20]
    red = CANVAS_SLOTS[SLOT_INDEX["red"]]
    assert view.canvas[SLOT_INDEX["red"], 10, 20] == pytest.approx((raw * 1e-4 - red.mean) / red.std, rel=1e-5)


def test_bigearthnet_one_file_per_band_resampled_to_finest_grid(calib_samples):
    files = calib_samples["bigearthnet_s2_36_85"].views[0]
    view = read_view(list(reversed(files)))  # order of the files must not matter
    assert view.band_set == "sentinel2_l2a"
    assert view.canvas.shape == (16, 120, 120)  # B01 is 20x20 (60 m), B02 120x120 (10 m)
    assert "cirrus" not in slots_of(view) and len(slots_of(view)) == 12
    assert view.crs is not None and "32629" in view.crs
    coastal = view.canvas[SLOT_INDEX["coastal"]]
    assert np.isfinite(coastal).all() and coastal.std() > 0


def test_sentinel1_vv_vh_slots(calib_samples):
    view = read_view(calib_samples["bigearthnet_s1_61_39"].views[0], size=64)
    assert view.band_set == "sentinel1_db" and view.modality == "sar"
    assert slots_of(view) == {"sar_vv", "sar_vh"}
    assert view.canvas.shape == (16, 64, 64)
    # VH is weaker than VV over land: check the physical order survives standardization
    vv = view.canvas[SLOT_INDEX["sar_vv"]] * 5.0 - 12.5
    vh = view.canvas[SLOT_INDEX["sar_vh"]] * 5.5 - 20.0
    assert vh.mean() < vv.mean()


def test_thermal_frame_needs_its_band_set_named(calib_samples):
    path = calib_samples["hit_uav_0_100_30_0_03306"].views[0][0]
    with pytest.raises(BandMismatchError, match="thermal8"):
        read_view(path)  # 1-band 8-bit: thermal or SAR amplitude? ambiguous
    view = read_view(path, band_set="thermal8", size=(128, 160))
    assert view.modality == "infrared" and slots_of(view) == {"thermal_ir"}
    assert view.canvas.shape == (16, 128, 160) and view.source_size == (512, 640)


def test_rgb_photo_guessed_and_colour_photo_refused_as_thermal(calib_samples):
    path = calib_samples["eurosat_rgb_pasture_300"].views[0][0]
    view = read_view(path, size=224)
    assert view.band_set == "rgb8" and slots_of(view) == {"red", "green", "blue"}
    assert view.crs is None and view.transform is None
    with pytest.raises(BandMismatchError, match="colour photo"):
        read_view(path, band_set="thermal8")


def test_landsat_georeference_maps_canvas_pixels_to_the_map(calib_samples):
    path = calib_samples["landsat7_etm_olinda"].views[0][0]
    view = read_view(path, size=100)
    assert view.band_set == "landsat7_etm8"
    with rasterio.open(path) as ds:
        left, bottom, right, top = ds.bounds
    x0, y0 = view.pixel_to_map(0, 0)
    x1, y1 = view.pixel_to_map(100, 100)
    assert (x0, y0) == pytest.approx((left, top))
    assert (x1, y1) == pytest.approx((right, bottom))


def test_multi_view_temporal_sample_reads_both_dates(calib_samples):
    views = calib_samples["ssl4eo_s2a_0000200"].read(size=96)
    assert len(views) == 2 and all(v.canvas.shape == (16, 96, 96) for v in views)
    assert not np.allclose(views[0].canvas, views[1].canvas)


def _write(path, data, nodata=None, transform=None, crs="EPSG:32633"):
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", count=count, height=height, width=width,
                       dtype=data.dtype, nodata=nodata, crs=crs,
                       transform=transform or Affine(10, 0, 500000, 0, -10, 5000000)) as ds:
        ds.write(data)


def test_nodata_and_nan_pixels_are_masked(tmp_path):
    data = np.full((2, 8, 8), -12.0, np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = -9999
    path = tmp_path / "s1.tif"
    _write(path, data, nodata=-9999)
    view = read_view(path)
    assert view.band_set == "sentinel1_db"
    assert not view.valid[0, 0] and not view.valid[1, 1] and view.valid.sum() == 62
    assert (view.canvas[:, 0, 0] == 0).all() and np.isfinite(view.canvas).all()


def test_extra_nodata_value_is_honoured(tmp_path):
    data = np.full((2, 4, 4), -12.0, np.float32)
    data[:, 0, :] = 0.0
    path = tmp_path / "s1.tif"
    _write(path, data)
    assert read_view(path, nodata=0.0).valid.sum() == 12


def test_all_nan_view_is_refused(tmp_path):
    path = tmp_path / "nan.tif"
    _write(path, np.full((2, 4, 4), np.nan, np.float32))
    with pytest.raises(NoValidPixelsError, match="every pixel is nodata or NaN"):
        read_view(path)


def test_truncated_geotiff_is_a_clear_error(tmp_path, calib_samples):
    src = calib_samples["eurosat_ms_annualcrop_1"].views[0][0]
    broken = tmp_path / "truncated.tif"
    data = src.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(RasterReadError, match="truncated"):
        read_view(broken)


@pytest.mark.parametrize("name, band_set", [("infrared/hit_uav_0_100_30_0_03306/0_100_30_0_03306.jpg", "thermal8"),
                                             ("heldout/views/grounding/grounding_06_v0.png", "thermal8")])
def test_a_truncated_png_or_jpeg_is_refused_not_read_as_a_dark_image(tmp_path, name, band_set):
    """GDAL decodes what a cut PNG or JPEG holds and fills the rest with zeros, without an error."""
    from eov_edge.core.paths import calib_dir

    whole = calib_dir() / name
    read_view(str(whole), band_set=band_set, size=32)  # the whole file reads
    cut = tmp_path / f"cut{whole.suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(RasterReadError, match="truncated .*fetch or export it again"):
        read_view(str(cut), band_set=band_set, size=32)


def test_non_raster_and_missing_files(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RasterReadError, match="not a raster"):
        read_view(text)
    with pytest.raises(RasterReadError, match="no such file"):
        read_view(tmp_path / "missing.tif")
    with pytest.raises(RasterReadError, match="no files"):
        read_view([])


def test_wrong_band_count_for_named_band_set(calib_samples):
    with pytest.raises(BandMismatchError, match="needs 2"):
        read_view(calib_samples["eurosat_ms_annualcrop_1"].views[0][0], band_set="sentinel1_db")


def test_sentinel2_band_files_of_two_resolutions_are_a_subset_on_the_canvas(calib_samples):
    """B02, B03, B04 (10 m) and B8A (20 m), no option: their four slots filled, the rest empty."""
    files = list(calib_samples["bigearthnet_s2_36_85"].views[0])
    chosen = [f for f in files if str(f).endswith(("_B02.tif", "_B03.tif", "_B04.tif", "_B8A.tif"))]
    assert len(chosen) == 4
    view = read_view(chosen)
    assert view.band_set == "sentinel2_l2a[B02,B03,B04,B8A]"
    assert slots_of(view) == {"blue", "green", "red", "nir_narrow"}
    assert view.canvas.shape == (16, 120, 120) and not view.canvas[~view.present].any()
    whole = read_view(files)  # the same bands read with all twelve land in the same slots alike
    for slot in ("blue", "nir_narrow"):
        np.testing.assert_array_equal(view.canvas[SLOT_INDEX[slot]], whole.canvas[SLOT_INDEX[slot]])
    assert read_view(chosen, band_set="sentinel2_l2a").band_set == view.band_set


def test_a_single_band_file_described_b04_is_the_red_slot(tmp_path, calib_samples):
    source = next(f for f in calib_samples["bigearthnet_s2_36_85"].views[0] if str(f).endswith("_B04.tif"))
    with rasterio.open(source) as ds:
        data, profile = ds.read(), ds.profile
    described = tmp_path / "red.tif"
    with rasterio.open(described, "w", **profile) as ds:
        ds.write(data)
        ds.set_band_description(1, "B04")
    view = read_view(described)
    assert view.band_set == "sentinel2_l2a[B04]" and slots_of(view) == {"red"}
    np.testing.assert_array_equal(view.canvas[SLOT_INDEX["red"]], read_view(source).canvas[SLOT_INDEX["red"]])


def test_band_files_with_unknown_or_foreign_bands(tmp_path, calib_samples):
    files = list(calib_samples["bigearthnet_s2_36_85"].views[0])
    odd = tmp_path / "mystery.tif"
    shutil.copy(files[0], odd)
    with pytest.raises(BandMismatchError, match="cannot tell the band"):
        read_view([files[0], odd])
    with pytest.raises(BandMismatchError, match="has no band"):
        read_view(files[:5], band_set="sentinel1_db")


def test_band_files_covering_different_areas_are_refused(tmp_path):
    _write(tmp_path / "VV.tif", np.full((1, 8, 8), -10, np.float32))
    _write(tmp_path / "VH.tif", np.full((1, 8, 8), -18, np.float32),
           transform=Affine(10, 0, 600000, 0, -10, 5000000))
    with pytest.raises(BandMismatchError, match="same area"):
        read_view(band_files_in(tmp_path))


def test_image_too_large_to_read_in_one_piece(calib_samples):
    with pytest.raises(ImageTooLargeError, match="tile"):
        read_view(calib_samples["eurosat_rgb_pasture_300"].views[0][0], size=5000)


def test_greyscale_stored_as_rgb_is_accepted(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (1, 16, 16), dtype=np.uint8)
    path = tmp_path / "sar.tif"
    _write(path, np.repeat(grey, 3, axis=0), crs=None)
    view = read_view(path, band_set="sar_amplitude8")
    assert view.modality == "sar" and view.present.sum() == 1
    expected, _ = __import__("eov_edge.core.bands", fromlist=["to_canvas"]).to_canvas(
        grey.astype(np.float32), np.ones((16, 16), bool), get_band_set("sar_amplitude8"))
    np.testing.assert_allclose(view.canvas, expected, rtol=1e-5)


def test_rgba_png_reads_its_alpha_as_the_validity_mask(tmp_path):
    """Change-detection sets ship RGBA PNGs: alpha is where the image is, not a fourth band."""
    rgba = np.full((4, 64, 64), 120, np.uint8)
    rgba[3] = 255
    rgba[3, :, :16] = 0  # the left quarter is outside the image
    path = tmp_path / "tile.png"
    with rasterio.open(path, "w", driver="PNG", width=64, height=64, count=4, dtype="uint8") as ds:
        ds.write(rgba)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha  # as the PNG driver reads it
    view = read_view(path, size=64)
    assert view.band_set == "rgb8" and slots_of(view) == {"red", "green", "blue"}
    assert not view.valid[:, :16].any() and view.valid[:, 17:].all()


def test_complex_and_paletted_rasters_are_refused_with_what_to_do(tmp_path):
    slc = tmp_path / "slc.tif"
    with rasterio.open(slc, "w", driver="GTiff", width=32, height=32, count=1, dtype="complex64") as ds:
        ds.write((np.ones((1, 32, 32)) + 1j).astype(np.complex64))
    with pytest.raises(BandMismatchError, match="complex values.*intensity"):
        read_view(slc)
    classes = tmp_path / "classes.tif"
    with rasterio.open(classes, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8") as ds:
        ds.write(np.arange(32 * 32, dtype=np.uint8).reshape(1, 32, 32) % 4)
        ds.write_colormap(1, {0: (0, 0, 255, 255), 1: (0, 255, 0, 255), 2: (255, 255, 0, 255), 3: (255, 0, 0, 255)})
    with pytest.raises(BandMismatchError, match="paletted.*-expand rgb"):
        read_view(classes, band_set="thermal8")  # even where a band set is named: the values are indices
