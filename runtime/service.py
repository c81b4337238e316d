"""The runtime as a long-running service: requests in, batched answers out (no web framework here).

:mod:`eov_edge.runtime.server` puts an OpenAI-compatible HTTP face on it. This module holds what
any face needs: turning a chat request into views and a question (:func:`parse_chat_request`), and
the :class:`Scheduler`, one thread that owns the :class:`Pipeline` and answers queued requests.

Batching: over the fused CPU decoder (``eov-export onnx --decoder ort-cpu``) the batch is continuous
(:mod:`eov_edge.runtime.continuous`): between two decode steps the scheduler prefills the requests
that arrived into free rows, up to ``max_batch`` decoding at once, and an answer leaves its row as
soon as it ends; streamed and plain requests, greedy and sampled ones, share the steps. Otherwise
(the portable decoder, TensorRT engines, a speculative or llama.cpp decoder, or
``batching="window"``) it takes the first waiting request, waits ``batch_wait_ms`` for more, and
answers up to ``max_batch`` of them together, to the longest answer. Requests about views it has seen (same content
hash) or that several requests share are answered through :meth:`Pipeline.answer_questions`: the
views' embeddings and the image block's keys and values come from the byte-bounded prefix cache,
across clients. Artifacts whose answers depend on what shares a call (dynamic INT8:
``Manifest.batch_invariant`` false) answer each request alone, so an answer never depends on who
else asked (in continuous batching: one row). In window batching, streamed requests are decoded
one at a time, token by token.
"""

from __future__ import annotations

import base64
import binascii
import os
import queue
import re
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eov_edge.core.errors import EOVError
from eov_edge.core.tasks import TASK_ALIASES, TASKS, TaskSpec, answer_token_budget, resolve_task
from eov_edge.runtime.continuous import Admission, ContinuousBatch, unsupported_reason
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.options import ReadOptions
from eov_edge.runtime.prefix_cache import content_key

DATA_URI = re.compile(r"^data:(?P<mime>image/(?:png|jpeg|jpg|tiff|tif));base64,(?P<data>.*)$", re.S)
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/tiff": ".tif", "image/tif": ".tif"}


class RequestError(EOVError, ValueError):
    """A request the service cannot answer as sent (HTTP 400); the message says what to change."""


class Overloaded(EOVError, RuntimeError):
    """The request queue is full (HTTP 503 with Retry-After)."""


class RateLimited(EOVError, RuntimeError):
    """An API key already has its share of requests in the service (HTTP 429 with Retry-After)."""


class ShuttingDown(EOVError, RuntimeError):
    """The service is draining its running requests and takes no new ones (HTTP 503)."""


@dataclass(frozen=True)
class ServiceConfig:
    max_batch: int = 8  # requests answered together
    queue_depth: int = 64  # requests waiting beyond the running batch; more get Overloaded
    batch_wait_ms: float = 5.0  # after the first request, how long to wait for more to batch with it
    allow_root: Path | None = None  # image paths are read only under this folder
    max_image_bytes: int = 32 << 20  # one image's decoded bytes
    max_image_pixels: int = 8192 * 8192  # one image's pixels (height x width of its largest band)
    # "continuous": requests join the running decode batch at the next step, where the decoder
    # allows it (else "window"); "window": batches formed from arrivals within batch_wait_ms
    batching: str = "continuous"

    def __post_init__(self) -> None:
        if self.batching not in ("continuous", "window"):
            raise ValueError(f"batching is 'continuous' or 'window', got {self.batching!r}")


@dataclass
class ChatRequest:
    """One answerable question: views read onto the canvas, a task and/or a prompt, how to decode."""

    views: list
    task: TaskSpec | None
    prompt: str | None
    generation: GenerationConfig
    stream: bool = False
    sample: Any = None  # the Sample built from views, task and prompt (once, when parsed)
    views_key: str = ""  # content hash of the views (prefix cache)
    prompt_tokens: int = 0
    on_text: Callable[[str], None] | None = None  # streamed text pieces, from the scheduler's thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    received: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


