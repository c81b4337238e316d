"""eov-serve's app as Ray Serve replicas: one per GPU, or per node, of a ground station's cluster.

Each replica opens the artifacts itself and runs the same FastAPI app as ``eov-serve`` on one
machine (:func:`eov_edge.runtime.server.create_app`: its scheduler, batching and prefix cache), so
the API, the answers and the errors are the same; Ray Serve's proxy spreads the requests over the
replicas. What a replica holds is its own: the prefix cache, the queue bound (``--queue-depth``) and
``--per-key-limit`` count per replica, and ``/metrics`` answers for the replica that took the
request. Needs ``pip install 'eov-edge[cluster]'`` (Ray with Serve).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from eov_edge.core.errors import EOVError


def replicas_application(create_app: Callable, artifacts: str | os.PathLike, options, config, model_name: str,
                         replicas: int, gpus_per_replica: float = 0.0, api_keys: Sequence[str] = (),
                         max_body_bytes: int = 64 << 20, per_key_limit: int = 0):
    """A Ray Serve application of ``replicas`` copies of the service over ``artifacts``, each asking
    Ray for ``gpus_per_replica`` GPUs. ``create_app``: :func:`eov_edge.runtime.server.create_app`
    (passed in: the server imports this module); ``options``: a
    :class:`~eov_edge.runtime.options.RuntimeOptions`; ``config``: a
    :class:`~eov_edge.runtime.service.ServiceConfig`."""
    try:
        from ray import serve
    except ImportError as err:
        raise EOVError(f"Ray Serve is not importable ({err}); pip install 'eov-edge[cluster]'") from None
    if replicas < 1:
        raise EOVError(f"replicas must be >= 1, got {replicas}")
    artifacts = str(Path(artifacts).resolve())

    def build_app():  # runs on each replica: the artifacts are opened there, not pickled from here
        return create_app(options.open(artifacts), config, model_name, tuple(api_keys), max_body_bytes,
                          per_key_limit)

    ingress = serve.ingress(build_app)()
    deployment = serve.deployment(ingress, name="eov-serve", num_replicas=replicas,
                                  ray_actor_options={"num_gpus": gpus_per_replica},
                                  max_ongoing_requests=config.queue_depth + config.max_batch)
    return deployment.bind()


def run_replicas(application, host: str, port: int, ray_address: str | None) -> None:
    """Start Ray (or join ``ray_address``), serve ``application`` on ``host:port`` and block until
    SIGTERM or Ctrl-C, then shut Ray Serve down (each replica drains its running requests)."""
    import signal
    import threading

    import ray
    from ray import serve

    ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, route_prefix="/", blocking=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
