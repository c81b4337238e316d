"""Large scenes: tile any size raster through windowed reads, batch the tiles, merge across tiles.

Memory is bounded by the batch, not the scene: tiles are planned from the raster's size alone, each
batch reads only its windows (GDAL resamples on read to the model's input size, with its block
cache capped), and only the detections are kept. A tile that cannot be read (all nodata, a corrupt
block) is reported and skipped; an interruption keeps every finished tile's results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from eov_edge.core.answer import Answer
from eov_edge.core.errors import EOVError
from eov_edge.core.raster import RasterGrid, View, Window, raster_grid
from eov_edge.core.tasks import TaskSpec, answer_token_budget, resolve_task
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.geo import (
    Detection,
    feature_collection,
    non_max_suppression,
    shape_geometry,
)
from eov_edge.runtime.pipeline import Pipeline, peak_rss_mb

GDAL_CACHE_MB = 64  # GDAL's default is 5% of RAM: a whole-scene pass would fill it


@dataclass(frozen=True)
class Tile:
    index: int
    window: Window  # pixels of the scene (finest band's grid)


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Row-major tiles of ``tile`` x ``tile`` pixels overlapping by ``overlap``; the last row and
    column are shifted inwards so every tile is full size (no stretched edge tiles). A scene
    smaller than a tile is one tile of the whole scene."""
    if tile < 1:
        raise ValueError(f"--tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"--overlap must be in [0, tile), got {overlap} for tile {tile}")
    stride = tile - overlap

    def starts(extent: int) -> list[int]:
        if extent <= tile:
            return [0]
        out = list(range(0, extent - tile, stride))
        return out + [extent - tile]

    tiles = []
    for row in starts(height):
        for col in starts(width):
            tiles.append(Tile(len(tiles), Window(col, row, min(tile, width), min(tile, height))))
    return tiles


@dataclass
class TileError:
    tile: int
    window: tuple[float, float, float, float]
    error: str
    message: str


@dataclass
class SceneResult:
    """What a scene run found, and how it went."""

    source: str
    task: TaskSpec
    grid: RasterGrid
    tiles: int
    detections: list[Detection] = field(default_factory=list)  # after NMS
    tile_answers: list[dict] = field(default_factory=list)  # non-spatial tasks: one answer per tile
    errors: list[TileError] = field(default_factory=list)
    tiles_done: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    raw_detections: int = 0  # before NMS

    def geojson(self, output_crs: str = "wgs84") -> dict:
        properties = {
            "source": self.source, "task": self.task.name, "tiles": self.tiles, "tiles_done": self.tiles_done,
            "tiles_failed": [e.__dict__ for e in self.errors], "partial": self.interrupted,
            "detections_before_nms": self.raw_detections,
        }
        footprints = [_tile_feature(a, self.grid) for a in self.tile_answers]
        return feature_collection(self.detections, self.grid.crs, properties, footprints, output_crs)

    def merge(self, outcomes: Sequence[TileOutcome], iou_threshold: float = 0.5) -> None:
        """Collect the tiles' answers in tile order (whatever order they finished in) and run NMS
        across tiles: the result does not depend on how the tiles were spread over workers."""
        raw: list[Detection] = []
        for outcome in sorted(outcomes, key=lambda o: o.tile.index):
            t, w = outcome.tile, outcome.tile.window
            if outcome.error is not None:
                self.errors.append(outcome.error)
            elif self.task.spatial:
                for det in outcome.answers[self.task.name].detections:
                    det.extra["tile"] = t.index
                    raw.append(det)
            else:
                self.tile_answers.append({"tile": t.index, "window": (w.col, w.row, w.width, w.height),
                                          "text": outcome.answers[self.task.name].text})
        self.raw_detections = len(raw)
        self.detections = non_max_suppression(raw, iou_threshold)

    def to_dict(self) -> dict:
        """What eov-run --json prints for the scene."""
        return {"summary": self.summary(), "errors": [e.__dict__ for e in self.errors],
                "detections": [d.to_dict() for d in self.detections], "tile_answers": self.tile_answers}

    def summary(self) -> dict:
        return {"source": self.source, "task": self.task.name, "tiles": self.tiles, "tiles_done": self.tiles_done,
                "tiles_failed": len(self.errors), "detections": len(self.detections),
                "detections_before_nms": self.raw_detections, "interrupted": self.interrupted,
                "seconds": round(self.seconds, 3), "peak_rss_mb": round(self.peak_rss_mb, 1)}


def _tile_feature(answer: dict, grid: RasterGrid) -> dict:
    col, row, width, height = answer["window"]
    corners = [(col, row), (col + width, row), (col + width, row + height), (col, row + height)]
    if grid.transform is not None:
        corners = [grid.pixel_to_map(x, y) for x, y in corners]
    return {"type": "Feature", "geometry": shape_geometry("quad", corners),
            "properties": {"tile": answer["tile"], "answer": answer["text"]}}


def _batches(items: Sequence[Tile], size: int) -> Iterator[list[Tile]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


@dataclass
class TileOutcome:
    """One tile's answers (by task), or why it has none (picklable: Ray workers send these back)."""

    tile: Tile
    answers: dict[str, Answer] = field(default_factory=dict)  # by task kind name
    error: TileError | None = None


def answer_tiles(
    pipeline: Pipeline,
    paths,
    tiles: Sequence[Tile],
    tasks: Sequence[TaskSpec],
    prompt: str | None,
    band_set: str | None,
    nodata: float | None,
    generation: GenerationConfig,
    bands: str | None = None,
) -> list[TileOutcome]:
    """Read ``tiles`` of the raster at ``paths`` and answer ``tasks`` about them as one batch; several
    tasks are asked together about each tile (its view encoded once, its image block prefilled once:
    :meth:`Pipeline.answer_questions`). A tile that cannot be read (all nodata, a corrupt block) is
    an outcome with its error, never an exception."""
    import rasterio

    outcomes: list[TileOutcome] = []
    views: list[tuple[TileOutcome, View]] = []
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * (1 << 20)):
        for t in tiles:
            outcome = TileOutcome(t)
            outcomes.append(outcome)
            try:
                views.append((outcome, pipeline.read(paths, band_set=band_set, window=t.window, nodata=nodata,
                                                     bands=bands)))
            except EOVError as err:
                w = t.window
                outcome.error = TileError(t.index, (w.col, w.row, w.width, w.height), type(err).__name__, str(err))
    if len(tasks) == 1:
        if views:
            answers = pipeline.answer_each([v for _, v in views], tasks[0], prompt, generation)
            for (outcome, _), answer in zip(views, answers):
                outcome.answers[tasks[0].name] = answer
    else:
        for outcome, view in views:
            answers = pipeline.answer_questions([view], [(t, None) for t in tasks], generation)
            outcome.answers = {t.name: answer for t, answer in zip(tasks, answers)}
    return outcomes


def scene_generation(tasks: Sequence[TaskSpec], generation: GenerationConfig | None) -> GenerationConfig:
    return generation or GenerationConfig(max_new_tokens=answer_token_budget(tasks))


def scene_source(paths) -> str:
    return str(paths if isinstance(paths, str) else list(paths)[0])


def run_scene(
    pipeline: Pipeline,
    paths,
    task: TaskSpec | str = "detection",
    prompt: str | None = None,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    band_set: str | None = None,
    nodata: float | None = None,
    generation: GenerationConfig | None = None,
    iou_threshold: float = 0.5,
    progress: Callable[[int], None] | None = None,
    bands: str | None = None,
) -> SceneResult:
    """Run ``task`` over every tile of the raster at ``paths`` (one file, or one file per band)."""
    task = resolve_task(task)  # a Python caller's name; a face hands the spec down
    generation = scene_generation([task], generation)
    grid = raster_grid(paths)
    tiles = plan_tiles(grid.height, grid.width, tile, overlap)
    result = SceneResult(scene_source(paths), task, grid, len(tiles))
    outcomes: list[TileOutcome] = []
    start = time.perf_counter()
    try:
        for group in _batches(tiles, batch_size):
            outcomes += answer_tiles(pipeline, paths, group, [task], prompt, band_set, nodata, generation, bands)
            result.tiles_done += len(group)
            if progress:
                progress(len(group))
    except KeyboardInterrupt:
        result.interrupted = True  # keep the finished tiles; the caller writes them
    result.merge(outcomes, iou_threshold)
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    return result