# -- parsing ---------------------------------------------------------------------------------------
def _image_sources(url: str, config: ServiceConfig, tmp: Path) -> str | list[str]:
    """What an ``image_url`` names, as read_view takes it: a data URI written to ``tmp``, or paths
    under ``allow_root`` as eov-run takes an IMAGE (a raster, a folder of band files, band files
    joined with commas), every file checked to lie under the root."""
    match = DATA_URI.match(url)
    if match:
        try:
            data = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("an image_url data URI is not valid base64") from None
        if len(data) > config.max_image_bytes:
            raise RequestError(f"an image is {len(data) >> 20} MiB; the service takes up to "
                               f"{config.max_image_bytes >> 20} MiB per image (tile large scenes)")
        path = tmp / f"image{len(list(tmp.iterdir()))}{SUFFIXES[match['mime']]}"
        path.write_bytes(data)
        return str(path)
    if url.startswith("data:"):
        raise RequestError("image_url data URIs must be PNG, JPEG or TIFF, base64 (data:image/png;base64,...)")
    if url.startswith(("http://", "https://")):
        raise RequestError("the service fetches no URLs: send the image as a data URI, or a path under its --allow-root")
    if config.allow_root is None:
        raise RequestError("image paths are off: start eov-serve with --allow-root DIR to read rasters from disk, "
                           "or send the image as a data URI")
    from eov_edge.core.raster import view_sources

    root = config.allow_root.resolve()
    pieces = [_under_root(piece.removeprefix("file://"), root) for piece in url.split(",") if piece]
    sources = view_sources(",".join(pieces)) if len(pieces) > 1 else view_sources(pieces[0])
    for file in [sources] if isinstance(sources, str) else sources:
        _under_root(file, root)  # a folder's band files too (a symlink in it may lead out)
    return sources


def _under_root(raw: str, root: Path) -> str:
    """``raw`` (relative to ``root``, or absolute inside it) resolved, refused unless it lies there."""
    if ".." in Path(raw).parts:
        raise RequestError(f"image path {raw!r}: '..' is not allowed; give a path under the allowed root")
    candidate = Path(raw) if Path(raw).is_absolute() else root / raw
    resolved = candidate.resolve()  # symlinks followed: one pointing out of the root is refused
    if resolved != root and root not in resolved.parents:
        raise RequestError(f"image path {raw!r} is outside the allowed root {root}")
    if not resolved.exists():
        raise RequestError(f"image path {raw!r}: no such file under {root}")
    return str(resolved)


