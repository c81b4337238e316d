"""Many scenes into one output folder: a pass's downlink, resumable, in one process or on Ray.

    eov-run --artifacts A scenes/ --task detection --tile 512 --out results/
    eov-run --artifacts A list.txt 'pass-*/*.tif' --task caption --out results/ --ray

Each scene's answers go to ``DIR/<scene>.geojson`` (spatial tasks) or ``DIR/<scene>.json`` (with
several tasks, ``DIR/<scene>.<task>.geojson`` each: every tile read and encoded once), written
atomically, and ``DIR/index.json`` lists every scene with its status (done, skipped,
failed, unfinished), error line, feature count and seconds, rewritten atomically after each scene.

A scene's key hashes everything that decides its answers: the bytes of its files, the artifacts'
manifest (which holds every graph's hash), the task, prompt, tiling, reading and decoding settings.
A rerun skips a scene whose key is recorded done and whose output is in place, and runs everything
else: failed and unfinished scenes, changed files, changed settings. File hashes are reused while a
file's size and modification time are the ones recorded (as git and make do), so a rerun over a
thousand large scenes does not read them all again.

The tiles of every scene flow through one executor: :class:`InProcessTiles` (this process's
Pipeline) or :class:`eov_edge.runtime.cluster.RayTiles` (one Pipeline per Ray actor). A scene is
written when its last tile comes back, from its tiles in tile order, so the output does not depend
on which worker answered which tile. A bad scene is recorded and the run goes on; Ctrl-C leaves
every finished scene written and the rest marked unfinished.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from eov_edge.core.errors import EOVError, RasterReadError
from eov_edge.core.manifest import sha256_file
from eov_edge.core.paths import write_json_atomic
from eov_edge.core.raster import RasterGrid, Window, raster_grid
from eov_edge.core.tasks import TaskSpec, resolve_task
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.pipeline import Pipeline
from eov_edge.runtime.scene import (
    SceneResult,
    Tile,
    TileOutcome,
    _batches,
    answer_tiles,
    plan_tiles,
    scene_generation,
)
from eov_edge.runtime.scene_list import SceneSpec, view_paths

INDEX = "index.json"
INDEX_FORMAT = 1
COMPLETE = ("done", "skipped")


# -- what decides a scene's answers --------------------------------------------------------------
@dataclass(frozen=True)
class SceneRunConfig:
    """How every scene of a run is answered. ``tile`` None: each scene is one image. ``task``: one
    task, or several asked together about every tile (``tasks``; ``task`` is then the first)."""

    task: TaskSpec | str | tuple[TaskSpec | str, ...]
    prompt: str | None = None
    tile: int | None = None
    overlap: int = 64
    batch_size: int = 4
    band_set: str | None = None
    nodata: float | None = None
    generation: GenerationConfig | None = None
    geojson_crs: str = "wgs84"
    iou_threshold: float = 0.5
    bands: str | None = None  # band names of multi-band files without descriptions, in file order
    tasks: tuple[TaskSpec, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        given = (self.task,) if isinstance(self.task, (str, TaskSpec)) else tuple(self.task)
        tasks = tuple(dict.fromkeys(resolve_task(t) for t in given))  # a face hands specs; Python callers names
        if not tasks:
            raise ValueError("give a task")
        if len(tasks) > 1 and self.prompt:
            raise ValueError("--prompt asks one question of every tile: give it with one task")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "task", tasks[0])
        object.__setattr__(self, "generation", scene_generation(tasks, self.generation))
        if self.tile is not None:
            plan_tiles(self.tile, self.tile, self.tile, self.overlap)  # checks tile and overlap
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")

    def answer_settings(self) -> dict:
        """Everything that changes an answer; not the batch size (batched answers are exact)."""
        settings = asdict(self)
        settings.pop("batch_size")
        settings["task"], settings["tasks"] = self.task.name, tuple(t.name for t in self.tasks)
        return settings

    def plan(self, height: int, width: int) -> list[Tile]:
        if self.tile is None:
            return [Tile(0, Window(0, 0, width, height))]
        return plan_tiles(height, width, self.tile, self.overlap)


def file_digests(paths: Sequence[str], known: Sequence[dict] = ()) -> list[dict]:
    """sha256 of each file, reusing a known digest while size and modification time are unchanged."""
    by_path = {k.get("path"): k for k in known}
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            raise RasterReadError(f"{path}: {err.strerror or err}; check the path") from None
        record = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        old = by_path.get(path)
        if old and old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns and old.get("sha256"):
            record["sha256"] = old["sha256"]
        else:
            record["sha256"] = sha256_file(path)
        out.append(record)
    return out


def scene_key(digests: Sequence[dict], artifacts_sha256: str, config: SceneRunConfig) -> str:
    identity = {"files": [d["sha256"] for d in digests], "artifacts": artifacts_sha256,
                "settings": config.answer_settings()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


# -- the output folder ---------------------------------------------------------------------------
class RunIndex:
    """``DIR/index.json``: one entry per scene, rewritten atomically after every change."""

    def __init__(self, folder: str | os.PathLike, run: dict) -> None:
        self.folder = Path(folder)
        self.path = self.folder / INDEX
        self.run = run
        self.entries: dict[str, dict] = {}
        self.recorded: set[str] = set()  # scenes recorded by this run
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.entries = {e["scene"]: e for e in data["scenes"]}
            except (ValueError, KeyError, TypeError):
                raise EOVError(f"{self.path} is not an eov-run index; give another --out folder or remove it") from None
        self.folder.mkdir(parents=True, exist_ok=True)

    def complete(self, scene: SceneSpec, key: str) -> dict | None:
        """The recorded entry if the scene is done under this key and its output is in place."""
        entry = self.entries.get(scene.name)
        if entry and entry.get("status") in COMPLETE and entry.get("key") == key and entry.get("outputs") \
                and all((self.folder / output).is_file() for output in entry["outputs"]):
            return entry
        return None

    def record(self, entry: dict, save: bool = True) -> None:
        """Set a scene's entry; ``save=False`` leaves the rewrite to the next save (a rerun skipping a
        thousand done scenes writes the index once, not a thousand times)."""
        self.entries[entry["scene"]] = entry
        self.recorded.add(entry["scene"])
        if save:
            self.save()

    def save(self) -> None:
        write_json_atomic(self.path, {"format": INDEX_FORMAT, "run": self.run, "scenes": list(self.entries.values())})


# -- executors: where tiles are answered ---------------------------------------------------------
@dataclass(frozen=True)
class TileJob:
    """A batch of one scene's tiles."""

    scene: str  # SceneSpec.name
    paths: tuple[str, ...]
    tiles: tuple[Tile, ...]


