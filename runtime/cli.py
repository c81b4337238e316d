"""``eov-run``: onboard inference from rasters to answers and GeoJSON (numpy + ONNX Runtime only).

    eov-run --artifacts DIR scene.tif --task detection --geojson out.geojson
    eov-run --artifacts DIR t0.tif t1.tif --task change               # one multi-view sample
    eov-run --artifacts DIR big.tif --task detect --tile 512 --overlap 64 --geojson big.geojson
    eov-run --artifacts DIR --draft DIR-int8 scene.tif --task caption   # FP32 answers, int8 drafts
    eov-run --artifacts DIR scenes/ --task detect --tile 512 --out results/ [--ray [ADDRESS]]

Each IMAGE is one view: a raster file, a folder of one-file-per-band rasters (BigEarthNet,
Major-TOM) or band files joined with commas. Tasks needing several views (change, temporal,
cross_modal) or ``--multiview`` put all images in one prompt; otherwise each image is asked
separately, in one batch. With ``--out DIR`` the images are scenes (files, folders, globs, lists of
paths), answered into a resumable output folder, in this process or on Ray
(:mod:`eov_edge.runtime.scene_runs`, :mod:`eov_edge.runtime.cluster`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from eov_edge.core.errors import EOVError
from eov_edge.core.raster import view_sources
from eov_edge.core.tasks import TASK_ALIASES, TASKS, TaskSpec, answer_token_budget, resolve_task
from eov_edge.runtime.jobs import ImageJob, answer_images, read_images, results_report, stream_answer, write_geojson
from eov_edge.runtime.options import (
    ReadOptions,
    RuntimeOptions,
    generation_flags,
    generation_from_flags,
    read_flags,
    runtime_flags,
)
from eov_edge.runtime.scene_runs import SceneRunConfig


def _print_answer(label: str, answer) -> None:
    click.echo(f"{label}: {answer.text}")
    for d in answer.detections:
        box = ", ".join(f"{v:.1f}" for v in d.pixel_box)
        where = ""
        if d.map_points:
            xs, ys = zip(*d.map_points)
            where = f"  map ({min(xs):.2f}, {min(ys):.2f}, {max(xs):.2f}, {max(ys):.2f})"
        click.echo(f"  {d.label or d.kind} score {d.score:.3f}  pixels ({box}){where}")
    for problem in answer.problems:
        click.echo(f"  (malformed output: {problem})")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True)
@click.option("--artifacts", type=click.Path(path_type=Path), required=True, help="eov-export artifacts folder")
@click.option("--task", default=None, help=f"one of {', '.join(TASKS)} (also {', '.join(TASK_ALIASES)}); "
              "several, comma-separated, are asked together about one sample (views encoded once)")
@click.option("--prompt", default=None, help="your own question instead of the task's default one")
@read_flags
@click.option("--multiview", is_flag=True, help="all images are views of one sample (time series, optical+SAR)")
@click.option("--tile", type=int, default=None, help="tile each image as a large scene, N x N source pixels")
@click.option("--overlap", type=int, default=64, show_default=True, help="tile overlap in source pixels")
@click.option("--batch-size", type=int, default=4, show_default=True, help="tiles or images per batch")
@generation_flags
@click.option("--geojson", type=click.Path(path_type=Path), default=None, help="write detections as GeoJSON")
@click.option("--geojson-crs", type=click.Choice(["wgs84", "native"]), default="wgs84", show_default=True,
              help="wgs84: RFC 7946 longitude/latitude; native: the raster's CRS with a crs member (GIS work)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON on stdout")
@click.option("--stream", is_flag=True, help="print tokens as they are generated (one image)")
@click.option("--progress/--no-progress", default=True, help="progress bar for scenes")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="answer IMAGES as scenes (files, folders, globs, .txt lists of paths) into this folder: one "
                   "DIR/<scene>.geojson or .json each and DIR/index.json; a rerun skips what is done")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="with --out: spread tiles over Ray workers; alone, Ray on this machine; 'auto' or an address "
                   "joins a running cluster (write --ray=ADDRESS, or put --ray after the scenes)")
@click.option("--workers", type=int, default=None,
              help="Ray workers (default: the cluster's CPU cores, or its GPUs for --providers cuda / tensorrt)")
@runtime_flags
def main(images, artifacts, task, prompt, multiview, tile, overlap, batch_size, geojson, geojson_crs, as_json, stream,
         progress, out, ray_address, workers, **flags) -> None:
    """Answer a question about IMAGES with an exported Earth-OneVision model."""
    # eov-run owns its process, so all sessions may share one spinning thread pool (faster)
    runtime = RuntimeOptions.from_flags(flags, thread_pool="shared")
    read = ReadOptions.from_flags(flags)
    if len(images) > 1 and geojson and tile and not out:
        raise click.UsageError("--geojson takes one scene at a time")
    if (ray_address or workers) and not out:
        raise click.UsageError("--ray and --workers answer scenes into a folder: give --out DIR")
    if ray_address and Path(ray_address).exists():
        raise click.UsageError(f"--ray took {ray_address!r} as the cluster's address: put --ray after the "
                               "scenes, or write --ray=ADDRESS")
    started = time.perf_counter()
    try:
        if task is None and prompt is None:
            task = "detection" if tile else "caption"
        tasks = tuple(dict.fromkeys(resolve_task(t) for t in task.split(","))) if task else ()  # resolved once here
        if len(tasks) > 1 and tile and not out:
            raise click.UsageError("several tasks over a tiled scene write one output each: give --out DIR")
        generation = generation_from_flags(flags, answer_token_budget(tasks))
        if out:
            config = SceneRunConfig(tasks or resolve_task("detection"), prompt, tile, overlap, batch_size,
                                    read.band_set, read.nodata, generation, geojson_crs, bands=read.bands)
            report = _answer_folder(artifacts, images, config, out, runtime, ray_address, workers, as_json, progress)
            report["stats"] = {"wall_s": round(time.perf_counter() - started, 3)}
            if as_json:
                click.echo(json.dumps(report, indent=1))
            _folder_exit(report["summary"], out)
            return
        pipeline = runtime.open(artifacts)
        if pipeline.max_batch is not None and batch_size > pipeline.max_batch:
            click.echo(f"--batch-size {batch_size} capped to {pipeline.max_batch}: the engines were built with "
                       f"--max-batch {pipeline.max_batch}", err=True)
            batch_size = pipeline.max_batch
        if tile:
            # a prompt alone over tiles is read as detection (its shapes are merged across tiles)
            report = _answer_scenes(pipeline, images, tasks[0] if tasks else resolve_task("detection"), prompt, tile,
                                    overlap, batch_size, read, generation, geojson, geojson_crs, as_json, progress)
        else:
            job = ImageJob(tuple(images), tasks, prompt, read, generation, multiview)
            report = _answer_images(pipeline, job, geojson, geojson_crs, as_json, stream)
        report["stats"] = {**pipeline.stats(), "wall_s": round(time.perf_counter() - started, 3)}
    except (EOVError, ValueError) as err:  # the library's errors say what to do: shown as they are
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        s = report["stats"]
        # calls of the decoder graph (prompts, steps) and decode steps on llama.cpp (--decoder-backend llamacpp)
        steps = sum(g["calls"] for name, g in s["graphs"].items() if name.startswith("decoder"))
        click.echo(f"[{s['wall_s']:.2f} s, encoder {s['graphs']['encoder']['calls']} call(s), decoder "
                   f"{steps} step(s), peak memory {s['peak_rss_mb']:.0f} MiB]", err=True)


def _answer_images(pipeline, job: ImageJob, geojson, geojson_crs: str, as_json: bool, stream: bool) -> dict:
    views = read_images(pipeline, job)
    if stream:
        for piece in stream_answer(pipeline, job, views):
            click.echo(piece, nl=False)
        click.echo()
        return {"streamed": True}
    results = answer_images(pipeline, job, views)
    if geojson:
        write_geojson(geojson, job, results, views, geojson_crs)
    if not as_json:
        for result in results:
            label = result.images if len(job.tasks) < 2 else f"{result.images} [{result.question}]"
            _print_answer(label, result.answer)
    return results_report(job, results)


def _answer_scenes(pipeline, images, task: TaskSpec, prompt, tile, overlap, batch_size, read: ReadOptions, generation, geojson,
                   geojson_crs: str, as_json: bool, progress: bool) -> dict:
    from eov_edge.core.paths import write_json_atomic
    from eov_edge.core.raster import raster_grid
    from eov_edge.runtime.scene import plan_tiles, run_scene

    results = []
    for image in images:
        paths = view_sources(image)
        grid = raster_grid(paths)
        total = len(plan_tiles(grid.height, grid.width, tile, overlap))
        show = progress and not as_json and sys.stderr.isatty()
        with click.progressbar(length=total, label=f"{image} ({total} tiles)", file=sys.stderr,
                               hidden=not show) as bar:
            result = run_scene(pipeline, paths, task, prompt, tile, overlap, batch_size, read.band_set,
                               read.nodata, generation, progress=bar.update, bands=read.bands)
        if geojson:
            write_json_atomic(geojson, result.geojson(geojson_crs))
        for error in result.errors:
            click.echo(f"tile {error.tile} at {error.window} skipped: {error.message}", err=True)
        if not as_json:
            s = result.summary()
            click.echo(f"{image}: {s['tiles_done']}/{s['tiles']} tiles, {s['tiles_failed']} skipped, "
                       f"{s['detections']} detection(s) ({s['detections_before_nms']} before NMS) in {s['seconds']:.1f} s")
            for a in result.tile_answers:
                click.echo(f"  tile {a['tile']}: {a['text']}")
        results.append(result.to_dict())
        if result.interrupted:
            raise click.ClickException(f"interrupted; finished tiles written to {geojson}" if geojson else "interrupted")
    return {"task": result.task.name, "scenes": results}


def _answer_folder(artifacts, images, config, out, runtime: RuntimeOptions, ray_address, workers, as_json,
                   progress) -> dict:
    """Scenes into ``out``: resumable, in this process or on Ray workers."""
    from eov_edge.core.manifest import sha256_file
    from eov_edge.runtime.cluster import open_executor
    from eov_edge.runtime.scene_list import expand_scenes
    from eov_edge.runtime.scene_runs import run_scenes

    scenes = expand_scenes(images)
    manifest = Path(artifacts) / "manifest.json"
    if not manifest.is_file():
        raise click.ClickException(f"{artifacts}: no manifest.json; give an eov-export artifacts folder")
    executor, where = open_executor(artifacts, config, runtime, ray_address, workers)
    show = progress and not as_json and sys.stderr.isatty()
    tiles_seen = [0]
    try:
        with click.progressbar(length=len(scenes), label=f"{len(scenes)} scene(s) on {where}", file=sys.stderr,
                               hidden=not show, show_pos=True,
                               item_show_func=lambda _: f"{tiles_seen[0]} tiles") as bar:
            def on_progress(scene: str, tiles: int, finished: bool) -> None:
                tiles_seen[0] += tiles
                bar.update(1 if finished else 0)

            summary = run_scenes(scenes, out, config, executor, sha256_file(manifest),
                                 run_info={"artifacts": str(Path(artifacts).resolve()), "runner": where},
                                 progress=on_progress)
    finally:
        executor.close()
    for failure in summary.failures:
        click.echo(f"failed: {failure}", err=True)
    click.echo(summary.line(), err=as_json)
    return {"task": config.task.name, "tasks": [t.name for t in config.tasks], "out": str(out),
            "summary": summary.to_dict()}


def _folder_exit(summary: dict, out) -> None:
    if summary["interrupted"]:
        raise click.ClickException(f"interrupted: finished scenes are in {out}; rerun the same command to do the rest")
    if summary["failed"]:
        raise click.ClickException(f"{summary['failed']} scene(s) failed (listed in {out}/index.json); "
                                   "a rerun retries them and skips the done ones")
