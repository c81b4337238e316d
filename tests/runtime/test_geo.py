"""SLIS answers to pixels, map coordinates and GeoJSON; scores; NMS (hand-computed cases)."""

import math

import numpy as np
import pytest

from eov_edge.core import slis
from eov_edge.core.raster import View, Window
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.runtime.geo import (
    Detection,
    crs_member,
    detections_from_answer,
    feature_collection,
    non_max_suppression,
    shape_scores,
    write_json_atomic,
)

UTM33 = 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32633"]]'


def tile_view(window=None, georeferenced=True):
    """A 100x100 canvas of a 1000x2000 (h x w) scene with 10 m pixels at (500000, 4000000)."""
    size = 100
    window = window or Window(0, 0, 2000, 1000)
    transform = None
    if georeferenced:  # canvas pixel -> map: the window's origin, pixel size scaled by window/canvas
        sx, sy = 10.0 * window.width / size, 10.0 * window.height / size
        transform = (sx, 0.0, 500000.0 + 10 * window.col, 0.0, -sy, 4000000.0 - 10 * window.row)
    return View(np.zeros((16, size, size), np.float32), np.ones((size, size), bool), np.ones(16, bool), "rgb8",
                "optical", ("scene.tif",), (1000, 2000), UTM33 if georeferenced else None, transform, window=window)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.from_file()


def encode_answer(tokenizer, text):
    return tokenizer.encode(text)


def test_box_goes_to_source_pixels_and_map_coordinates(tokenizer):
    view = tile_view(Window(1000, 500, 500, 500))  # a 500x500 tile at column 1000, row 500
    text = "car <box><loc_100><loc_200><loc_300><loc_400></box>"
    ids = encode_answer(tokenizer, text)
    [det] = detections_from_answer(slis.parse(text), ids, [0.5] * len(ids), [view], tokenizer)
    # bin b of a 100-px canvas -> canvas (b + .5) / 10 -> tile px * 5 -> scene px + offset
    assert det.label == "car" and det.kind == "box"
    x1, y1, x2, y2 = det.pixel_box
    assert (x1, y1, x2, y2) == pytest.approx((1000 + 100.5 * 0.5, 500 + 200.5 * 0.5, 1000 + 300.5 * 0.5,
                                              500 + 400.5 * 0.5))
    (mx1, my1), (mx2, my2) = det.map_points
    assert mx1 == pytest.approx(500000 + 10 * x1) and my1 == pytest.approx(4000000 - 10 * y1)
    assert mx2 == pytest.approx(500000 + 10 * x2) and my2 == pytest.approx(4000000 - 10 * y2)
    assert det.score == pytest.approx(0.5)


def test_multi_view_tags_place_shapes_on_their_view(tokenizer):
    first, second = tile_view(), tile_view(Window(0, 0, 1000, 1000))
    text = "<t1><box><loc_0><loc_0><loc_999><loc_999></box>"
    ids = encode_answer(tokenizer, text)
    [det] = detections_from_answer(slis.parse(text), ids, [1.0] * len(ids), [first, second], tokenizer)
    assert det.view == 1
    # bin centres 0.05 and 99.95 of the 100-px canvas, times 1000/100 source pixels per canvas pixel
    assert det.pixel_box == pytest.approx((0.5, 0.5, 999.5, 999.5))


def test_score_is_geometric_mean_of_the_shape_tokens(tokenizer):
    text = "car <box><loc_1><loc_2><loc_3><loc_4></box>, bus <box><loc_5><loc_6><loc_7><loc_8></box>"
    ids = encode_answer(tokenizer, text)
    probs = [0.9] * len(ids)
    first_open = ids.index(tokenizer.token_to_id("<box>"))
    probs[first_open + 1] = 0.1  # one unsure coordinate in the first box
    spans = shape_scores(ids, probs, tokenizer)
    assert [bins for bins, _ in spans] == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert spans[0][1] == pytest.approx(math.exp((5 * math.log(0.9) + math.log(0.1)) / 6))
    assert spans[1][1] == pytest.approx(0.9)


def test_malformed_output_never_raises(tokenizer):
    text = "car <box><loc_1><loc_2></box> <box><loc_3>"
    ids = encode_answer(tokenizer, text)
    parsed = slis.parse(text)
    assert detections_from_answer(parsed, ids, [1.0] * len(ids), [tile_view()], tokenizer) == []
    assert len(parsed.problems) == 2