class TileExecutor(Protocol):
    def run(self, jobs: Iterable[TileJob]) -> Iterator[tuple[TileJob, list[TileOutcome] | EOVError]]:
        """Answer every job; yield each with its outcomes (or the error that lost it) as it finishes."""
        ...

    def close(self) -> None:
        ...


class InProcessTiles:
    """Tiles answered one batch after another by this process's Pipeline."""

    def __init__(self, pipeline: Pipeline, config: SceneRunConfig) -> None:
        self.pipeline = pipeline
        self.config = config

    def run(self, jobs: Iterable[TileJob]) -> Iterator[tuple[TileJob, list[TileOutcome] | EOVError]]:
        c = self.config
        for job in jobs:
            try:
                outcomes = answer_tiles(self.pipeline, view_paths(job.paths), job.tiles, c.tasks, c.prompt,
                                        c.band_set, c.nodata, c.generation, c.bands)
            except Exception as err:  # not bad input (that is a tile's error): a fault, recorded on its scene
                outcomes = EOVError(f"unexpected {_line(err)}; please report it with the scene")
            yield job, outcomes

    def close(self) -> None:
        pass


# -- the run -------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    scenes: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    unfinished: int = 0
    tiles: int = 0
    detections: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)  # "scene: error line"

    @property
    def scenes_per_minute(self) -> float:
        ran = self.done + self.failed
        return 60.0 * ran / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.scenes} scene(s): {self.done} done, {self.skipped} skipped, {self.failed} failed"
                + (f", {self.unfinished} unfinished" if self.unfinished else "")
                + f"; {self.tiles} tile(s), {self.detections} detection(s); {self.seconds:.1f} s, "
                f"{self.scenes_per_minute:.1f} scenes/min")

    def to_dict(self) -> dict:
        return {**asdict(self), "scenes_per_minute": round(self.scenes_per_minute, 2)}


@dataclass
class _Pending:
    spec: SceneSpec
    key: str
    digests: list[dict]
    grid: RasterGrid
    tiles: int
    started: float
    tiles_done: int = 0
    outcomes: list[TileOutcome] = field(default_factory=list)
    lost: str | None = None  # a worker lost some of its tiles: the scene must run again