def _message_parts(body: dict) -> tuple[str, list[str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' is a non-empty list of chat messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("no user message: ask a question in a message with role 'user'")
    content = users[-1].get("content")  # the model answers one turn: the last question
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError("a message's 'content' is a string or a list of text and image_url parts")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise RequestError("an image_url part is {'type': 'image_url', 'image_url': {'url': ...}}")
            urls.append(url)
        else:
            raise RequestError(f"unknown content part type {kind!r}; use 'text' and 'image_url'")
    return " ".join(t.strip() for t in texts if t.strip()), urls


def parse_chat_request(body: dict, pipeline, config: ServiceConfig) -> ChatRequest:
    """An OpenAI chat-completions body as a :class:`ChatRequest` (views read now). The task comes from
    the extra field ``task``, or from a question that is only a task's name (``detect``); any other
    text is the question itself."""
    if not isinstance(body, dict):
        raise RequestError("the body is a JSON object")
    if body.get("n", 1) != 1:
        raise RequestError("n > 1 is not supported: one answer per request")
    text, urls = _message_parts(body)
    if not urls:
        raise RequestError("no image: add an image_url part (a PNG/JPEG/TIFF data URI, or a path under --allow-root)")
    task = body.get("task")
    if task is not None:
        task = resolve_task(str(task))
    elif text.strip().lower() in TASKS or text.strip().lower() in TASK_ALIASES:
        task, text = resolve_task(text.strip().lower()), ""
    prompt = text or None
    if task is None and prompt is None:
        raise RequestError("no question: add a text part, or the 'task' field (" + ", ".join(TASKS) + ")")
    temperature = body.get("temperature")
    temperature = 0.0 if temperature is None else float(temperature)
    if temperature < 0:
        raise RequestError("temperature must be >= 0 (0: greedy, as eov-run)")
    budget = answer_token_budget([task] if task else [])
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or budget
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("max_tokens must be a positive integer")
    seed = body.get("seed") or 0
    generation = GenerationConfig(max_new_tokens=int(max_tokens), do_sample=temperature > 0,
                                  temperature=temperature or 1.0, top_k=int(body.get("top_k") or 0), seed=int(seed))
    read = ReadOptions(band_set=body.get("band_set"), bands=body.get("bands"), nodata=body.get("nodata"))
    from dataclasses import replace

    with tempfile.TemporaryDirectory(prefix="eov-serve-") as tmp:
        views = []
        for index, url in enumerate(urls):
            sources = _image_sources(url, config, Path(tmp))
            _check_pixels(sources, config)
            view = read.read(pipeline, sources)
            if url.startswith("data:"):  # named by its place in the request, not the deleted temporary file
                view = replace(view, sources=(f"image_url[{index}]",))
            views.append(view)
    sample = pipeline.sample(views, task, prompt)
    batch = pipeline.batch([sample], 1)  # checks the prompt against the context (PromptError)
    room = pipeline.spec.max_context - batch["input_ids"].shape[1]
    if generation.max_new_tokens > room:
        raise RequestError(f"max_tokens {generation.max_new_tokens} does not fit: the prompt takes "
                           f"{batch['input_ids'].shape[1]} of the model's {pipeline.spec.max_context} positions; "
                           f"ask for at most {room}")
    return ChatRequest(views, task, prompt, generation, stream=bool(body.get("stream")), sample=sample,
                       views_key=content_key(batch["pixel_values"], batch["modality_ids"]),
                       prompt_tokens=int(batch["attention_mask"].sum()))


def _check_pixels(sources: str | list[str], config: ServiceConfig) -> None:
    from eov_edge.core.raster import raster_grid

    grid = raster_grid([sources] if isinstance(sources, str) else list(sources))
    if grid.height * grid.width > config.max_image_pixels:
        raise RequestError(f"an image of {grid.width}x{grid.height} pixels is over the service's limit of "
                           f"{config.max_image_pixels} pixels; tile the scene (eov-run --tile) or downsample it")


# -- scheduling ------------------------------------------------------------------------------------
@dataclass
class Metrics:
    """Counters for /metrics (Prometheus text)."""

    requests: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "cancelled": 0, "overloaded": 0,
                                                              "rate_limited": 0})
    batches: int = 0
    batch_requests: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    tokens: int = 0
    generate_seconds: float = 0.0
    first_token_seconds: float = 0.0
    first_tokens: int = 0
    prefix_hits: int = 0
    prefix_lookups: int = 0

    def count_batch(self, size: int) -> None:
        """One batch (window batching) or decode step (continuous batching) of ``size`` requests."""
        self.batches += 1
        self.batch_requests += size
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

    def prometheus(self, queue_depth: int, running: int) -> str:
        lines = [
            "# TYPE eov_queue_depth gauge", f"eov_queue_depth {queue_depth}",
            "# TYPE eov_running_requests gauge", f"eov_running_requests {running}",
            "# TYPE eov_requests_total counter",
            *[f'eov_requests_total{{outcome="{k}"}} {v}' for k, v in self.requests.items()],
            "# TYPE eov_batch_size histogram",
        ]
        for edge in (1, 2, 4, 8, 16, 32, 64):
            seen = sum(n for size, n in self.batch_sizes.items() if size <= edge)
            lines.append(f'eov_batch_size_bucket{{le="{edge}"}} {seen}')
        lines += [f'eov_batch_size_bucket{{le="+Inf"}} {self.batches}', f"eov_batch_size_sum {self.batch_requests}",
                  f"eov_batch_size_count {self.batches}",
                  "# TYPE eov_generated_tokens_total counter", f"eov_generated_tokens_total {self.tokens}",
                  "# TYPE eov_tokens_per_second gauge",
                  f"eov_tokens_per_second {self.tokens / self.generate_seconds if self.generate_seconds else 0.0:.3f}",
                  "# TYPE eov_time_to_first_token_seconds summary",
                  f"eov_time_to_first_token_seconds_sum {self.first_token_seconds:.6f}",
                  f"eov_time_to_first_token_seconds_count {self.first_tokens}",
                  "# TYPE eov_prefix_cache_hits_total counter", f"eov_prefix_cache_hits_total {self.prefix_hits}",
                  "# TYPE eov_prefix_cache_lookups_total counter", f"eov_prefix_cache_lookups_total {self.prefix_lookups}"]
        return "\n".join(lines) + "\n"


