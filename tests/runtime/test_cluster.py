"""Scenes on a local Ray with 2 workers: the same outputs as in one process, resume, a killed worker.

One Ray instance for the module; the xdist group keeps these tests on one pytest worker, so two
Ray instances never compete for the machine's 2 cores.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from eov_edge.core.manifest import sha256_file
from eov_edge.runtime.scene_list import expand_scenes
from eov_edge.runtime.scene_runs import InProcessTiles, run_scenes
from tests.runtime.test_scene_runs import CONFIG, make_scenes, statuses, write_scene

ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra; make test installs it")
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
GOOD = ("scene0", "scene1", "scene2")


@pytest.fixture(scope="module")
def ray_tiles(nano_artifacts):
    from eov_edge.runtime.cluster import RayTiles

    tiles = RayTiles(nano_artifacts, {"threads": 1, "verify_hashes": False}, CONFIG, workers=2)
    yield tiles
    tiles.close()
    assert not ray.is_initialized()  # the Ray it started is stopped again


@pytest.fixture(scope="module")
def reference(pipeline, tmp_path_factory):
    """The four scenes answered in this process: what Ray must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("scenes")
    scenes = expand_scenes(make_scenes(root / "scenes"))
    run_scenes(scenes, root / "in_process", CONFIG, InProcessTiles(pipeline, CONFIG), "sha")
    return root, scenes


def test_cli_on_ray_then_resumed_without_it(nano_artifacts, tmp_path):
    """eov-run --ray starts Ray on this machine and stops it at the end; a rerun in one process
    resumes its folder. First in the module: the module's Ray is not started yet."""
    from click.testing import CliRunner

    from eov_edge.runtime.cli import main as eov_run

    make_scenes(tmp_path / "scenes", good=2)
    args = ["--artifacts", str(nano_artifacts), str(tmp_path / "scenes"), "--task", "detection", "--tile", "128",
            "--overlap", "0", "--batch-size", "2", "--max-new-tokens", "8", "--threads", "1", "--out",
            str(tmp_path / "out"), "--no-verify"]
    result = CliRunner().invoke(eov_run, [*args, "--workers", "2", "--ray"])
    assert result.exit_code == 1, result.output  # the truncated scene
    assert "3 scene(s): 2 done, 0 skipped, 1 failed; 8 tile(s)" in result.output
    assert not ray.is_initialized()  # the Ray it started is stopped
    (tmp_path / "scenes" / "a_truncated.tif").unlink()
    write_scene(tmp_path / "scenes" / "a_truncated.tif", 5)
    result = CliRunner().invoke(eov_run, args)
    assert result.exit_code == 0, result.output
    assert "3 scene(s): 1 done, 2 skipped, 0 failed" in result.output
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["run"]["artifacts_sha256"] == sha256_file(nano_artifacts / "manifest.json")


def test_two_workers_match_one_process_and_a_rerun_retries_only_the_failed(ray_tiles, reference, nano_artifacts,
                                                                          tmp_path):
    root, scenes = reference
    assert len(ray_tiles.actors) == 2 and len({pid for pid, _, _ in ray_tiles.nodes}) == 2
    out = tmp_path / "ray"
    summary = run_scenes(scenes, out, CONFIG, ray_tiles, "sha")
    assert (summary.done, summary.failed, summary.tiles) == (3, 1, 12)
    failed = next(e for e in json.loads((out / "index.json").read_text())["scenes"] if e["status"] == "failed")
    assert failed["scene"] == "a_truncated" and failed["error"].startswith("RasterReadError:")
    assert "\n" not in failed["error"]
    for name in GOOD:
        assert (out / f"{name}.geojson").read_bytes() == (root / "in_process" / f"{name}.geojson").read_bytes()

    summary = run_scenes(scenes, out, CONFIG, ray_tiles, "sha")
    assert (summary.skipped, summary.failed, summary.tiles) == (3, 1, 0)  # the failed one was read again


def test_a_killed_worker_still_ends_with_every_good_scene_done(ray_tiles, reference, tmp_path):
    root, scenes = reference
    killed = []

    def kill_a_worker_once(scene, tiles, finished):
        if not killed:  # mid-run: the other worker holds a batch, more are queued
            pid = ray_tiles.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = run_scenes(scenes, tmp_path / "out", CONFIG, ray_tiles, "sha", progress=kill_a_worker_once)
    assert killed and killed[0] not in ray_tiles.worker_pids()  # Ray restarted it as a new process
    assert (summary.done, summary.failed, summary.unfinished) == (3, 1, 0)
    assert statuses(tmp_path / "out") == {"a_truncated": "failed", **{name: "done" for name in GOOD}}
    for name in GOOD:
        assert (tmp_path / "out" / f"{name}.geojson").read_bytes() == \
            (root / "in_process" / f"{name}.geojson").read_bytes()
