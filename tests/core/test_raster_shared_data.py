"""Every sensor of the shared real-data folder reads onto the canvas (skips without the data,
fails in CI where EOV_REQUIRE_DATA=1)."""

import numpy as np
import pytest

from eov_edge.core.raster import band_files_in, read_view

pytestmark = pytest.mark.data


def test_hrsid_sar_chips_stored_as_rgb_jpeg(shared_data):
    chips = sorted((shared_data / "hrsid_mini" / "images").glob("*.jpg"))
    assert len(chips) >= 30
    for chip in chips[:8]:
        view = read_view(chip, band_set="sar_amplitude8", size=224)
        assert view.modality == "sar" and view.present.sum() == 1
        assert np.isfinite(view.canvas).all()


def test_hit_uav_frames(shared_data):
    frames = sorted((shared_data / "hit_uav" / "val").glob("*.jpg"))[:20]
    for frame in frames:
        view = read_view(frame, band_set="thermal8", size=224)
        assert view.source_size == (512, 640)


def test_bigearthnet_every_tiny_patch(shared_data):
    for kind, band_set, slots in (("s2-tiny", "sentinel2_l2a", 12), ("s1-tiny", "sentinel1_db", 2)):
        patches = sorted((shared_data / "bigearthnet_tiny" / kind).iterdir())
        assert patches
        for patch in patches:
            view = read_view(band_files_in(patch), size=120)
            assert view.band_set == band_set and view.present.sum() == slots
            assert view.crs is not None


def test_major_tom_large_cell_with_processing_baseline_offset(shared_data):
    cell = next((shared_data / "rico_hdl" / "Major-TOM-Core" / "S2L2A").glob("*/*/*N0400*"))
    view = read_view(band_files_in(cell), band_set="sentinel2_l2a_n0400", size=256)
    assert view.source_size == (1068, 1068) and view.canvas.shape == (16, 256, 256)
    # with the -1000 offset applied, reflectances land near the slot statistics, not 1 sigma above
    assert abs(float(view.canvas[view.present].mean())) < 2.0


def test_ssl4eo_sentinel1_and_sentinel2(shared_data):
    root = shared_data / "rico_hdl" / "SSL4EO-S12"
    for folder in sorted((root / "s1" / "0000200").iterdir()):
        assert read_view(band_files_in(folder)).band_set == "sentinel1_db"
    for folder in sorted((root / "s2c" / "0000200").iterdir()):  # L1C with B10
        assert read_view(band_files_in(folder), size=64).band_set == "sentinel2_l1c"


def test_rgb_byte_nodata_border_is_masked(shared_data):
    view = read_view(shared_data / "geotiff_samples" / "RGB.byte.tif", size=256)
    assert view.band_set == "rgb8"
    assert 0.3 < view.valid.mean() < 0.95  # the rotated Landsat scene has a nodata=0 collar
    assert (view.canvas[:, ~view.valid] == 0).all()


def test_eurosat_and_uc_merced(shared_data):
    for path in sorted((shared_data / "rico_hdl" / "EuroSAT_MS").glob("*/*.tif")):
        assert read_view(path).band_set == "sentinel2_l1c"
    for path in sorted((shared_data / "rico_hdl" / "UCMerced_LandUse").glob("Images/*/*.tif")):
        assert read_view(path, size=224).band_set == "rgb8"


def test_sentinel2_processing_baseline_picks_the_offset_band_set(shared_data):
    """Major-TOM keeps the product name in the path: N0400 (offset -1000 DN) vs N9999 (none)."""
    from eov_edge.core.raster import band_files_in, read_view

    cells = shared_data / "rico_hdl" / "Major-TOM-Core" / "S2L2A"
    n0400 = next((cells / "0U").glob("*/*_N0400_*"))
    n9999 = next((cells / "199U").glob("*/*_N9999_*"))
    assert read_view(band_files_in(n0400), size=32).band_set == "sentinel2_l2a_n0400"
    assert read_view(band_files_in(n9999), size=32).band_set == "sentinel2_l2a"
    assert read_view(band_files_in(n0400), band_set="sentinel2_l2a", size=32).band_set == "sentinel2_l2a"
