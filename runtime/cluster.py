"""Scenes on Ray: one Pipeline per actor, loaded once; every scene's tiles spread over the actors.

    eov-run --artifacts A scenes/ --task detection --tile 512 --out results/ --ray           # this machine
    eov-run --artifacts A scenes/ --task detection --tile 512 --out results/ --ray auto      # the cluster of this node
    eov-run --artifacts A scenes/ --task detection --tile 512 --out results/ --ray=ray://head:10001

Ray is imported here only, and only when a run asks for it (``pip install 'eov-edge[cluster]'``):
``import eov_edge.runtime`` and a Jetson's install never need it.

Ray Core actors rather than Ray Data's ``map_batches``: a scene is written the moment its last tile
returns, a bad tile is a value (never a failed task that Ray would retry), and the driver keeps one
batch in flight per actor, so a slow node takes fewer tiles. A killed worker is restarted by Ray
(``max_restarts``) and its batch retried (``max_task_retries``); a worker that keeps dying loses
its batch's scene (recorded failed, retried by the next run), never the run.

Every node needs eov-edge with the ``cluster`` extra at the same Ray and Python versions as the
driver, and the artifacts folder and the scenes at the paths the driver gives (shared storage).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator

from eov_edge.core.errors import EOVError
from eov_edge.runtime.options import RuntimeOptions
from eov_edge.runtime.scene import TileOutcome
from eov_edge.runtime.scene_runs import InProcessTiles, SceneRunConfig, TileExecutor, TileJob

RAY_INSTALL = "pip install 'eov-edge[cluster]'"
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # results are detections and text; pixels never travel
MAX_RESTARTS = 3  # per actor; also the retries of the batch a dying actor held


def _ray():
    try:
        import ray
    except ImportError:
        raise EOVError(f"--ray needs Ray on this machine and every node: {RAY_INSTALL}") from None
    return ray


class TileWorker:
    """A Ray actor's state: one Pipeline, reused for every batch of tiles it is given."""

    def __init__(self, artifacts: str, pipeline_options: dict, config: SceneRunConfig) -> None:
        from eov_edge.runtime.pipeline import Pipeline

        self.load_error: str | None = None
        try:
            self.tiles = InProcessTiles(Pipeline.from_artifacts(artifacts, **pipeline_options), config)
        except EOVError as err:  # reported by the driver as this node's problem, not a traceback
            self.load_error = f"{type(err).__name__}: {err}"

    def ready(self) -> tuple[int, str, str | None]:
        import socket

        return os.getpid(), socket.gethostname(), self.load_error

    def answer(self, job: TileJob) -> list[TileOutcome]:
        [(_, outcomes)] = self.tiles.run([job])
        return outcomes


class RayTiles:
    """Tiles answered by a pool of :class:`TileWorker` actors (a :class:`TileExecutor`).

    ``address`` None starts Ray on this machine (stopped again by :meth:`close`); ``"auto"`` or an
    address joins a running cluster. ``workers`` defaults to what the cluster holds: its CPUs over
    ``cpus_per_worker``, or its GPUs where each worker needs one.
    """

    def __init__(self, artifacts: str | os.PathLike, pipeline_options: dict, config: SceneRunConfig,
                 address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0) -> None:
        ray = self._ray = _ray()
        self._started_ray = False
        if not ray.is_initialized():
            options = dict(include_dashboard=False, logging_level=logging.WARNING)
            if address is None:
                cores = os.cpu_count() or 1
                ray.init(num_cpus=max(cores, int((workers or 0) * cpus_per_worker)),
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
            else:
                ray.init(address=address, **options)
            self._started_ray = True
        try:
            self.actors = self._start(str(artifacts), pipeline_options, config, workers, cpus_per_worker,
                                      gpus_per_worker)
        except BaseException:
            self.close()
            raise

    def _start(self, artifacts, pipeline_options, config, workers, cpus, gpus) -> list:
        ray = self._ray
        resources = ray.cluster_resources()
        if gpus and resources.get("GPU", 0) < gpus:
            raise EOVError("each worker needs a GPU (--providers cuda or --backend tensorrt) and the Ray cluster "
                           "has none; run on GPU nodes or use --providers cpu")
        if workers is None:
            workers = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus)
        workers = max(1, workers)
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                            max_task_retries=MAX_RESTARTS)(TileWorker)
        actors = [remote.remote(artifacts, pipeline_options, config) for _ in range(workers)]
        self.nodes = ray.get([a.ready.remote() for a in actors])  # waits until every Pipeline is loaded
        for _, host, error in self.nodes:
            if error:
                raise EOVError(f"a Ray worker on {host} cannot load the artifacts: {error}")
        return actors

    def worker_pids(self) -> list[int]:
        return [pid for pid, _, _ in self._ray.get([a.ready.remote() for a in self.actors])]

    def run(self, jobs: Iterable[TileJob]) -> Iterator[tuple[TileJob, list[TileOutcome] | EOVError]]:
        ray = self._ray
        from ray.exceptions import RayActorError, RayTaskError

        jobs = iter(jobs)
        free = list(self.actors)
        in_flight: dict = {}  # ObjectRef -> (job, actor)
        more = True
        while True:
            while free and more:  # one batch per free actor: a slower worker simply takes fewer
                job = next(jobs, None)
                if job is None:
                    more = False
                    break
                actor = free.pop(0)
                in_flight[actor.answer.remote(job)] = (job, actor)
            if not in_flight:
                return
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            job, actor = in_flight.pop(ref)
            try:
                outcome: list[TileOutcome] | EOVError = ray.get(ref)
                free.append(actor)
            except RayActorError as err:  # restarted MAX_RESTARTS times and died again
                self.actors.remove(actor)
                outcome = EOVError(f"a Ray worker died {MAX_RESTARTS + 1} times on these tiles: {_first_line(err)}")
                if not self.actors:
                    yield job, outcome
                    raise EOVError("every Ray worker died; see `ray status` and the workers' logs "
                                   "(/tmp/ray/session_latest/logs)") from None
            except RayTaskError as err:  # an unexpected exception in the worker's code
                free.append(actor)
                outcome = EOVError(f"the Ray worker failed on these tiles: {_first_line(err)}")
            yield job, outcome

    def close(self) -> None:
        ray = self._ray
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def open_executor(artifacts: str | os.PathLike, config: SceneRunConfig, runtime: RuntimeOptions,
                  ray_address: str | None = None, workers: int | None = None) -> tuple[TileExecutor, str]:
    """Where a run's tiles are answered, and its name for progress lines: this process's pipeline
    opened from ``artifacts`` with ``runtime``, or Ray workers (``ray_address``:
    "local" starts Ray here, "auto" or an address joins a cluster; ``workers``: how many, default the
    cluster's CPU cores, or its GPUs for CUDA or TensorRT)."""
    from eov_edge.runtime.pipeline import runs_on_cpu

    if not ray_address:
        return InProcessTiles(runtime.open(artifacts), config), "this process"
    gpu = runtime.backend == "tensorrt" or not runs_on_cpu(list(runtime.providers))
    executor = RayTiles(artifacts, {**runtime.pipeline_kwargs(), "threads": runtime.threads or 1}, config,
                        address=None if ray_address == "local" else ray_address, workers=workers,
                        gpus_per_worker=1 if gpu else 0)
    return executor, f"{len(executor.actors)} Ray worker(s)"
