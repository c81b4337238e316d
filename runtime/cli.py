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
from eov_edge.core.tasks import TASKS, answer_token_budget, resolve_task
from eov_edge.runtime.options import RuntimeOptions, runtime_flags


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
@click.option("--task", default=None, help=f"one of {', '.join(TASKS)} (also detect, classify, ground, count); "
              "several, comma-separated, are asked together about one sample (views encoded once)")
@click.option("--prompt", default=None, help="your own question instead of the task's default one")
@click.option("--band-set", default=None, help="sensor band set of the images, when it cannot be guessed")
@click.option("--bands", default=None,
              help="band names of multi-band files without band descriptions, in file order (B04,B03,B02,B08): "
                   "any subset of one sensor's bands")
@click.option("--nodata", type=float, default=None, help="extra nodata value")
@click.option("--multiview", is_flag=True, help="all images are views of one sample (time series, optical+SAR)")
@click.option("--tile", type=int, default=None, help="tile each image as a large scene, N x N source pixels")
@click.option("--overlap", type=int, default=64, show_default=True, help="tile overlap in source pixels")
@click.option("--batch-size", type=int, default=4, show_default=True, help="tiles or images per batch")
@click.option("--max-new-tokens", type=int, default=None, help="default: 96 for spatial tasks, 32 otherwise")
@click.option("--sample", "do_sample", is_flag=True, help="sample instead of greedy decoding")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
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
def main(images, artifacts, task, prompt, band_set, bands, nodata, multiview, tile, overlap, batch_size, max_new_tokens,
         do_sample, temperature, top_k, seed, geojson, geojson_crs, as_json, stream, progress, out, ray_address, workers,
         **flags) -> None:
    """Answer a question about IMAGES with an exported Earth-OneVision model."""
    # eov-run owns its process, so all sessions may share one spinning thread pool (faster)
    runtime = RuntimeOptions.from_flags(flags, thread_pool="shared")
    from eov_edge.runtime.generation import GenerationConfig

    try:
        if task is None and prompt is None:
            task = "detection" if tile else "caption"
        tasks = [resolve_task(t) for t in task.split(",")] if task else []
        if len(tasks) > 1 and tile and not out:
            raise click.UsageError("several tasks over a tiled scene write one output each: give --out DIR")
        if (ray_address or workers) and not out:
            raise click.UsageError("--ray and --workers answer scenes into a folder: give --out DIR")
        if ray_address and Path(ray_address).exists():
            raise click.UsageError(f"--ray took {ray_address!r} as the cluster's address: put --ray after the "
                                   "scenes, or write --ray=ADDRESS")
        task_name = tasks[0] if len(tasks) == 1 else None
        if max_new_tokens is None:
            max_new_tokens = answer_token_budget(tasks)
        generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                      top_k=top_k, seed=seed)
        started = time.perf_counter()
        if out:
            from eov_edge.runtime.scene_runs import SceneRunConfig

            config = SceneRunConfig(tuple(tasks) if len(tasks) > 1 else task_name or "detection", prompt, tile,
                                    overlap, batch_size, band_set, nodata, generation, geojson_crs, bands=bands)
            report = _run_folder(artifacts, images, config, out, runtime, ray_address, workers, as_json, progress)
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
            report = _run_scenes(pipeline, images, task_name or "detection", prompt, tile, overlap, batch_size,
                                 band_set, nodata, generation, geojson, as_json, progress, geojson_crs=geojson_crs,
                                 bands=bands)
        elif len(tasks) > 1:
            report = _run_questions(pipeline, images, tasks, prompt, band_set, nodata, generation, as_json, bands)
        else:
            report = _run_images(pipeline, images, task_name, prompt, band_set, nodata, multiview, generation,
                                 geojson, as_json, stream, geojson_crs=geojson_crs, bands=bands)
        report["stats"] = {**pipeline.stats(), "wall_s": round(time.perf_counter() - started, 3)}
    except (EOVError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        s = report["stats"]
        # calls of the decoder graph (prompts, steps) and decode steps on llama.cpp (--decoder-backend llamacpp)
        steps = sum(g["calls"] for name, g in s["graphs"].items() if name.startswith("decoder"))
        click.echo(f"[{s['wall_s']:.2f} s, encoder {s['graphs']['encoder']['calls']} call(s), decoder "
                   f"{steps} step(s), peak memory {s['peak_rss_mb']:.0f} MiB]", err=True)


def _run_folder(artifacts, images, config, out, runtime: RuntimeOptions, ray_address, workers, as_json,
                progress) -> dict:
    """Scenes into ``out``: resumable, in this process or on Ray workers."""
    from eov_edge.core.manifest import sha256_file
    from eov_edge.runtime.pipeline import runs_on_cpu
    from eov_edge.runtime.scene_list import expand_scenes
    from eov_edge.runtime.scene_runs import InProcessTiles, run_scenes

    scenes = expand_scenes(images)
    manifest = Path(artifacts) / "manifest.json"
    if not manifest.is_file():
        raise click.ClickException(f"{artifacts}: no manifest.json; give an eov-export artifacts folder")
    if ray_address:
        from eov_edge.runtime.cluster import RayTiles

        gpu = runtime.backend == "tensorrt" or not runs_on_cpu(list(runtime.providers))
        executor = RayTiles(artifacts, {**runtime.pipeline_kwargs(), "threads": runtime.threads or 1},
                            config, address=None if ray_address == "local" else ray_address, workers=workers,
                            gpus_per_worker=1 if gpu else 0)
        where = f"{len(executor.actors)} Ray worker(s)"
    else:
        executor = InProcessTiles(runtime.open(artifacts), config)
        where = "this process"
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
    return {"task": config.task.name, "out": str(out), "summary": summary.to_dict()}


def _folder_exit(summary: dict, out) -> None:
    if summary["interrupted"]:
        raise click.ClickException(f"interrupted: finished scenes are in {out}; rerun the same command to do the rest")
    if summary["failed"]:
        raise click.ClickException(f"{summary['failed']} scene(s) failed (listed in {out}/index.json); "
                                   "a rerun retries them and skips the done ones")


def _run_questions(pipeline, images, tasks, prompt, band_set, nodata, generation, as_json, bands=None) -> dict:
    """Several tasks (and ``--prompt``) about one sample: the views encoded once, answered together."""
    views = [pipeline.read(view_sources(image), band_set=band_set, nodata=nodata, bands=bands) for image in images]
    questions = [(t, None) for t in tasks] + ([(None, prompt)] if prompt else [])
    answers = pipeline.answer_questions(views, questions, generation)
    label = " + ".join(images)
    if not as_json:
        for (task, text), answer in zip(questions, answers):
            _print_answer(f"{label} [{task.name if task else text}]", answer)
    return {"tasks": [t.name for t in tasks],
            "results": [{"images": label, "question": task.name if task else text, **a.to_dict()}
                                        for (task, text), a in zip(questions, answers)]}


def _run_images(pipeline, images, task, prompt, band_set, nodata, multiview, generation, geojson, as_json,
                stream, geojson_crs: str = "wgs84", bands=None) -> dict:
    from eov_edge.runtime.geo import answers_geojson, write_json_atomic

    views = [pipeline.read(view_sources(image), band_set=band_set, nodata=nodata, bands=bands) for image in images]
    together = multiview or (task is not None and task.min_views > 1)
    if stream:
        if len(images) > 1 and not together:
            raise click.UsageError("--stream answers one sample: give one image or --multiview")
        for piece in pipeline.stream(views, task, prompt, generation):
            click.echo(piece, nl=False)
        click.echo()
        return {"streamed": True}
    if together:
        answers = pipeline.answer(views, task, prompt, generation)
        labels = [" + ".join(images)]
    else:
        answers = pipeline.answer_each(views, task, prompt, generation)
        labels = list(images)
    if geojson:
        write_json_atomic(geojson, answers_geojson(answers, views, {"task": task and task.name, "images": list(images)},
                                                   geojson_crs))
    if not as_json:
        for label, answer in zip(labels, answers):
            _print_answer(label, answer)
    return {"task": task and task.name, "results": [{"images": label, **a.to_dict()} for label, a in zip(labels, answers)]}


def _run_scenes(pipeline, images, task, prompt, tile, overlap, batch_size, band_set, nodata, generation, geojson,
                as_json, progress, geojson_crs: str = "wgs84", bands=None) -> dict:
    from eov_edge.core.raster import raster_grid
    from eov_edge.runtime.geo import write_json_atomic
    from eov_edge.runtime.scene import plan_tiles, run_scene

    if geojson and len(images) > 1:
        raise click.UsageError("--geojson takes one scene at a time")
    results = []
    for image in images:
        paths = view_sources(image)
        grid = raster_grid(paths)
        total = len(plan_tiles(grid.height, grid.width, tile, overlap))
        show = progress and not as_json and sys.stderr.isatty()
        with click.progressbar(length=total, label=f"{image} ({total} tiles)", file=sys.stderr,
                               hidden=not show) as bar:
            result = run_scene(pipeline, paths, task, prompt, tile, overlap, batch_size, band_set, nodata,
                               generation, progress=bar.update, bands=bands)
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
        results.append({"summary": result.summary(), "errors": [e.__dict__ for e in result.errors],
                        "detections": [d.to_dict() for d in result.detections], "tile_answers": result.tile_answers})
        if result.interrupted:
            raise click.ClickException(f"interrupted; finished tiles written to {geojson}" if geojson else "interrupted")
    return {"task": resolve_task(task).name, "scenes": results}
