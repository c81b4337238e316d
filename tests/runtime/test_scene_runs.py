"""Scenes into an output folder in one process: the scene list, the index, resume, interruption."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from eov_edge.runtime import scene_runs
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.scene_list import expand_scenes
from eov_edge.runtime.scene_runs import InProcessTiles, SceneRunConfig, file_digests, run_scenes, scene_key

CONFIG = SceneRunConfig("detection", tile=128, overlap=0, batch_size=2,
                        generation=GenerationConfig(max_new_tokens=8))


def write_scene(path, seed: int, size: int = 256) -> str:
    """A georeferenced 3-band uint8 GeoTIFF (UTM 33N)."""
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(seed).integers(20, 200, (3, size, size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000 + 5000 * seed, 4000000, 10, 10)) as ds:
        ds.write(data)
    return str(path)


def make_scenes(folder, good: int = 3) -> list[str]:
    """``good`` scenes and one truncated GeoTIFF (its header cut off): the truncated one sorts first."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_scene(folder / f"scene{i}.tif", i) for i in range(good)]
    (folder / "a_truncated.tif").write_bytes(open(paths[0], "rb").read()[:300])
    return [str(folder / "a_truncated.tif"), *paths]


def statuses(out) -> dict[str, str]:
    return {e["scene"]: e["status"] for e in json.loads((out / "index.json").read_text())["scenes"]}


def test_scene_key_follows_content_and_settings_and_reuses_known_hashes(tmp_path, monkeypatch):
    path = write_scene(tmp_path / "s.tif", 0)
    digests = file_digests([path])
    key = scene_key(digests, "artifacts-a", CONFIG)
    assert scene_key(digests, "artifacts-b", CONFIG) != key
    assert scene_key(digests, "artifacts-a", SceneRunConfig("detection", tile=256, overlap=0)) != key
    batch_only = SceneRunConfig("detection", tile=128, overlap=0, batch_size=8, generation=GenerationConfig(8))
    assert scene_key(digests, "artifacts-a", batch_only) == key  # batched answers are exact

    hashed = []
    monkeypatch.setattr(scene_runs, "sha256_file", lambda p: hashed.append(p) or "x")
    assert file_digests([path], digests) == digests and hashed == []  # unchanged size and mtime: reused
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF  # same size, new content
    open(path, "wb").write(bytes(data))
    os.utime(path, ns=(digests[0]["mtime_ns"] + 10**9,) * 2)
    assert file_digests([path], digests)[0]["sha256"] == "x" and hashed == [path]


@pytest.mark.slow
def test_folder_run_records_every_scene_and_resumes(pipeline, tmp_path):
    scenes = expand_scenes(make_scenes(tmp_path / "scenes"))
    out = tmp_path / "out"
    executor = InProcessTiles(pipeline, CONFIG)
    summary = run_scenes(scenes, out, CONFIG, executor, "artifacts-sha")
    assert (summary.done, summary.failed, summary.skipped, summary.tiles) == (3, 1, 0, 12)
    assert statuses(out) == {"a_truncated": "failed", "scene0": "done", "scene1": "done", "scene2": "done"}
    index = {e["scene"]: e for e in json.loads((out / "index.json").read_text())["scenes"]}
    error = index["a_truncated"]["error"]
    assert error.startswith("RasterReadError:") and "\n" not in error and "truncated" in error
    for name in ("scene0", "scene1", "scene2"):
        collection = json.loads((out / f"{name}.geojson").read_text())
        assert collection["properties"]["tiles"] == 4 and index[name]["features"] == len(collection["features"])
        assert index[name]["tiles_failed"] == 0 and index[name]["seconds"] > 0
    assert sorted(os.listdir(out)) == ["index.json", "scene0.geojson", "scene1.geojson", "scene2.geojson"]
    written = {name: (out / f"{name}.geojson").read_bytes() for name in ("scene0", "scene1", "scene2")}

    # Rerun: the done scenes are skipped (their outputs untouched), the failed one is tried again.
    summary = run_scenes(scenes, out, CONFIG, executor, "artifacts-sha")
    assert (summary.done, summary.failed, summary.skipped, summary.tiles) == (0, 1, 3, 0)
    assert all((out / f"{n}.geojson").read_bytes() == b for n, b in written.items())
    (tmp_path / "scenes" / "a_truncated.tif").unlink()
    write_scene(tmp_path / "scenes" / "a_truncated.tif", 7)  # the file arrives whole
    summary = run_scenes(scenes, out, CONFIG, executor, "artifacts-sha")
    assert (summary.done, summary.failed, summary.skipped) == (1, 0, 3)
    assert statuses(out)["a_truncated"] == "done"

    # Other settings (a caption per tile) are another run of every scene, written as .json.
    caption = SceneRunConfig("caption", tile=128, overlap=0, generation=GenerationConfig(max_new_tokens=4))
    summary = run_scenes(scenes, tmp_path / "captions", caption, InProcessTiles(pipeline, caption), "artifacts-sha")
    assert summary.done == 4
    answers = json.loads((tmp_path / "captions" / "scene1.json").read_text())["answers"]
    assert [a["tile"] for a in answers] == [0, 1, 2, 3] and all(a["text"] for a in answers)


