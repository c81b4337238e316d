"""``eov-serve``: the runtime as an OpenAI-compatible HTTP service (FastAPI + uvicorn).

    eov-serve --artifacts artifacts/nano --port 8000 [--allow-root /data/scenes] [--api-key KEY]

Routes: ``POST /v1/chat/completions`` (images as ``image_url`` parts: PNG/JPEG/TIFF data URIs, or
paths under ``--allow-root``; ``stream``, ``max_tokens``, ``temperature``, ``seed``; our extra fields
``task``, ``band_set``, ``bands``, ``nodata``; the answer's shapes and GeoJSON in the response's
``eov`` field), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text). With an
API key (``--api-key`` or ``$EOV_SERVE_API_KEY``) every route but ``/health`` needs
``Authorization: Bearer KEY``. Errors are OpenAI-shaped: ``{"error": {"message": ..., "type": ...}}``.
The answering is :class:`eov_edge.runtime.service.Scheduler`'s; this module only translates.
"""


import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Sequence

import click

from eov_edge.core.errors import EOVError
from eov_edge.runtime.continuous import unsupported_reason
from eov_edge.runtime.options import RuntimeOptions, runtime_flags
from eov_edge.runtime.service import (
    KeyLimits,
    Overloaded,
    RateLimited,
    Scheduler,
    ServiceConfig,
    ShuttingDown,
    env_api_keys,
    parse_chat_request,
)

RETRY_AFTER_S = 1


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status, headers=headers)


def _error_response(err: EOVError):
    """The OpenAI-shaped response to an error of the runtime: the one place that gives each its status."""
    if isinstance(err, RateLimited):
        return _error(429, str(err), "rate_limit_error", {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(err, (Overloaded, ShuttingDown)):
        return _error(503, str(err), "overloaded_error", {"Retry-After": str(RETRY_AFTER_S)})
    return _error(400, str(err))  # bad input: the message says what to fix


def _answer_extra(answer, views, geojson_crs: str = "wgs84") -> dict:
    from eov_edge.runtime.geo import answers_geojson, shared_crs

    extra = {"task": answer.task, "detections": [d.to_dict() for d in answer.detections], "problems": answer.problems,
             "cut_at_token_budget": answer.cut_at_budget, "inputs": answer.inputs, "geojson": None}
    if shared_crs(views) is not None:  # georeferenced input: its shapes on the map (an empty collection where none)
        extra["geojson"] = answers_geojson([answer], views, {"task": answer.task}, geojson_crs)
    return extra


def create_app(pipeline, config: ServiceConfig, model_name: str, api_keys: Sequence[str] = (),
               max_body_bytes: int = 64 << 20, per_key_limit: int = 0):
    """The FastAPI application over ``pipeline`` (its scheduler starts now, drains at shutdown).
    ``api_keys``: every route but /health needs one of them; ``per_key_limit``: requests one key may
    have in the service at once (0: no limit), beyond it 429."""
    import hmac
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    if per_key_limit and not api_keys:
        raise ValueError("a per-key limit needs API keys (--api-key) to count requests by")
    scheduler = Scheduler(pipeline, config)
    limits = KeyLimits(per_key_limit)
    keys = [key.encode() for key in api_keys]
    started = int(time.time())

    def key_of(header: str) -> str | None:
        """The API key a request's Authorization header carries, if it is one of ``api_keys``
        (compared in constant time)."""
        given = header.removeprefix("Bearer ").encode() if header.startswith("Bearer ") else b""
        matches = [key for key in keys if hmac.compare_digest(key, given)]
        return matches[0].decode() if matches else None

    @asynccontextmanager
    async def lifespan(app):
        yield
        # SIGTERM: uvicorn stops accepting and waits for open requests; the queue is drained here
        await run_in_threadpool(scheduler.drain)

    app = FastAPI(title="eov-serve", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.add_exception_handler(EOVError, lambda request, err: _error_response(err))

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        request.state.api_key = None
        if keys and request.url.path != "/health":
            request.state.api_key = key_of(request.headers.get("authorization", ""))
            if request.state.api_key is None:
                return _error(401, "missing or wrong API key: send Authorization: Bearer <key>",
                              "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return _error(413, f"the request body is {int(length) >> 20} MiB; the service takes up to "
                               f"{max_body_bytes >> 20} MiB (--max-body-mb)")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queue_depth": scheduler.queue_depth}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "eov-edge"}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(scheduler.metrics.prometheus(scheduler.queue_depth, scheduler.running),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        if len(raw) > max_body_bytes:
            return _error(413, f"the request body is over {max_body_bytes >> 20} MiB (--max-body-mb)")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _error(400, f"the body is not JSON ({err})")
        if isinstance(body, dict) and body.get("model") not in (None, model_name):
            return _error(404, f"model {body.get('model')!r} is not served here; this service serves {model_name!r}",
                          "not_found_error")
        chat_request = await run_in_threadpool(parse_chat_request, body, pipeline, config)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        pieces: asyncio.Queue = asyncio.Queue()
        if chat_request.stream:
            loop = asyncio.get_running_loop()
            chat_request.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
        key = request.state.api_key  # None where the service has no keys (then the limit is 0)
        try:
            limits.acquire(key)
        except RateLimited:
            scheduler.metrics.requests["rate_limited"] += 1
            raise
        try:
            future = scheduler.submit(chat_request)
        except EOVError:  # the queue is full, or the service is draining
            limits.release(key)
            raise
        future.add_done_callback(lambda _: limits.release(key))
        if chat_request.stream:
            return StreamingResponse(_stream(chat_request, future, pieces, completion_id, created),
                                     media_type="text/event-stream")
        try:
            answer = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            chat_request.cancelled.set()
            raise
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": "length" if answer.cut_at_budget else "stop"}],
            "usage": {"prompt_tokens": chat_request.prompt_tokens, "completion_tokens": len(answer.token_ids),
                      "total_tokens": chat_request.prompt_tokens + len(answer.token_ids)},
            "eov": _answer_extra(answer, chat_request.views),
        })

    async def _stream(chat_request, future, pieces: asyncio.Queue, completion_id: str, created: int):
        def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if extra is not None:
                body["eov"] = extra
            return f"data: {json.dumps(body)}\n\n"

        done = asyncio.wrap_future(future)
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                getter = asyncio.ensure_future(pieces.get())
                finished, _ = await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if getter in finished:
                    yield chunk({"content": getter.result()})
                    continue
                getter.cancel()
                while not pieces.empty():
                    yield chunk({"content": pieces.get_nowait()})
                break
            try:
                answer = done.result()
            except EOVError as err:  # the stream has begun (status 200): the error is its last event
                yield f"data: {_error_response(err).body.decode()}\n\n"
                return
            yield chunk({}, "length" if answer.cut_at_budget else "stop", _answer_extra(answer, chat_request.views))
            yield "data: [DONE]\n\n"
        finally:
            if not future.done():
                chat_request.cancelled.set()  # the client went away: its slot is freed at the next step

    return app


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--artifacts", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="eov-export artifacts folder")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to listen on every interface")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--model-name", default=None, help="the model id clients send [default: the artifacts folder's name]")
@click.option("--max-batch", type=int, default=8, show_default=True, help="requests answered together")
@click.option("--queue-depth", type=int, default=64, show_default=True,
              help="requests waiting beyond the running batch; more are refused with 503 and Retry-After")
@click.option("--batch-wait-ms", type=float, default=5.0, show_default=True,
              help="after a request arrives at an idle service, how long to wait for others to batch with it")
@click.option("--batching", type=click.Choice(["continuous", "window"]), default="continuous", show_default=True,
              help="continuous: requests join the running batch at the next decode step and leave when they "
                   "end (the fused CPU decoder, eov-export onnx --decoder ort-cpu; other artifacts batch by "
                   "window); window: requests arriving within --batch-wait-ms are answered together")
@click.option("--allow-root", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="rasters on this machine may be named by path under this folder (default: data URIs only)")
@click.option("--api-key", "api_keys", multiple=True,
              help="require Authorization: Bearer KEY; repeat for one key per client "
                   "[default: $EOV_SERVE_API_KEY, keys separated by commas]")
@click.option("--per-key-limit", type=int, default=0, show_default=True,
              help="requests one API key may have queued or running at once; more get 429 with Retry-After "
                   "(0: no limit)")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True)