def test_nms_per_class():
    def det(label, box, score):
        x1, y1, x2, y2 = box
        return Detection("box", label, score, [(x1, y1), (x2, y2)])

    kept = non_max_suppression([det("car", (0, 0, 10, 10), 0.6), det("car", (1, 0, 11, 10), 0.9),
                                det("person", (1, 0, 11, 10), 0.3), det("car", (50, 50, 60, 60), 0.2)])
    assert [(d.label, d.score) for d in kept] == [("car", 0.9), ("person", 0.3), ("car", 0.2)]


def test_geojson_is_rfc_7946_by_default(tokenizer):
    """WGS 84 longitude/latitude through the raster's CRS, counterclockwise exterior rings, 7 decimals,
    no crs member; the same box in the native CRS maps to the same place."""
    from rasterio.warp import transform

    view = tile_view()  # EPSG:32633 (UTM 33N), a 500000 E / 4000000 N origin
    text = "car <box><loc_0><loc_0><loc_499><loc_499></box>, <pt><loc_10><loc_20></pt>"
    ids = encode_answer(tokenizer, text)
    dets = detections_from_answer(slis.parse(text), ids, [0.8] * len(ids), [view], tokenizer)
    wgs84 = feature_collection(dets, view.crs)
    native = feature_collection(dets, view.crs, output_crs="native")
    assert "crs" not in wgs84 and wgs84["properties"]["coordinates"] == "wgs84"
    ring = wgs84["features"][0]["geometry"]["coordinates"][0]
    area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:]))
    assert area > 0 and ring[0] == ring[-1]  # counterclockwise, closed
    xs, ys = zip(*native["features"][0]["geometry"]["coordinates"][0])
    lons, lats = transform(view.crs, "EPSG:4326", list(xs), list(ys))
    assert sorted(map(tuple, ring)) == sorted((round(a, 7), round(b, 7)) for a, b in zip(lons, lats))
    assert all(14.9 < lon < 15.3 and 36.0 < lat < 36.2 for lon, lat in ring)  # UTM 33N near 15 E, 36.1 N
    lon, lat = wgs84["features"][1]["geometry"]["coordinates"]
    assert lon == round(lon, 7) and 14.9 < lon < 15.3
    with pytest.raises(ValueError, match="output_crs"):
        feature_collection(dets, view.crs, output_crs="epsg:3857")


def test_feature_collection_in_map_units_with_crs(tokenizer, tmp_path):
    view = tile_view()
    text = "car <box><loc_0><loc_0><loc_499><loc_499></box>, <pt><loc_10><loc_20></pt>"
    ids = encode_answer(tokenizer, text)
    dets = detections_from_answer(slis.parse(text), ids, [0.8] * len(ids), [view], tokenizer)
    collection = feature_collection(dets, view.crs, {"task": "detection"}, output_crs="native")
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert collection["properties"]["coordinates"] == "map"
    polygon, point = collection["features"]
    ring = polygon["geometry"]["coordinates"][0]
    assert polygon["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    assert all(500000 <= x <= 520000 and 3990000 <= y <= 4000000 for x, y in ring)
    assert point["geometry"]["type"] == "Point" and point["properties"]["class"] is None
    assert polygon["properties"]["score"] == pytest.approx(0.8)
    pixel = feature_collection(dets, None)
    assert "crs" not in pixel and pixel["properties"]["coordinates"] == "pixel"
    assert crs_member(None) is None
    out = tmp_path / "sub" / "d.geojson"
    write_json_atomic(out, collection)
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["d.geojson"]


def test_shapes_off_the_earth_get_a_null_geometry_not_a_traceback(shared_data):
    """A geostationary full disk (GOES): a shape in the space around the disk has no longitude/latitude.
    Its feature keeps a null geometry (RFC 7946 allows it) and says why; the others are placed."""
    import rasterio

    with rasterio.open(shared_data / "geotiff_samples" / "goes.tif") as ds:
        crs, affine = ds.crs.to_wkt(), ds.transform
    on_disk = [affine * (271 + dx, 271 + dy) for dx, dy in ((0, 0), (5, 0), (5, 5), (0, 5))]
    in_space = [affine * (2 + dx, 2 + dy) for dx, dy in ((0, 0), (5, 0), (5, 5), (0, 5))]
    dets = [Detection("quad", "cloud", 0.9, [(0, 0)] * 4, on_disk), Detection("quad", "cloud", 0.8, [(2, 2)] * 4, in_space)]
    disk, space = feature_collection(dets, crs)["features"]
    assert space["geometry"] is None and "outside the raster CRS's domain" in space["properties"]["geometry_error"]
    ring = disk["geometry"]["coordinates"][0]
    assert all(-76 < lon < -74 and -1 < lat < 1 for lon, lat in ring)  # the sub-satellite point, 75 W
    assert "geometry_error" not in disk["properties"]