def run_scenes(
    scenes: Sequence[SceneSpec],
    out: str | os.PathLike,
    config: SceneRunConfig,
    executor: TileExecutor,
    artifacts_sha256: str,
    run_info: dict | None = None,
    progress: Callable[[str, int, bool], None] | None = None,
) -> RunSummary:
    """Answer every scene into ``out`` (see the module doc). ``progress(scene, tiles, finished)`` is
    called as tiles come back, and with ``finished`` when a scene is (skipped or failed to open: 0 tiles)."""
    index = RunIndex(out, {**(run_info or {}), "settings": config.answer_settings(),
                           "artifacts_sha256": artifacts_sha256})
    summary = RunSummary(scenes=len(scenes))
    pending: dict[str, _Pending] = {}
    start = time.perf_counter()

    def report(scene: str, tiles: int, finished: bool = True) -> None:
        if progress:
            progress(scene, tiles, finished)

    def jobs() -> Iterator[TileJob]:  # planned lazily: the first tiles run while later scenes hash
        for spec in scenes:
            begun = time.perf_counter()
            old = index.entries.get(spec.name, {})
            try:
                digests = file_digests(spec.paths, old.get("files", ()))
                key = scene_key(digests, artifacts_sha256, config)
                if done := index.complete(spec, key):
                    index.record({**done, "status": "skipped"}, save=False)
                    summary.skipped += 1
                    report(spec.name, 0)
                    continue
                grid = raster_grid(spec.view_paths)
                tiles = config.plan(grid.height, grid.width)
            except Exception as err:  # a bad scene (or a fault reading it): recorded, the others go on
                error = _line(err) if isinstance(err, EOVError) else f"unexpected {_line(err)}; please report it"
                _fail(spec, index, summary, error, seconds=time.perf_counter() - begun)
                report(spec.name, 0)
                continue
            pending[spec.name] = _Pending(spec, key, digests, grid, len(tiles), begun)
            for group in _batches(tiles, config.batch_size):
                yield TileJob(spec.name, spec.paths, tuple(group))

    try:
        for job, outcomes in executor.run(jobs()):
            scene = pending[job.scene]
            if isinstance(outcomes, EOVError):
                scene.lost = str(outcomes)
            else:
                scene.outcomes += outcomes
            scene.tiles_done += len(job.tiles)
            summary.tiles += len(job.tiles)
            finished = scene.tiles_done == scene.tiles
            if finished:
                scene = pending.pop(job.scene)
                try:
                    _finish(scene, index, config, summary)
                except Exception as err:  # writing its output failed: this scene fails, the others go on
                    _fail(scene.spec, index, summary, f"unexpected {_line(err)}; please report it with the scene",
                          key=scene.key, files=scene.digests)
            report(job.scene, len(job.tiles), finished)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:  # interrupted (or every worker lost): what did not finish is listed as unfinished
        ended = summary.done + summary.skipped + summary.failed
        for spec in scenes if ended < len(scenes) else ():
            scene = pending.get(spec.name)
            if scene is not None:
                index.record(_entry(spec, "unfinished", key=scene.key, files=scene.digests, tiles=scene.tiles,
                                    tiles_done=scene.tiles_done), save=False)
            elif spec.name not in index.recorded:  # the run never came to it
                index.record(_entry(spec, "unfinished"), save=False)
        summary.unfinished = len(scenes) - ended
        index.save()  # the skipped scenes' entries too
        summary.seconds = time.perf_counter() - start
    return summary


def _finish(scene: _Pending, index: RunIndex, config: SceneRunConfig, summary: RunSummary) -> None:
    seconds = time.perf_counter() - scene.started
    results: list[SceneResult] = []
    if scene.lost is None:
        for task in config.tasks:  # one result per task, from the same tiles
            result = SceneResult(scene.spec.paths[0], task, scene.grid, scene.tiles, tiles_done=scene.tiles_done,
                                 seconds=seconds)
            result.merge(scene.outcomes, config.iou_threshold)
            results.append(result)
        errors = results[0].errors
        if len(errors) == scene.tiles:  # not one tile could be read
            scene.lost = f"{errors[0].error}: {errors[0].message}"
    common = dict(key=scene.key, files=scene.digests, tiles=scene.tiles,
                  tiles_failed=len(results[0].errors) if results else 0, seconds=seconds)
    if scene.lost:
        _fail(scene.spec, index, summary, scene.lost, **common)
        return
    outputs = []
    for result in results:
        stem = scene.spec.name if len(results) == 1 else f"{scene.spec.name}.{result.task.name}"
        if result.task.spatial:
            outputs.append(f"{stem}.geojson")
            write_json_atomic(index.folder / outputs[-1], result.geojson(config.geojson_crs))
        else:
            outputs.append(f"{stem}.json")
            write_json_atomic(index.folder / outputs[-1], {
                "source": result.source, "task": result.task.name, "tiles": result.tiles,
                "tiles_failed": [e.__dict__ for e in result.errors], "answers": result.tile_answers})
    detections = sum(len(r.detections) for r in results)
    index.record(_entry(scene.spec, "done", output=outputs[0], outputs=outputs, features=detections,
                        answers=sum(len(r.tile_answers) for r in results), **common))
    summary.done += 1
    summary.detections += detections


def _fail(spec: SceneSpec, index: RunIndex, summary: RunSummary, error: str, **fields) -> None:
    index.record(_entry(spec, "failed", error=error, **fields))
    summary.failed += 1
    summary.failures.append(f"{spec.name}: {error}")


def _entry(spec: SceneSpec, status: str, error: str | None = None, seconds: float = 0.0, **fields) -> dict:
    return {"scene": spec.name, "paths": list(spec.paths), "status": status, "error": error,
            "seconds": round(seconds, 3), **fields}


def _line(err: BaseException) -> str:
    """The error's first line, named by its type."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