@pytest.mark.slow
def test_interrupted_run_keeps_finished_scenes_and_resumes_to_the_same_outputs(pipeline, tmp_path):
    scenes = expand_scenes(make_scenes(tmp_path / "scenes"))[1:]  # the three good ones
    executor = InProcessTiles(pipeline, CONFIG)
    whole = tmp_path / "whole"
    run_scenes(scenes, whole, CONFIG, executor, "artifacts-sha")

    def stop_after_first_scene(scene, tiles, finished):
        if finished:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    summary = run_scenes(scenes, out, CONFIG, executor, "artifacts-sha", progress=stop_after_first_scene)
    assert summary.interrupted and (summary.done, summary.unfinished) == (1, 2)
    assert statuses(out) == {"scene0": "done", "scene1": "unfinished", "scene2": "unfinished"}
    assert not (out / "scene1.geojson").exists()
    summary = run_scenes(scenes, out, CONFIG, executor, "artifacts-sha")
    assert (summary.done, summary.skipped) == (2, 1)
    for name in ("scene0", "scene1", "scene2"):
        assert (out / f"{name}.geojson").read_bytes() == (whole / f"{name}.geojson").read_bytes()


def test_cli_folder_run_exits_nonzero_naming_the_failed_scene(nano_artifacts, tmp_path):
    from click.testing import CliRunner

    from eov_edge.runtime.cli import main as eov_run

    make_scenes(tmp_path / "scenes", good=1)
    args = ["--artifacts", str(nano_artifacts), str(tmp_path / "scenes"), "--task", "caption", "--max-new-tokens", "2",
            "--out", str(tmp_path / "out"), "--no-verify"]
    result = CliRunner().invoke(eov_run, args)
    assert result.exit_code == 1
    assert "2 scene(s): 1 done, 0 skipped, 1 failed" in result.output
    assert "failed: a_truncated: RasterReadError" in result.output and "Traceback" not in result.output
    assert (tmp_path / "out" / "scene0.json").is_file()
    result = CliRunner().invoke(eov_run, ["--artifacts", str(nano_artifacts), "x.tif", "--ray"])
    assert result.exit_code == 2 and "give --out DIR" in result.output


@pytest.mark.slow
def test_a_fault_on_one_scene_is_recorded_and_the_others_finish(pipeline, tmp_path, monkeypatch):
    scenes = expand_scenes(make_scenes(tmp_path / "scenes"))[1:]
    real = scene_runs.answer_tiles

    def faulty(pipe, paths, *args):
        if "scene1" in str(paths):
            raise RuntimeError("a bug, not bad input")
        return real(pipe, paths, *args)

    monkeypatch.setattr(scene_runs, "answer_tiles", faulty)
    summary = run_scenes(scenes, tmp_path / "out", CONFIG, InProcessTiles(pipeline, CONFIG), "sha")
    assert (summary.done, summary.failed) == (2, 1)
    assert summary.failures == ["scene1: unexpected RuntimeError: a bug, not bad input; please report it with the scene"]
    assert not (tmp_path / "out" / "scene1.geojson").exists()


@pytest.mark.slow
def test_several_tasks_read_and_encode_each_tile_once_and_answer_as_one_task_runs(pipeline, tmp_path):
    from eov_edge.core import manifest as mf

    scenes = expand_scenes(make_scenes(tmp_path / "scenes", good=2))[1:]
    generation = GenerationConfig(max_new_tokens=8)
    both = SceneRunConfig(("caption", "detection"), tile=128, overlap=0, generation=generation)
    encoder = pipeline.runners[mf.ENCODER].timings
    calls = len(encoder)
    summary = run_scenes(scenes, tmp_path / "both", both, InProcessTiles(pipeline, both), "sha")
    assert (summary.done, summary.tiles) == (2, 8)
    assert len(encoder) - calls == 8  # one encoder call per tile, not one per tile and task
    index = {e["scene"]: e for e in json.loads((tmp_path / "both" / "index.json").read_text())["scenes"]}
    assert index["scene0"]["outputs"] == ["scene0.caption.json", "scene0.detection.geojson"]
    for task, suffix in (("caption", "json"), ("detection", "geojson")):
        alone = SceneRunConfig(task, tile=128, overlap=0, generation=generation)
        run_scenes(scenes, tmp_path / task, alone, InProcessTiles(pipeline, alone), "sha")
        for name in ("scene0", "scene1"):
            assert (tmp_path / "both" / f"{name}.{task}.{suffix}").read_bytes() == \
                (tmp_path / task / f"{name}.{suffix}").read_bytes()
    summary = run_scenes(scenes, tmp_path / "both", both, InProcessTiles(pipeline, both), "sha")
    assert summary.skipped == 2  # done: every task's output in place
    (tmp_path / "both" / "scene1.caption.json").unlink()
    assert run_scenes(scenes, tmp_path / "both", both, InProcessTiles(pipeline, both), "sha").done == 1
    with pytest.raises(ValueError, match="one task"):
        SceneRunConfig(("caption", "detection"), prompt="Any ships?")