@click.option("--max-image-pixels", type=int, default=8192 * 8192, show_default=True)
@click.option("--replicas", type=int, default=0, show_default=True,
              help="run N replicas on Ray Serve (a multi-GPU or multi-node ground station; needs the [cluster] "
                   "extra); 0: this process alone")
@click.option("--gpus-per-replica", type=float, default=0.0, show_default=True,
              help="GPUs Ray gives each replica (1 for one replica per GPU)")
@click.option("--ray-address", default=None, help="join this Ray cluster (auto: the running one) [default: start Ray here]")
@runtime_flags
def main(artifacts, host, port, model_name, max_batch, queue_depth, batch_wait_ms, batching, allow_root, api_keys,
         per_key_limit, max_body_mb, max_image_pixels, replicas, gpus_per_replica, ray_address, **flags) -> None:
    """Serve an exported Earth-OneVision model over an OpenAI-compatible HTTP API."""
    try:
        import uvicorn
    except ImportError:
        raise click.ClickException("eov-serve needs FastAPI and uvicorn: pip install 'eov-edge[serve]'") from None
    if flags.get("draft"):
        raise click.UsageError("--draft speeds up eov-run's single-image greedy answers; the service batches "
                               "requests: serve the FP32 or quantized artifacts themselves")
    api_keys = api_keys or env_api_keys()
    if per_key_limit and not api_keys:
        raise click.UsageError("--per-key-limit counts requests by API key: give the keys (--api-key, "
                               "or $EOV_SERVE_API_KEY)")
    config = ServiceConfig(max_batch=max_batch, queue_depth=queue_depth, batch_wait_ms=batch_wait_ms,
                           allow_root=allow_root, max_image_pixels=max_image_pixels, batching=batching)
    options = RuntimeOptions.from_flags(flags)
    name = model_name or Path(artifacts).resolve().name
    try:  # the runtime's errors say what to do: shown as they are
        if replicas:
            from eov_edge.runtime.replicas import replicas_application

            application = replicas_application(create_app, artifacts, options, config, name, replicas,
                                               gpus_per_replica, api_keys, int(max_body_mb * (1 << 20)), per_key_limit)
        else:
            pipeline = options.open(artifacts)
    except EOVError as err:
        raise click.ClickException(str(err)) from None
    if replicas:
        from eov_edge.runtime.replicas import run_replicas

        click.echo(f"serving {name} on http://{host}:{port}/v1 from {replicas} Ray Serve replicas", err=True)
        run_replicas(application, host, port, ray_address)
        return
    app = create_app(pipeline, config, name, api_keys, int(max_body_mb * (1 << 20)), per_key_limit)
    scheduler = app.state.scheduler
    if scheduler.continuous is not None:
        how = f"continuous batching, {scheduler.continuous.slots} rows"
    else:
        how = "window batching: " + (unsupported_reason(pipeline) if batching == "continuous" else "--batching window")
    click.echo(f"serving {name} on http://{host}:{port}/v1; {how}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=300)
