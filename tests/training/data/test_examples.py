"""Task examples over the real data: well-formed, deterministic, splits disjoint."""

import random

import numpy as np
import pytest

from eov_edge.core import slis
from eov_edge.core.tasks import DIRECTIONS, TASKS
from eov_edge.training.data.examples import (
    AUX_CHANNELS,
    LAND_COVER_CLASSES,
    ExampleFactory,
    land_cover_map,
)
from eov_edge.training.data.sources import Scene, load_hit_uav, load_hrsid


def test_land_cover_from_indices_by_hand():
    # bands in sentinel2_l2a order; set green, red, nir per pixel (DN = reflectance * 1e4)
    values = np.zeros((12, 1, 4), np.uint16)
    order = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    g, r, n = order.index("B03"), order.index("B04"), order.index("B08")
    pixels = [(800, 500, 300), (500, 300, 3000), (600, 800, 1500), (1500, 2000, 2200)]
    for x, (green, red, nir) in enumerate(pixels):
        values[g, 0, x], values[r, 0, x], values[n, 0, x] = green, red, nir
    classes = land_cover_map(Scene(values, "sentinel2_l2a", "synthetic"))
    # water (NDWI .45), dense veg (NDVI .82), sparse veg (NDVI .30), bare (NDVI .05)
    assert [LAND_COVER_CLASSES[c] for c in classes[0].tolist()] == [
        "water", "dense vegetation", "sparse vegetation", "bare or built-up"]


@pytest.fixture(scope="module")
def factories(shared_data):
    return {split: ExampleFactory(shared_data, split, 224, 16, hit_uav_limit=60) for split in ("train", "val")}


@pytest.mark.data
def test_every_task_yields_well_formed_examples(factories):
    rng = random.Random(0)
    for task in TASKS:
        for _ in range(6):
            example = factories["val"].sample(task, rng)
            assert example.task == task
            assert len(example.views) >= TASKS[task].min_views
            assert len(example.aux) == len(example.views)
            for view, aux in zip(example.views, example.aux):
                assert view.canvas.shape == (16, 224, 224) and np.isfinite(view.canvas).all()
                assert aux is None or aux.shape == (14, 14, AUX_CHANNELS)
            parsed = slis.parse(example.answer)
            assert parsed.ok, (task, example.answer, parsed.problems)
            for obj in parsed.objects:
                x1, y1, x2, y2 = obj.box(224, 224)
                assert 0 <= x1 <= x2 <= 224 and 0 <= y1 <= y2 <= 224
            if task == "temporal" and example.target["kind"] == "direction":
                assert example.answer in DIRECTIONS
            if task == "cross_modal":
                assert example.answer in ("A", "B")


@pytest.mark.data
def test_grounding_answer_is_the_largest_object(factories):
    rng = random.Random(3)
    example = factories["train"].sample("grounding", rng)
    (obj,) = slis.parse(example.answer).objects
    got = obj.box(224, 224)
    assert all(abs(a - b) <= 224 / 1000 for a, b in zip(got, example.target["box"]))


@pytest.mark.data
def test_examples_are_deterministic_given_the_seed(factories):
    a = factories["val"].sample("detection", random.Random(42))
    b = factories["val"].sample("detection", random.Random(42))
    assert a.answer == b.answer and np.array_equal(a.views[0].canvas, b.views[0].canvas)


@pytest.mark.data
def test_splits_never_share_images(shared_data):
    train = {s.meta["frame"] for s in load_hit_uav(shared_data, "train")}
    val = {s.meta["frame"] for s in load_hit_uav(shared_data, "val")}
    assert train and val and not train & val
    hrsid_train = {s.source for s in load_hrsid(shared_data, "train")}
    hrsid_val = {s.source for s in load_hrsid(shared_data, "val")}
    assert len(hrsid_train) == 28 and len(hrsid_val) == 8 and not hrsid_train & hrsid_val


@pytest.mark.data
def test_spatial_split_windows_stay_in_their_columns(factories):
    for split, factory in factories.items():
        rng = random.Random(1)
        for scene in factory.s2 + [s for pair in factory.pairs for s in pair]:
            if scene.columns is None:
                continue
            for _ in range(50):
                x0, _, crop = factory.window(rng, scene, (0.5, 1.0), 0.75)
                assert scene.columns[0] <= x0 and x0 + crop <= scene.columns[1], (split, scene.source)
    train_cols = {s.source: s.columns for s in factories["train"].s2 if s.columns}
    val_cols = {s.source: s.columns for s in factories["val"].s2 if s.columns}
    for source, (a0, a1) in train_cols.items():
        b0, b1 = val_cols[source]
        assert a1 <= b0  # no column in both splits