class Scheduler:
    """One thread that owns the pipeline and answers queued :class:`ChatRequest` s in batches."""

    def __init__(self, pipeline, config: ServiceConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        self.metrics = Metrics()
        self._queue: queue.Queue[ChatRequest | None] = queue.Queue(maxsize=config.queue_depth)
        self._accepting = True
        self.running = 0
        self.continuous: ContinuousBatch | None = None
        if config.batching == "continuous" and unsupported_reason(pipeline) is None:
            # artifacts whose answers depend on what shares a call (dynamic INT8) decode one at a time
            slots = config.max_batch if pipeline.manifest.batch_invariant else 1
            self.continuous = ContinuousBatch(pipeline, slots)
        loop = self._loop_continuous if self.continuous is not None else self._loop
        self._thread = threading.Thread(target=loop, name="eov-scheduler", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, request: ChatRequest) -> Future:
        if not self._accepting:
            raise ShuttingDown("the service is shutting down; send the request to another replica or retry later")
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            self.metrics.requests["overloaded"] += 1
            raise Overloaded(f"{self.config.queue_depth} requests are waiting; retry shortly") from None
        return request.future

    def drain(self, timeout: float = 300.0) -> None:
        """Take no new requests, finish those queued and running, then stop the thread."""
        self._accepting = False
        self._queue.put(None)
        self._thread.join(timeout)

    # the scheduler thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = self._gather(batch, self.config.max_batch, self.config.batch_wait_ms / 1000)
            self.running = len(batch)
            try:
                self._answer(batch)
            finally:
                self.running = 0
            if stop:
                while not self._queue.empty():  # requests queued before the drain began
                    item = self._queue.get_nowait()
                    if item is not None:
                        self._answer([item])
                return

    def _gather(self, into: list[ChatRequest], limit: int, wait_s: float) -> bool:
        """Move waiting requests into ``into`` until it holds ``limit`` or ``wait_s`` has passed (0:
        only those already queued). True when the drain's end marker came (nothing follows it)."""
        deadline = time.perf_counter() + wait_s
        while len(into) < limit:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            into.append(item)
        return False

    def _loop_continuous(self) -> None:
        batch = self.continuous
        stopping = False
        while True:
            arrived: list[ChatRequest] = []
            if not batch.running:
                if stopping:
                    return
                first = self._queue.get()  # idle: wait for work
                if first is None:
                    stopping = True
                    continue
                arrived.append(first)
                # requests arriving together are encoded together
                stopping = self._gather(arrived, batch.free, self.config.batch_wait_ms / 1000)
            if not stopping:  # between steps: whatever is waiting, up to the free rows
                stopping = self._gather(arrived, batch.free, 0.0)
            self._admit(arrived)
            for row in batch.rows:  # clients that went away free their rows before the step
                if row is not None and row.admission.owner.cancelled.is_set():
                    batch.release_owner(row.admission.owner)
                    self._cancelled(row.admission.owner)
            self.running = batch.running
            if batch.running:
                started = time.perf_counter()
                try:
                    events = batch.step()
                except Exception as err:  # noqa: BLE001 - the running requests fail, the service goes on
                    self._fail_running(err)
                    continue
                self.metrics.generate_seconds += time.perf_counter() - started
                self.metrics.count_batch(len(events))
                self._deliver(events)
            self.running = batch.running

    def _fail_running(self, err: Exception) -> None:
        """A decode step failed: every request in the batch gets the error and its row is freed."""
        batch = self.continuous
        for r, row in enumerate(batch.rows):
            if row is not None:
                batch.release(r)
                self.metrics.requests["error"] += 1
                row.admission.owner.future.set_exception(err)
        self.running = 0

    def _admit(self, arrived: list[ChatRequest]) -> None:
        live = self._live(arrived)
        if not live:
            return
        cache = self.pipeline.prefix_cache
        seen = set()
        for r in live:
            self.metrics.prefix_lookups += 1
            self.metrics.prefix_hits += r.views_key in seen or cache.holds(r.views_key)
            seen.add(r.views_key)
        started = time.perf_counter()
        events = self.continuous.admit([Admission(r.sample, r.task, r.generation, r.views_key, owner=r)
                                        for r in live])
        self.metrics.generate_seconds += time.perf_counter() - started
        self._deliver(events)

    def _deliver(self, events) -> None:
        """Each event to its request: the first token's time, streamed text, the answer, or the error."""
        for event in events:
            request: ChatRequest = event.owner
            if event.error is not None:
                self.metrics.requests["error"] += 1
                request.future.set_exception(event.error)
                continue
            row = event.row
            if len(row.ids) == 1:
                self.metrics.first_token_seconds += time.perf_counter() - request.received
                self.metrics.first_tokens += 1
            if request.stream:
                eos = self.pipeline.manifest.special_tokens["eos"]
                text = event.answer.text if event.answer is not None else self.pipeline.tokenizer.decode(
                    [t for t in row.ids if t != eos])
                if text.startswith(row.shown) and len(text) > len(row.shown):
                    request.on_text(text[len(row.shown):])
                    row.shown = text
            if event.answer is not None:
                self.metrics.tokens += len(event.answer.token_ids)
                self.metrics.requests["ok"] += 1
                request.future.set_result(event.answer)

    def _cancelled(self, request: ChatRequest) -> None:
        self.metrics.requests["cancelled"] += 1
        request.future.cancel()

    def _live(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        """``requests`` whose clients are still there; the others are cancelled and counted."""
        live = []
        for r in requests:  # one look at each: a client may leave while this runs
            if r.cancelled.is_set():
                self._cancelled(r)
            else:
                live.append(r)
        return live

    def _answer(self, batch: list[ChatRequest]) -> None:
        live = self._live(batch)
        self.metrics.count_batch(len(live))
        streamed = [r for r in live if r.stream]
        plain = [r for r in live if not r.stream]
        for request in streamed:
            self._run(lambda r=request: self._stream_one(r), [request])
        batch_invariant = self.pipeline.manifest.batch_invariant
        # requests decoded together need one token rule (greedy or the same sampling settings)
        groups: dict[tuple, list[ChatRequest]] = {}
        for r in plain:
            g = r.generation
            rule = (g.do_sample, g.temperature, g.top_k, g.seed) if batch_invariant else (id(r),)
            groups.setdefault(rule, []).append(r)
        for requests in groups.values():
            self._answer_group(requests)

    def _answer_group(self, requests: list[ChatRequest]) -> None:
        by_views: dict[str, list[ChatRequest]] = {}
        for r in requests:
            by_views.setdefault(r.views_key, []).append(r)
        for key, same in by_views.items():
            self.metrics.prefix_lookups += len(same)
            cached = self.pipeline.prefix_cache.get(key) is not None
            self.metrics.prefix_hits += len(same) if cached else len(same) - 1
        if len(by_views) == 1:
            # one image: encoded once (or taken from the cache), its image block prefilled once and
            # copied under each question (or its keys and values taken from the cache)
            self._run(lambda: self._questions(requests), requests)
        else:
            # several images: one batch; each image encoded once, or taken from the prefix cache
            self._run(lambda: self.pipeline.answer_samples(
                [r.sample for r in requests], requests[0].generation, tasks=[r.task for r in requests],
                view_keys=[r.views_key for r in requests], budgets=_budgets(requests)), requests)

    def _questions(self, requests: list[ChatRequest]):
        """Questions about one set of views: encoded views and image block from the prefix cache."""
        return self.pipeline.answer_questions(requests[0].views, [(r.task, r.prompt) for r in requests],
                                              requests[0].generation, budgets=_budgets(requests))

    def _run(self, work: Callable[[], Any], requests: list[ChatRequest]) -> None:
        started = time.perf_counter()
        try:
            answers = work()
        except Exception as err:  # every request of the call gets the error, the service goes on
            for r in requests:
                self.metrics.requests["error"] += 1
                r.future.set_exception(err)
            return
        elapsed = time.perf_counter() - started
        self.metrics.generate_seconds += elapsed
        for r, answer in zip(requests, answers):
            if answer is None:
                continue
            self.metrics.tokens += len(answer.token_ids)
            if not r.stream:
                self.metrics.first_token_seconds += time.perf_counter() - r.received
                self.metrics.first_tokens += 1
            self.metrics.requests["ok"] += 1
            r.future.set_result(answer)

    def _stream_one(self, request: ChatRequest):
        """One request decoded token by token; its text pieces go to ``request.on_text``."""
        pieces = self.pipeline.stream(request.views, request.task, request.prompt, request.generation,
                                      sample=request.sample)
        first = True
        try:
            while True:
                piece = next(pieces)
                if first:
                    self.metrics.first_token_seconds += time.perf_counter() - request.received
                    self.metrics.first_tokens += 1
                    first = False
                if request.cancelled.is_set():  # the client went away: stop at this step
                    pieces.close()
                    self.metrics.requests["cancelled"] += 1
                    return [None]
                request.on_text(piece)
        except StopIteration as finished:
            return [finished.value]


def _budgets(requests: list[ChatRequest]) -> list[int]:
    """Each request's own new-token limit: a batch decodes to the largest, each answer is cut at its own."""
    return [r.generation.max_new_tokens for r in requests]


class KeyLimits:
    """Requests in the service (queued or running) per API key, at most ``limit`` each (0: no limit):
    one client cannot fill the queue that every key shares."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the per-key limit must be >= 0, got {limit}")
        self.limit = limit
        self._held: dict[str | None, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str | None) -> None:
        with self._lock:
            held = self._held.get(key, 0)
            if self.limit and held >= self.limit:
                raise RateLimited(f"this API key has {held} requests in the service, its limit "
                                  f"(--per-key-limit {self.limit}); retry when one has been answered")
            self._held[key] = held + 1

    def release(self, key: str | None) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)


def env_api_keys() -> tuple[str, ...]:
    """Keys from ``$EOV_SERVE_API_KEY``: one, or several separated by commas (one per client)."""
    return tuple(key.strip() for key in os.environ.get("EOV_SERVE_API_KEY", "").split(",") if key.strip())
