"""SLIS: exact round trips up to quantization, and a parser that never raises."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eov_edge.core import slis
from eov_edge.core.slis import (
    NUM_LOC_BINS,
    SpatialObject,
    dequantize,
    parse,
    quantize,
    serialize,
)

bins = st.integers(0, NUM_LOC_BINS - 1)
labels = st.none() | st.text(alphabet="abcdefghijklmnopqrstuvwxyz -", min_size=1, max_size=12).filter(
    lambda s: s.strip(" -") == s and s != ""
)
views = st.none() | st.integers(0, slis.MAX_VIEWS - 1)


@st.composite
def spatial_objects(draw):
    kind = draw(st.sampled_from(slis.SHAPE_KINDS))
    if kind == "box":
        x1, x2 = sorted(draw(st.tuples(bins, bins)))
        y1, y2 = sorted(draw(st.tuples(bins, bins)))
        coords = (x1, y1, x2, y2)
    elif kind == "quad":
        coords = tuple(draw(st.lists(bins, min_size=8, max_size=8)))
    elif kind == "pt":
        coords = tuple(draw(st.lists(bins, min_size=2, max_size=2)))
    else:
        n = draw(st.integers(3, 12))
        coords = tuple(draw(st.lists(bins, min_size=2 * n, max_size=2 * n)))
    return SpatialObject(kind, coords, draw(labels), draw(views))


@given(st.lists(spatial_objects(), max_size=6), st.sampled_from([", ", "; "]))
def test_serialize_parse_round_trip_is_exact(objects, separator):
    result = parse(serialize(objects, separator))
    assert result.problems == []
    assert result.objects == objects
    assert result.text == ""


@given(
    st.floats(0, 1, allow_nan=False),
    st.integers(1, 20000),
)
def test_pixel_round_trip_within_half_a_bin(fraction, extent):
    value = fraction * extent
    back = dequantize(quantize(value, extent), extent)
    assert abs(back - value) <= extent / (2 * NUM_LOC_BINS) + 1e-9 * extent


@given(st.lists(st.tuples(st.floats(0, 640), st.floats(0, 512)), min_size=2, max_size=2))
def test_box_from_pixels_sorts_corners_and_round_trips(corners):
    obj = SpatialObject.from_pixels("box", corners, 640, 512, label="car")
    x1, y1, x2, y2 = obj.box(640, 512)
    xs = sorted(c[0] for c in corners)
    ys = sorted(c[1] for c in corners)
    assert abs(x1 - xs[0]) <= 0.32 + 1e-9 and abs(x2 - xs[1]) <= 0.32 + 1e-9
    assert abs(y1 - ys[0]) <= 0.256 + 1e-9 and abs(y2 - ys[1]) <= 0.256 + 1e-9
    assert parse(obj.to_text()).objects == [obj]


FRAGMENTS = ["<box>", "</box>", "<quad>", "</quad>", "<poly>", "</poly>", "<pt>", "</pt>",
             "<loc_0>", "<loc_999>", "<loc_1000>", "<loc_12>", "<loc_", "<t0>", "<t3>", "<t99>",
             ">", "<", "car", ", ", ";", " ", "yes", "<loc_99999999999999999>", "<eos>"]


@settings(max_examples=400)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=40))
def test_parser_is_total_on_arbitrary_output(pieces):
    result = parse("".join(pieces))  # must not raise
    for obj in result.objects:
        assert obj.shape_problem() is None


@given(st.lists(spatial_objects(), min_size=1, max_size=4), st.data())
def test_dropping_any_token_is_reported_or_harmless(objects, data):
    text = serialize(objects)
    matches = list(slis._TOKEN_RE.finditer(text))
    match = matches[data.draw(st.integers(0, len(matches) - 1))]
    result = parse(text[: match.start()] + text[match.end():])
    # Either the parser noticed, or the object count dropped (a view tag removal is harmless).
    lost = len(result.objects) < len(objects)
    view_tag = match.group(4) is not None
    assert result.problems or lost or view_tag
    for obj in result.objects:
        assert obj.shape_problem() is None


@pytest.mark.parametrize(
    "text, n_objects, problem",
    [
        ("<box><loc_1><loc_2><loc_3></box>", 0, "needs 4 locations"),
        ("<box><loc_1><loc_2><loc_3><loc_4>", 0, "never closed"),
        ("<box><loc_1><loc_2><loc_3><loc_1000></box>", 0, "out of range"),
        ("<loc_5> car <box><loc_1><loc_2><loc_3><loc_4></box>", 1, "outside a shape"),
        ("<box><loc_9><loc_8><loc_3><loc_4></box>", 1, "corners swapped"),
        ("<box><loc_1><quad><loc_1></quad>", 0, "opened inside"),
        ("</pt>", 0, "without an opening tag"),
        ("<poly><loc_1><loc_2><loc_3><loc_4></poly>", 0, "even number >= 6"),
        ("<box><loc_1> car <loc_2><loc_3><loc_4></box>", 0, "inside <box>"),
        ("<quad><loc_1><loc_2></box>", 0, "closed by"),
    ],
)
def test_malformed_examples(text, n_objects, problem):
    """Each malformation gets its own message; well-formed shapes around it survive."""
    result = parse(text)
    assert len(result.objects) == n_objects
    assert any(problem in p for p in result.problems), result.problems


def test_labels_views_and_free_text():
    text = "yes <t1>car <box><loc_10><loc_20><loc_30><loc_40></box>, person <pt><loc_5><loc_6></pt>"
    result = parse(text)
    assert result.ok
    assert [(o.kind, o.label, o.view) for o in result.objects] == [("box", "car", 1), ("pt", "person", None)]
    assert result.text == "yes"
    assert parse("3").text == "3" and parse("3").objects == []


def test_pixel_points_use_bin_centres():
    obj = SpatialObject("pt", (0, 999))
    (x, y), = obj.points(1000, 2000)
    assert x == pytest.approx(0.5) and y == pytest.approx(1999.0)


def test_invalid_objects_refused_at_serialization():
    with pytest.raises(ValueError, match="needs 4"):
        serialize([SpatialObject("box", (1, 2, 3))])
    with pytest.raises(ValueError, match="may not contain"):
        serialize([SpatialObject("pt", (1, 2), label="<b>")])
    with pytest.raises(ValueError, match="finite"):
        quantize(math.nan, 10)


def test_label_with_angle_brackets_keeps_the_shape():
    result = parse("a<b car <pt><loc_1><loc_2></pt>")
    assert len(result.objects) == 1 and result.objects[0].label is None
    assert any("holds '<'" in p for p in result.problems)
