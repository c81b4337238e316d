import json

import numpy as np
import pytest

from eov_edge.core import bands
from eov_edge.core.bands import (
    BAND_SETS,
    CANVAS_SLOTS,
    SLOT_INDEX,
    band_name_from_filename,
    band_subset,
    find_band_set,
    get_band_set,
    to_canvas,
)
from eov_edge.core.errors import BandMismatchError, UnknownBandError


def test_canvas_has_sixteen_slots_in_spectral_order():
    assert len(CANVAS_SLOTS) == 16
    optical = [s.center_nm for s in CANVAS_SLOTS if s.unit == "reflectance"]
    assert optical == sorted(optical)
    assert [s.name for s in CANVAS_SLOTS[-3:]] == ["sar_vv", "sar_vh", "thermal_ir"]


@pytest.mark.parametrize(
    "band_set, expected_slots",
    [
        ("sentinel2_l2a", {"coastal", "blue", "green", "red", "red_edge_1", "red_edge_2", "red_edge_3",
                           "nir", "nir_narrow", "water_vapour", "swir_1", "swir_2"}),
        ("sentinel2_l1c", {"coastal", "blue", "green", "red", "red_edge_1", "red_edge_2", "red_edge_3",
                           "nir", "nir_narrow", "water_vapour", "cirrus", "swir_1", "swir_2"}),
        ("sentinel1_db", {"sar_vv", "sar_vh"}),
        ("sar_amplitude8", {"sar_vv"}),
        ("thermal8", {"thermal_ir"}),
        ("rgb8", {"red", "green", "blue"}),
        ("landsat7_etm8", {"blue", "green", "red", "nir", "swir_1", "swir_2"}),
        ("landsat8_sr", {"coastal", "blue", "green", "red", "nir", "swir_1", "swir_2"}),
    ],
)
def test_each_sensor_fills_its_slots(band_set, expected_slots):
    bs = get_band_set(band_set)
    assert set(bs.slots) == expected_slots
    assert len(set(bs.slots)) == len(bs.slots), "two bands of one sensor in one slot"
    values = np.full((len(bs.bands), 4, 5), 100, dtype=np.float32)
    canvas, present = to_canvas(values, np.ones((4, 5), bool), bs)
    assert canvas.shape == (16, 4, 5) and canvas.dtype == np.float32
    assert {CANVAS_SLOTS[i].name for i in np.flatnonzero(present)} == expected_slots
    assert not canvas[~present].any(), "absent slots must stay zero"


def test_sentinel2_band_values_are_standardized_by_hand():
    bs = get_band_set("sentinel2_l2a")
    values = np.zeros((12, 1, 1), np.float32)
    values[bs.band_names.index("B04"), 0, 0] = 1500  # reflectance 0.15
    canvas, _ = to_canvas(values, np.ones((1, 1), bool), bs)
    red = CANVAS_SLOTS[SLOT_INDEX["red"]]
    assert canvas[SLOT_INDEX["red"], 0, 0] == pytest.approx((0.15 - red.mean) / red.std, rel=1e-5)


def test_processing_baseline_04_offset_is_applied():
    old, new = get_band_set("sentinel2_l2a"), get_band_set("sentinel2_l2a_n0400")
    values = np.full((12, 1, 1), 2500, np.float32)
    a, _ = to_canvas(values, np.ones((1, 1), bool), old)
    b, _ = to_canvas(values, np.ones((1, 1), bool), new)
    red = SLOT_INDEX["red"]
    assert a[red, 0, 0] - b[red, 0, 0] == pytest.approx(0.1 / CANVAS_SLOTS[red].std, rel=1e-5)


def test_sar_amplitude_goes_to_decibels():
    bs = get_band_set("sar_amplitude8")
    canvas, _ = to_canvas(np.array([[[255.0]]], np.float32), np.ones((1, 1), bool), bs)
    vv = CANVAS_SLOTS[SLOT_INDEX["sar_vv"]]
    full_scale_db = 20 * np.log10(1 + 1 / 510)
    assert canvas[SLOT_INDEX["sar_vv"], 0, 0] == pytest.approx((full_scale_db - vv.mean) / vv.std, rel=1e-4)


def test_invalid_pixels_are_zero_on_canvas():
    bs = get_band_set("sentinel1_db")
    values = np.full((2, 2, 2), -10.0, np.float32)
    valid = np.array([[True, False], [True, True]])
    canvas, _ = to_canvas(values, valid, bs)
    assert (canvas[:, 0, 1] == 0).all()
    assert canvas[SLOT_INDEX["sar_vv"], 0, 0] != 0


def test_to_canvas_rejects_wrong_band_count():
    with pytest.raises(BandMismatchError, match="has 2 bands"):
        to_canvas(np.zeros((3, 2, 2)), np.ones((2, 2), bool), get_band_set("sentinel1_db"))


@pytest.mark.parametrize(
    "filename, band",
    [
        ("S2A_MSIL2A_20170617T113321_36_85_B01.tif", "B01"),
        ("S2A_MSIL2A_20170617T113321_36_85_B8A.tif", "B8A"),
        ("B8A.tif", "B8A"),
        ("B2.tif", "B02"),
        ("B12.tif", "B12"),
        ("patch_B08A.tif", "B8A"),
        ("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39_VV.tif", "VV"),
        ("VH.tif", "VH"),
        ("metadata.json", None),
        ("RGB.byte.tif", None),
        ("B9A.tif", None),
    ],
)
def test_band_names_from_file_names(filename, band):
    assert band_name_from_filename(filename) == band


def test_find_band_set_by_names_or_the_first_set_holding_them():
    assert find_band_set(("VH", "VV")).name == "sentinel1_db"
    l2a = BAND_SETS["sentinel2_l2a"].band_names
    assert find_band_set(tuple(reversed(l2a))).name == "sentinel2_l2a"
    assert find_band_set(("B8A", "B02", "B03", "B04")).name == "sentinel2_l2a"  # a part of it
    assert find_band_set(("VV",)).name == "sentinel1_db"
    with pytest.raises(BandMismatchError, match="match no known band set"):
        find_band_set(("B02", "VV"))  # two sensors


def test_a_band_subset_fills_its_slots_and_leaves_the_rest_empty():
    subset = band_subset(BAND_SETS["sentinel2_l2a"], ("B8A", "B02", "B04", "B03"))
    assert subset.band_names == ("B02", "B03", "B04", "B8A") and subset.name == "sentinel2_l2a[B02,B03,B04,B8A]"
    values = np.full((4, 2, 2), 1500, np.uint16)
    canvas, present = to_canvas(values, np.ones((2, 2), bool), subset)
    filled = {CANVAS_SLOTS[i].name for i in np.flatnonzero(present)}
    assert filled == {"blue", "green", "red", "nir_narrow"} and not canvas[~present].any()
    assert band_subset(BAND_SETS["sentinel1_db"], ("VV", "VH")) is BAND_SETS["sentinel1_db"]
    with pytest.raises(BandMismatchError, match="no band"):
        band_subset(BAND_SETS["sentinel1_db"], ("B04",))


def test_unknown_band_set_lists_choices():
    with pytest.raises(UnknownBandError, match="sentinel1_db"):
        get_band_set("worldview3")


def test_band_table_is_json_and_complete():
    table = json.loads(json.dumps(bands.band_table()))
    assert [s["name"] for s in table["slots"]] == [s.name for s in CANVAS_SLOTS]
    assert set(table["band_sets"]) == set(BAND_SETS)
    assert table["band_sets"]["sentinel2_l2a_n0400"]["bands"][0]["offset"] == -0.1
