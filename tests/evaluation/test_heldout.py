"""Held-out JSONL files: what a person writes by hand, read into examples, or refused line by line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eov_edge.core import slis
from eov_edge.core.errors import HeldOutError
from eov_edge.evaluation.heldout import load_heldout

SIZE = 224


def write_png(path: Path, height: int = 100, width: int = 200, seed: int = 0) -> Path:
    import rasterio

    data = np.random.default_rng(seed).integers(0, 255, (1, height, width), dtype=np.uint8)
    with rasterio.open(path, "w", driver="PNG", width=width, height=height, count=1, dtype="uint8") as ds:
        ds.write(data)
    return path


def write_geotiff(path: Path, size: int = 64) -> Path:
    """A 4-band uint16 Sentinel-2 stack in UTM 33N, 10 m pixels, origin (500000, 4600000)."""
    import rasterio

    data = np.random.default_rng(1).integers(200, 3000, (4, size, size), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=rasterio.Affine(10, 0, 500000, 0, -10, 4600000)) as ds:
        ds.write(data)
        for i, name in enumerate(("B02", "B03", "B04", "B08"), start=1):
            ds.set_band_description(i, name)
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "frames").mkdir()
    write_png(tmp_path / "frames" / "a.png")
    write_png(tmp_path / "frames" / "b.png", seed=1)
    write_geotiff(tmp_path / "s2.tif")
    return tmp_path


def test_records_of_three_tasks_become_examples_in_canvas_pixels(folder):
    file = write_jsonl(folder / "mine.jsonl", [
        {"task": "detection", "views": ["frames/a.png"], "band_set": "thermal8",
         "objects": [{"label": "car", "box": [100, 50, 150, 100]}, {"label": "person", "box": [0, 0, 20, 10]}]},
        {"task": "classification", "image": "s2.tif", "answer": "water"},
        {"task": "detect", "views": ["frames/b.png"], "band_set": "thermal8", "objects": [],
         "prompt": "Find every vehicle."},
        {"task": "grounding", "views": ["s2.tif"], "coords": "crs", "box": [500100, 4599600, 500200, 4599400]},
    ])
    held_out = load_heldout(file, SIZE)
    assert held_out.counts() == {"detection": 2, "classification": 1, "grounding": 1}
    assert held_out.provenance["sha256"] and held_out.name == str(file)
    first, second, third, fourth = held_out.examples
    # boxes scale from the 200x100 frame onto the 224x224 canvas; objects sorted as the model writes them
    assert [label for label, _ in first.target["objects"]] == ["person", "car"]
    assert [b for _, b in first.target["objects"]] == [pytest.approx((0.0, 0.0, 22.4, 22.4)),
                                                       pytest.approx((112.0, 112.0, 168.0, 224.0))]
    assert slis.parse(first.answer).ok and first.answer.startswith("person <box>")
    assert second.instruction == "What kind of scene is this?" and second.target == {"label": "water"}
    assert third.answer == "none" and third.instruction == "Find every vehicle."
    # map coordinates through the GeoTIFF's transform: x 500100..500200 -> cols 10..20, y 4599600..4599400 -> rows 40..60
    assert fourth.target["box"] == pytest.approx((10 * SIZE / 64, 40 * SIZE / 64, 20 * SIZE / 64, 60 * SIZE / 64))
    # views are read only when asked, at the size asked
    assert first.views == []
    [view] = first.read_views(SIZE)
    assert view.canvas.shape == (16, SIZE, SIZE) and view.modality == "infrared"
    [s2] = second.read_views(32)
    assert s2.canvas.shape == (16, 32, 32) and s2.modality == "multispectral"


def test_every_bad_line_is_refused_with_its_number_before_anything_runs(folder):
    file = write_jsonl(folder / "bad.jsonl", [
        {"task": "classification", "image": "s2.tif", "answer": "water"},
        {"task": "classification", "image": "missing.tif", "answer": "water"},
        {"task": "segmentation", "image": "s2.tif"},
        "{not json",
        {"task": "detection", "image": "frames/a.png", "band_set": "thermal8",
         "objects": [{"label": "car", "box": [150, 50, 260, 90]}]},
        {"task": "caption", "image": "s2.tif", "answer": "  "},
        {"task": "change", "views": ["frames/a.png"], "band_set": "thermal8", "changed": True},
        {"task": "classification", "image": "s2.tif", "anwser": "water"},
        {"task": "grounding", "image": "frames/a.png", "band_set": "thermal8", "coords": "crs", "box": [1, 2, 3, 4]},
        {"task": "temporal", "views": ["frames/a.png", "frames/b.png"], "band_set": "thermal8", "direction": "up"},
        {"task": "vqa", "image": "frames/a.png", "answer": 2},
    ])
    with pytest.raises(HeldOutError) as err:
        load_heldout(file, SIZE)
    text = str(err.value)
    assert "10 bad record(s), nothing was run" in text
    for expected in ("line 2: view 0: file", "missing.tif not found", "line 3: unknown task 'segmentation'",
                     "line 4: not JSON", "line 5: \"objects\"[0]: box [150, 50, 260, 90]", "outside the first view's 200x100",
                     "line 6: a caption record needs a non-empty \"answer\"", "line 7: a change record needs at least 2 views",
                     "line 8: unknown field(s) ['anwser']", "line 9: \"coords\": \"crs\" but the first view",
                     "line 10: \"direction\" is one of north",
                     "line 11: view 0: ", "could be any of: sar_amplitude8, thermal8"):
        assert expected in text, expected
    assert "line 1:" not in text


def test_a_folder_holds_its_heldout_file_and_a_task_filter_and_cap_apply(folder):
    write_jsonl(folder / "heldout.jsonl", [{"task": "vqa", "image": "frames/a.png", "band_set": "thermal8",
                                            "prompt": f"How many cars are there? ({i})", "answer": str(i)}
                                           for i in range(5)] + [
        {"task": "vqa", "image": "frames/a.png", "band_set": "thermal8", "prompt": "Any car?", "answer": "yes"}])
    held_out = load_heldout(folder, SIZE, per_task=3)
    assert [e.answer for e in held_out.examples] == ["0", "1", "2"]
    assert [e.target["kind"] for e in load_heldout(folder, SIZE).examples] == ["count"] * 5 + ["presence"]
    with pytest.raises(HeldOutError, match="no examples of the tasks"):
        load_heldout(folder, SIZE, tasks=("caption",))
    with pytest.raises(HeldOutError, match="no such held-out file"):
        load_heldout(folder / "nope.jsonl", SIZE)


def test_change_and_track_references_follow_the_answer_format(folder):
    file = write_jsonl(folder / "t.jsonl", [
        {"task": "change", "views": ["frames/a.png", "frames/b.png"], "band_set": "thermal8", "changed": True,
         "boxes": [{"label": "car", "box": [20, 10, 40, 30]}]},
        {"task": "change", "views": ["frames/a.png", "frames/b.png"], "band_set": "thermal8", "changed": False},
        {"task": "track", "views": ["frames/a.png", "frames/b.png"], "band_set": "thermal8",
         "track": [[0, 0, 10, 10], [10, 0, 20, 10]]},
        {"task": "track", "views": ["frames/a.png", "frames/b.png"], "band_set": "thermal8", "track": [[0, 0, 10, 10]]},
    ])
    with pytest.raises(HeldOutError, match=r"line 4: \"track\" is a list of boxes .* \(2 views\)"):
        load_heldout(file, SIZE)
    file.write_text("".join(file.read_text().splitlines(keepends=True)[:3]))
    changed, unchanged, track = load_heldout(file, SIZE).examples
    assert changed.answer.startswith("yes <t1>car <box>") and changed.target["changed"] is True
    assert unchanged.answer == "no" and unchanged.target == {"changed": False, "boxes": []}
    parsed = slis.parse(track.answer)
    assert parsed.ok and [o.view for o in parsed.objects] == [0, 1] and track.target["kind"] == "track"


def test_the_shipped_pack_covers_every_task_from_permissive_sources_only():
    from eov_edge.core.calib import load_calib_samples
    from eov_edge.core.paths import heldout_pack
    from eov_edge.core.tasks import TASKS

    pack = load_heldout(heldout_pack(), SIZE)
    assert pack.counts() == {task: 32 for task in TASKS}
    records = [json.loads(line) for line in heldout_pack().read_text().splitlines()]
    assert {r["licence"] for r in records} <= {"CC BY 4.0", "CDLA-Permissive-1.0", "CDLA-Permissive-2.0", "MIT"}
    # land cover is not one class: the val split's BigEarthNet patches alone would all be dense vegetation
    assert len({r["answer"] for r in records if r["task"] == "classification"}) >= 2
    # no example from the calibration samples' BigEarthNet patch (its band files are named after it)
    assert not any(r["source"].endswith("_36_85") for r in records)
    assert not any("hrsid" in r["source"].lower() or "major_tom" in r["source"] for r in records)
    folder = heldout_pack().parent
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 15 * 2**20
    calib_names = {Path(p).name for c in load_calib_samples() for files in c.views for p in files}
    assert not any(Path(e.source).name in calib_names for e in pack.examples)
    # every view reads onto the canvas (a few of each task: reading all 288 takes seconds, not more)
    for task in TASKS:
        example = next(e for e in pack.examples if e.task == task)
        views = example.read_views(SIZE)
        assert len(views) >= TASKS[task].min_views and all(np.isfinite(v.canvas).all() for v in views)


def test_a_view_that_does_not_read_as_its_band_set_is_refused_at_load(folder):
    """Every view is read once (a few pixels) while the file is checked: a 4-band stack declared as a
    12-band product is refused with its line, not half-way through a gate."""
    file = write_jsonl(folder / "bands.jsonl", [
        {"task": "classification", "views": [{"file": "s2.tif", "band_set": "sentinel2_l2a"}], "answer": "water"}])
    with pytest.raises(HeldOutError, match=r"line 1: view 0: .*has 4 band\(s\) but band set 'sentinel2_l2a' needs 12"):
        load_heldout(file, SIZE)
