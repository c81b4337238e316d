"""The onboard pipeline: views -> prompt -> encoder -> projector -> decoder -> text, shapes, places.

    pipe = Pipeline.from_artifacts("artifacts/nano")            # checks manifest, hashes, band table
    [answer] = pipe.answer([pipe.read("scene.tif")], task="detection")
    answer.text, answer.detections                             # SLIS shapes in pixels and map units

Preprocessing is the training code's own (:mod:`eov_edge.core.raster`, :mod:`eov_edge.core.inputs`), checked
against the band table stored in the manifest, so the device sees the canvas training saw.
Sessions are created lazily on first use (or by ``warmup()``).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Generator, Sequence

import numpy as np

from eov_edge.core import bands
from eov_edge.core import manifest as mf
from eov_edge.core.answer import Answer, answer_from_ids
from eov_edge.core.errors import PromptError, ViewMismatchError
from eov_edge.core.inputs import InputSpec, Sample, build_batch
from eov_edge.core.raster import View, Window, read_view
from eov_edge.core.tasks import TaskSpec, resolve_task
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.runtime.backends import make_runner
from eov_edge.runtime.generation import Decoder, GenerationConfig
from eov_edge.runtime.geo import detections_from_answer
from eov_edge.runtime.kv_stream import PrefixKV
from eov_edge.runtime.ort_runner import PROVIDER_ALIASES
from eov_edge.runtime.prefix_cache import DEFAULT_PREFIX_CACHE_MB, PrefixCache, content_key, prefix_kv_key
from eov_edge.runtime.prompt_kernel import PREFILL, time_prompt_kernels
from eov_edge.runtime.runner import Runner
from eov_edge.runtime.speculative import DEFAULT_DRAFT_TOKENS, SpeculativeDecoder

DRAFT = "draft decoder"  # the speculative draft's runner, beside the artifacts' graphs in Pipeline.runners
LLAMACPP_DECODER = "decoder (llama.cpp)"  # its decode steps in stats(), beside the graphs' runners
PREFILL_MIN_ONNXRUNTIME = (1, 32)  # mlas.qnbit.force_fp32; older versions ignore the key


TaskLike = TaskSpec | str | None  # a task kind, or a name a user typed (resolved by resolve_task)


def _task(task: TaskLike) -> TaskSpec | None:
    """The :class:`TaskSpec` of ``task``: faces resolve the user's name once and hand the spec
    down, so here a spec passes through; a Python caller may name the task."""
    return None if task is None else resolve_task(task)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux: VmHWM of /proc/self/status. Not getrusage's ru_maxrss, which survives fork + exec: a
    process started from a large parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


class Pipeline:
    """Encoder, projector and decoder runners of one artifacts folder, and the steps around them."""

    def __init__(self, directory: Path, manifest: mf.Manifest, runners: dict[str, Runner]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.runners = runners
        self.tokenizer = TextTokenizer.from_file(directory / manifest.tokenizer["file"])
        # (V, D): float32, or float16 in quantized artifacts (rows are gathered, then widened)
        self.embed_table = np.load(directory / manifest.embedding["file"])
        self.spec = InputSpec(manifest.image_size, manifest.image_tokens_per_view, manifest.max_context)
        self.patch_size = int(manifest.model_config.get("vision_config", {}).get("patch_size", 1))
        self.decoder = Decoder(runners[mf.DECODER], self.embed_table, manifest, prefill_runner=runners.get(PREFILL))
        self.timings: dict[str, float] = {"read": 0.0, "encode": 0.0, "generate": 0.0}
        # which session runs prompts where the runtime measured it (prompt_kernel), else None
        self.prompt_session: dict | None = None
        # most samples one decoder call takes (TensorRT: the engines' profiles), None: any; larger
        # batches run in pieces of this size
        self.max_batch: int | None = None
        self.llama = None  # the llama.cpp decode session (use_llamacpp)
        # most tokens per row the decoder takes on top of a cache (TensorRT: the decode profile's), None:
        # any; a shared prefix is used only where every question's own tokens fit
        self.max_suffix: int | None = None
        # encoded views and shared prompt prefixes' keys and values, by content (answer_questions)
        self.prefix_cache = PrefixCache(int(DEFAULT_PREFIX_CACHE_MB * (1 << 20)))

    @classmethod
    def from_artifacts(cls, directory: str | os.PathLike, backend: str = "onnxruntime",
                       providers: list[str] | None = None, threads: int | None = None,
                       thread_pool: str = "session", verify_hashes: bool = True, warmup: bool = False,
                       engines: str | os.PathLike | None = None, draft: str | os.PathLike | None = None,
                       draft_tokens: int = DEFAULT_DRAFT_TOKENS, prefill_session: bool | None = None,
                       prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB, decoder_backend: str = "onnxruntime",
                       gguf: str | None = None, prefill: str | None = None) -> "Pipeline":
        """Open an ``eov-export`` artifacts folder; checks files, hashes, format and band table.

        ``thread_pool="shared"`` is faster on few cores but binds every ONNX Runtime session of the
        process to one pool (:func:`eov_edge.runtime.ort_runner.ort_shared_thread_pool`); eov-run uses it.
        ``backend="tensorrt"`` runs the engines in ``engines`` (checked against these artifacts).
        ``draft``: quantized artifacts of the same checkpoint whose decoder proposes ``draft_tokens``
        tokens per FP32 decoder call (:mod:`eov_edge.runtime.speculative`; the same answers, fewer
        full-precision steps; batch-1 greedy decoding).
        ``prefill_session``: where the manifest asks for it (INT4 CPU artifacts), prompts run in a
        second ONNX Runtime session of the decoder with the kernel its config entries choose
        (``mf.PREFILL_SESSION_CONFIG``; ONNX Runtime >= 1.32, CPU), for the memory of a second copy
        of the decoder's weights. True: always so (the kernel the gate measured first). False: one
        session does all. None (default): so, unless the manifest lets the runtime take the faster
        of the two kernels for prompts (``Manifest.prompt_kernel_choice``: the gate accepted both),
        which it then measures here on the decoder's weight shapes, not on the decoder itself, so the
        second session is made only where it wins (:mod:`eov_edge.runtime.prompt_kernel`): which one is
        faster depends on the CPU (two measurements on the same kind of machine came out either way round).
        ``prefix_cache_mb``: bound of the cache of encoded views and shared prompt prefixes that
        :meth:`answer_questions` keeps for later questions about the same views (0: none).
        ``decoder_backend="llamacpp"`` (CPU hosts): single answers decode on llama.cpp from the
        artifacts' GGUF of type ``gguf`` (``eov-export gguf``; default: the only one, or f32), the prompt
        through ONNX Runtime and handed over (``prefill="onnxruntime"``: the faster first token, both
        engines' weights in memory) or through llama.cpp (``prefill="llamacpp"``: one copy); default:
        the first where the artifacts carry the fused CPU decoder (whose KV buffers are handed over);
        batches and shared-prefix questions stay on ONNX Runtime (:mod:`eov_edge.runtime.llamacpp_decoder`).
        """
        directory = Path(directory)
        if draft is not None and backend != "onnxruntime":
            raise PromptError("a draft decoder (speculative decoding) runs on ONNX Runtime; drop --draft or "
                              "use --backend onnxruntime")
        manifest = mf.load_manifest(directory, verify_hashes=verify_hashes)
        mf.check_compatible(manifest, directory)
        if decoder_backend == "llamacpp":
            # ONNX Runtime's shared pool spins between runs, on the cores llama.cpp's decode threads
            # need (2 threads, small: decode steps 1.2-1.9x slower after an ONNX Runtime prompt);
            # pools of its own that sleep cost little on the encoder's and prompts' large ops
            thread_pool = "session"
        if backend == "onnxruntime":
            options = {"providers": providers, "threads": threads, "thread_pool": thread_pool}
        else:  # tensorrt: engines built by eov-export engine for these artifacts
            options = {"engine_dir": engines, "manifest": manifest}
        runners = {name: make_runner(backend, name, directory / entry.file, entry, **options)
                   for name, entry in manifest.graphs.items()}
        prefill_config = manifest.prefill_session_config() if prefill_session is not False else {}
        prompt_kernels = None  # the two kernels' prompt times where the runtime chooses (prompt_kernel)
        if (prefill_config and backend == "onnxruntime" and runs_on_cpu(providers)
                and _onnxruntime_at_least(PREFILL_MIN_ONNXRUNTIME)):
            llama_prompts = decoder_backend == "llamacpp" and prefill == "llamacpp"  # no ONNX Runtime prompt
            if prefill_session is None and not llama_prompts and \
                    manifest.prompt_kernel_choice() == mf.PROMPT_KERNEL_FASTEST:
                # before the decoder's session is made: the probe's memory is freed for it to reuse
                prompt_kernels = time_prompt_kernels(manifest, prefill_config, threads)
            if prompt_kernels is None or prompt_kernels["chosen"] == PREFILL:
                entry = manifest.graphs[mf.DECODER]
                runners[PREFILL] = make_runner(backend, PREFILL, directory / entry.file, entry,
                                               config_entries=prefill_config, **options)
        pipeline = cls(directory, manifest, runners)
        pipeline.prompt_session = prompt_kernels
        pipeline.prefix_cache = PrefixCache(int(prefix_cache_mb * (1 << 20)))
        if backend == "tensorrt":
            from eov_edge.runtime.engine_meta import engine_max_batch, engine_max_suffix

            pipeline.max_batch = engine_max_batch(engines)
            pipeline.max_suffix = engine_max_suffix(engines)
        if decoder_backend == "llamacpp":
            if backend != "onnxruntime" or draft is not None:
                raise PromptError("--decoder-backend llamacpp runs with --backend onnxruntime and no --draft")
            pipeline.use_llamacpp(gguf, prefill, threads)
        elif decoder_backend != "onnxruntime":
            raise PromptError(f"unknown decoder backend {decoder_backend!r}; onnxruntime or llamacpp")
        if draft is not None:
            pipeline.use_draft(draft, draft_tokens, verify_hashes=verify_hashes, **options)
        if warmup:
            pipeline.warmup()
        return pipeline

    def use_llamacpp(self, gguf: str | None = None, prefill: str | None = None, threads: int | None = None) -> None:
        """Decode single answers on llama.cpp from this folder's GGUF of type ``gguf`` (see
        :meth:`from_artifacts`)."""
        from eov_edge.runtime.llamacpp_decoder import PREFILLS, LlamaCppDecodeSession, LlamaCppError

        m = self.manifest
        if not m.gguf:
            raise LlamaCppError(f"{self.directory} holds no GGUF decoder; write one with eov-export gguf --artifacts "
                                f"{self.directory}")
        if gguf is None:
            gguf = "f32" if "f32" in m.gguf or len(m.gguf) > 1 else next(iter(m.gguf))
        if gguf not in m.gguf:
            raise LlamaCppError(f"{self.directory} holds GGUF decoders of type {', '.join(sorted(m.gguf))}, not {gguf}; "
                                f"write it with eov-export gguf --type {gguf}")
        if prefill is None:  # the handoff where the fused CPU decoder's KV buffers are there to hand over
            prefill = "onnxruntime" if m.decoder_kind == mf.ORT_CPU_DECODER else "llamacpp"
        if prefill not in PREFILLS:
            raise LlamaCppError(f"prefill {prefill!r}: one of {', '.join(PREFILLS)}")
        if prefill == "onnxruntime" and m.decoder_kind != mf.ORT_CPU_DECODER:
            raise LlamaCppError("handing the prompt from ONNX Runtime to llama.cpp needs the CPU decoder (eov-export "
                                "onnx --decoder ort-cpu); or run with --prefill llamacpp")
        path = self.directory / m.gguf[gguf]["file"]
        session = LlamaCppDecodeSession(path, m.max_context, threads or os.cpu_count() or 1, gguf == "f32")
        shape = (session.num_layers, session.hidden, session.kv_heads, session.head_dim)
        expected = (m.num_layers, int(m.model_config["text_config"]["hidden_size"]), m.num_kv_heads, m.head_dim)
        if shape != expected:
            session.close()
            raise LlamaCppError(f"{path} holds a decoder of {shape[0]} layers x {shape[1]} wide, the artifacts "
                                f"{expected[0]} x {expected[1]}: it belongs to another model; write it with "
                                "eov-export gguf")
        if prefill == "onnxruntime":
            session.check_state_format()  # at start-up, not in the first answer
        self.decoder.llama, self.decoder.llama_prefill = session, prefill
        self.llama = session

    def use_draft(self, directory: str | os.PathLike, draft_tokens: int = DEFAULT_DRAFT_TOKENS,
                  verify_hashes: bool = True, **runner_options) -> None:
        """Decode speculatively with the decoder of the artifacts in ``directory`` as the draft
        (its encoder and projector are not loaded: the draft reads this pipeline's prompt)."""
        directory = Path(directory)
        manifest = mf.load_manifest(directory, verify_hashes=verify_hashes)
        entry = manifest.graphs.get(mf.DECODER)
        if entry is None:
            raise mf.ManifestError(f"{directory}: the manifest lists no decoder graph; re-export the draft")
        runner = make_runner("onnxruntime", DRAFT, directory / entry.file, entry, **runner_options)
        table = np.load(directory / manifest.embedding["file"])
        self.runners[DRAFT] = runner
        self.decoder = SpeculativeDecoder(self.decoder, Decoder(runner, table, manifest), draft_tokens)

    # -- lifecycle ---------------------------------------------------------------------------
    def warmup(self) -> None:
        """Create the sessions and run each graph once on dummy input (first-call costs paid here)."""
        size = self.spec.image_size
        view = View(np.zeros((bands.NUM_CANVAS_SLOTS, size, size), np.float32), np.ones((size, size), bool),
                    np.ones(bands.NUM_CANVAS_SLOTS, bool), "rgb8", "optical", ("warmup",), (size, size))
        self.answer([view], task="caption", generation=GenerationConfig(max_new_tokens=2))

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()
        if self.llama is not None:
            self.llama.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inputs ------------------------------------------------------------------------------
    def read(self, paths, band_set: str | None = None, window: Window | None = None,
             nodata: float | None = None, bands: Sequence[str] | str | None = None) -> View:
        """One view at the model's input size; refuses sources smaller than one patch. ``bands``: the
        band names of a multi-band file without band descriptions, in file order."""
        start = time.perf_counter()
        view = read_view(paths, band_set=band_set, size=self.spec.image_size, window=window, nodata=nodata,
                         bands=bands)
        src_h, src_w = (view.window.height, view.window.width) if view.window else view.source_size
        if src_h < self.patch_size or src_w < self.patch_size:
            raise ViewMismatchError(
                f"{view.sources[0]}: {src_w:g}x{src_h:g} pixels is smaller than one {self.patch_size}x"
                f"{self.patch_size} patch of the model; use a larger image or tile"
            )
        self.timings["read"] += time.perf_counter() - start
        return view

    def sample(self, views: Sequence[View], task: TaskLike = None, prompt: str | None = None) -> Sample:
        """A Sample asking ``prompt`` (an instruction; the view tags are added) or the task's question."""
        task = _task(task)
        if prompt is None:
            if task is None:
                raise PromptError("give a task or a prompt")
            prompt = task.default_question
        if task is not None and len(views) < task.min_views:
            raise ViewMismatchError(f"task {task.name} needs at least {task.min_views} views, got {len(views)}")
        return Sample(views=list(views), instruction=prompt)

    # -- inference ---------------------------------------------------------------------------
    def image_embeds(self, pixel_values: np.ndarray, modality_ids: np.ndarray) -> np.ndarray:
        """(V, 16, H, W), (V,) -> (V, N', D)."""
        start = time.perf_counter()
        features = self.runners[mf.ENCODER].infer({mf.PIXEL_VALUES: pixel_values, mf.MODALITY_IDS: modality_ids})
        embeds = self.runners[mf.PROJECTOR].infer({mf.FEATURES: features[mf.FEATURES]})[mf.IMAGE_EMBEDS]
        self.timings["encode"] += time.perf_counter() - start
        return embeds

    def prompt_embeds(self, input_ids: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        """Token embeddings (B, S, D) with the image embeddings over the placeholders, in reading order."""
        embeds = self.embed_table[input_ids].astype(np.float32, copy=False)  # (B, S, D), a copy
        is_image = input_ids == self.manifest.special_tokens["image"]
        if int(is_image.sum()) != image_embeds.shape[0] * image_embeds.shape[1]:
            raise ViewMismatchError(f"{int(is_image.sum())} image placeholders for {image_embeds.shape[0]} view(s) "
                                    f"x {image_embeds.shape[1]} embeddings")
        embeds[is_image] = image_embeds.reshape(-1, embeds.shape[-1])
        return embeds

    def inputs_embeds(self, batch: dict[str, np.ndarray], image_embeds: np.ndarray | None = None) -> np.ndarray:
        """The decoder's prefill input (B, S, D): token embeddings with the views' embeddings in place
        (``image_embeds`` (V, N', D): already encoded, else encoded here from the batch's pixels)."""
        if image_embeds is None:
            image_embeds = self.image_embeds(batch["pixel_values"], batch["modality_ids"])
        return self.prompt_embeds(batch["input_ids"], image_embeds)

    def batch(self, samples: Sequence[Sample], max_new_tokens: int) -> dict[str, np.ndarray]:
        return build_batch(samples, self.tokenizer, self.spec, max_new_tokens=max_new_tokens)

    def generate_ids(self, batch: dict[str, np.ndarray], generation: GenerationConfig | None = None,
                     image_embeds: np.ndarray | None = None, shared_prefix: int = 0,
                     prefix_kv: PrefixKV | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and probabilities (B, T) for model-ready arrays (``build_batch`` output).
        ``shared_prefix``/``prefix_kv``: see :meth:`Decoder.steps` (rows sharing their first tokens)."""
        generation = generation or GenerationConfig()
        embeds = self.inputs_embeds(batch, image_embeds)
        start = time.perf_counter()
        if shared_prefix:  # the speculative loop is batch 1: its FP32 target decodes the questions together
            ids, probs = self._generating_decoder().generate(embeds, batch["attention_mask"], generation,
                                                             shared_prefix, prefix_kv)
        else:
            ids, probs = self.decoder.generate(embeds, batch["attention_mask"], generation)
        self.timings["generate"] += time.perf_counter() - start
        return ids, probs

    def answer(self, views: Sequence[View], task: TaskLike = None, prompt: str | None = None,
               generation: GenerationConfig | None = None) -> list[Answer]:
        """Answer one multi-view sample (all ``views`` in one prompt)."""
        task = _task(task)
        return self.answer_samples([self.sample(views, task, prompt)], generation, task)

    def answer_each(self, views: Sequence[View], task: TaskLike = None, prompt: str | None = None,
                    generation: GenerationConfig | None = None) -> list[Answer]:
        """Answer the same question about each view separately, as one batch."""
        task = _task(task)
        return self.answer_samples([self.sample([v], task, prompt) for v in views], generation, task)

    def answer_samples(self, samples: Sequence[Sample], generation: GenerationConfig | None = None,
                       task: TaskLike = None, tasks: Sequence[TaskLike] | None = None,
                       cache_views: bool = False, budgets: Sequence[int] | None = None,
                       view_keys: Sequence[str] | None = None) -> list[Answer]:
        """Answer ``samples`` as one batch; ``task`` names what every one asks (``tasks``: each its own).
        ``cache_views``: each sample's encoded views are taken from :attr:`prefix_cache` where there
        (by content), the others encoded in one call and kept there for later requests; ``view_keys``
        (implies it): those content hashes, already computed by the caller. ``budgets``: each sample's
        own new-token limit (the batch decodes to the largest; each answer is cut at its own, as if
        asked alone)."""
        tasks = [_task(t) for t in tasks] if tasks is not None else [_task(task)] * len(samples)
        generation = _widest(generation or GenerationConfig(), budgets)
        if not cache_views and view_keys is None:
            return self._answer_in_pieces(samples, tasks, generation, budgets=budgets)
        arrays: dict[int, dict[str, np.ndarray]] = {}  # model inputs of samples whose views are hashed or encoded here

        def inputs(i: int) -> dict[str, np.ndarray]:
            if i not in arrays:
                arrays[i] = self.batch([samples[i]], 1)
            return arrays[i]

        keys = list(view_keys) if view_keys is not None else [
            content_key(inputs(i)["pixel_values"], inputs(i)["modality_ids"]) for i in range(len(samples))]
        return self._answer_in_pieces(samples, tasks, generation, per_sample_embeds=self.encode_views(keys, inputs),
                                      budgets=budgets)

    def encode_views(self, keys: Sequence[str], inputs: Callable[[int], dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Each sample's encoded views (V, N', D), by their content hashes ``keys``: from
        :attr:`prefix_cache` where there, the others encoded in one call (``inputs(i)``: sample i's
        model inputs, asked for only where its views are encoded) and kept in the cache."""
        keys = list(keys)
        embeds = {k: self.prefix_cache.get(k) for k in dict.fromkeys(keys)}
        missing = [k for k, e in embeds.items() if e is None]
        if missing:
            first = [inputs(keys.index(k)) for k in missing]
            encoded = self.image_embeds(np.concatenate([a["pixel_values"] for a in first]),
                                        np.concatenate([a["modality_ids"] for a in first]))  # (sum V, N', D), one call
            start = 0
            for k, a in zip(missing, first):
                embeds[k] = encoded[start:start + a["pixel_values"].shape[0]]
                start += a["pixel_values"].shape[0]
                self.prefix_cache.put(k, embeds[k], embeds[k].nbytes)
        return [embeds[k] for k in keys]

    def answer_questions(self, views: Sequence[View], questions: Sequence[tuple[TaskLike, str | None]],
                         generation: GenerationConfig | None = None, share_prefix: bool = True,
                         budgets: Sequence[int] | None = None) -> list[Answer]:
        """Several questions about the same views, as one job: the views encoded once, the prompt's
        image block (``<|user|>``, view tags, image embeddings: the prefix every question shares)
        prefilled once and copied under each question's own tokens, and the questions decoded
        together as one batch. ``questions``: (task, prompt) pairs, as :meth:`sample` takes them.
        The encoded views and the prefix's keys and values stay in :attr:`prefix_cache` for later
        questions about the same views. Each answer is the one the question gets alone (tested
        token for token; ``share_prefix=False`` prefills every question whole). Artifacts whose
        answers depend on what shares a call (:attr:`Manifest.batch_invariant`: dynamic INT8)
        decode each question alone, after the one encoding."""
        if not questions:
            raise PromptError("give at least one question")
        generation = _widest(generation or GenerationConfig(), budgets)
        questions = [(_task(task), prompt) for task, prompt in questions]
        samples = [self.sample(views, task, prompt) for task, prompt in questions]
        first = self.batch(samples[:1], generation.max_new_tokens)
        views_key = content_key(first["pixel_values"], first["modality_ids"])
        embeds = self.prefix_cache.get(views_key)
        if embeds is None:
            embeds = self.image_embeds(first["pixel_values"], first["modality_ids"])  # (V, N', D), once
            self.prefix_cache.put(views_key, embeds, embeds.nbytes)
        tasks = [task for task, _ in questions]
        if not self.manifest.batch_invariant:
            # dynamic INT8: a batch or a shared prefix would change each row's activation scales, and
            # so its answer; each question is decoded alone, on the views encoded once
            each = budgets or [generation.max_new_tokens] * len(samples)
            return [a for s, t, b in zip(samples, tasks, each)
                    for a in self._answer_in_pieces([s], [t], _widest(generation, [b]), embeds)]
        return self._answer_in_pieces(samples, tasks, generation, embeds, views_key if share_prefix else None,
                                      budgets=budgets)

    def _answer_in_pieces(self, samples: Sequence[Sample], tasks: Sequence[TaskSpec | None], generation: GenerationConfig,
                          views_embeds: np.ndarray | None = None, views_key: str | None = None,
                          per_sample_embeds: Sequence[np.ndarray] | None = None,
                          budgets: Sequence[int] | None = None) -> list[Answer]:
        """Answer ``samples`` in batches the engines' profiles take (``max_batch``; one batch when
        unbounded). ``views_embeds`` (V, N', D): the encoded views every sample shares, else each
        batch encodes its own; with ``views_key`` (their content hash) the shared prefix is
        prefilled once per piece, or taken from the prefix cache."""
        size = self.max_batch or len(samples) or 1
        answers = []
        for start in range(0, len(samples), size):
            piece = samples[start:start + size]
            if per_sample_embeds is not None:  # each sample's own encoded views, in order
                shared = np.concatenate(per_sample_embeds[start:start + size])
            else:
                shared = None if views_embeds is None else np.concatenate([views_embeds] * len(piece))
            batch = self.batch(piece, generation.max_new_tokens)
            prefix_ids = self.image_block_prefix(batch) if views_key is not None else None
            prefix, prefix_kv, prefix_key = 0, None, None
            if prefix_ids is not None:
                prefix, prefix_key = len(prefix_ids), prefix_kv_key(views_key, prefix_ids)
                prefix_kv = self.prefix_cache.get(prefix_key)
            ids, probs = self.generate_ids(batch, generation, shared, prefix, prefix_kv)
            if prefix and prefix_kv is None and self._generating_decoder().last_prefix_kv is not None:
                computed = self._generating_decoder().last_prefix_kv
                self.prefix_cache.put(prefix_key, computed, computed.nbytes)
            limits = budgets[start:start + size] if budgets is not None else [ids.shape[1]] * len(piece)
            answers += [self.make_answer(sample, row_ids[:limit], row_probs[:limit], task)
                        for sample, task, row_ids, row_probs, limit
                        in zip(piece, tasks[start:start + size], ids, probs, limits)]
        return answers

    def _generating_decoder(self) -> Decoder:
        return self.decoder.target if isinstance(self.decoder, SpeculativeDecoder) else self.decoder

    def image_block_prefix(self, batch: dict[str, np.ndarray]) -> np.ndarray | None:
        """The token ids every row starts with, up to and including the last image placeholder (the
        image block; the question text after it differs); None when the rows do not share that much."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = mask.sum(-1)
        rows = [ids[r, ids.shape[1] - int(n):] for r, n in enumerate(lengths)]  # unpadded
        image = np.flatnonzero(rows[0] == self.manifest.special_tokens["image"])
        if not len(image):
            return None
        prefix = rows[0][:int(image[-1]) + 1]
        if len(prefix) >= int(lengths.min()) or any(not np.array_equal(row[:len(prefix)], prefix) for row in rows):
            return None
        if self.max_suffix is not None and int(lengths.max()) - len(prefix) > self.max_suffix:
            return None  # a question longer than the engine's decode profile takes: prefilled whole
        return prefix

    def stream(self, views: Sequence[View], task: TaskLike = None, prompt: str | None = None,
               generation: GenerationConfig | None = None,
               sample: Sample | None = None) -> Generator[str, None, Answer]:
        """Yield the answer's text piece by piece as tokens are generated (one sample); the
        generator's return value is the whole :class:`Answer` (``StopIteration.value``). Closing
        the generator stops decoding at the next step. ``sample``: already built from the views."""
        generation = generation or GenerationConfig()
        task = _task(task)
        sample = sample or self.sample(views, task, prompt)
        batch = self.batch([sample], generation.max_new_tokens)
        embeds = self.inputs_embeds(batch)
        eos = self.manifest.special_tokens["eos"]
        ids: list[int] = []
        probs: list[float] = []
        shown = ""
        for step in self.decoder.steps(embeds, batch["attention_mask"], generation):
            ids.append(int(step.token_ids[0]))
            probs.append(float(step.probs[0]))
            if ids[-1] == eos:
                break
            text = self.tokenizer.decode(ids)
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        answer = self.make_answer(sample, np.array(ids), np.array(probs, np.float32), task)
        if answer.text.startswith(shown) and len(answer.text) > len(shown):
            yield answer.text[len(shown):]
        return answer

    def make_answer(self, sample: Sample, ids: np.ndarray, probs: np.ndarray, task: TaskLike) -> Answer:
        """The :class:`Answer` to ``sample`` from its generated token ids and probabilities (cut at
        EOS, padding dropped): text, SLIS shapes as detections, problems, whether the budget cut it."""
        special = self.manifest.special_tokens
        answer = answer_from_ids(ids.tolist(), probs.tolist(), self.tokenizer, special["eos"], special["pad"])
        answer.detections = detections_from_answer(answer.parsed, answer.token_ids, answer.token_probs, sample.views,
                                                   self.tokenizer)
        answer.task = task.name if (task := _task(task)) else None
        answer.inputs = [v.inputs() for v in sample.views]
        return answer

    # -- reporting ---------------------------------------------------------------------------
    def stats(self) -> dict:
        graphs = {}
        for name, runner in self.runners.items():
            t = runner.timings
            graphs[name] = {"calls": len(t), "total_s": round(sum(t), 4),
                            "mean_ms": round(1000 * sum(t) / len(t), 3) if t else None}
        if self.llama is not None:  # decode steps on llama.cpp (use_llamacpp)
            t = self.llama.timings
            graphs[LLAMACPP_DECODER] = {"calls": len(t), "total_s": round(sum(t), 4),
                                        "mean_ms": round(1000 * sum(t) / len(t), 3) if t else None}
        stats = {"stages_s": {k: round(v, 4) for k, v in self.timings.items()}, "graphs": graphs,
                 "kv_cache_mb": round(self.decoder.last_cache_bytes / (1 << 20), 3),
                 "peak_rss_mb": round(peak_rss_mb(), 1)}
        if self.prompt_session is not None:
            stats["prompt_session"] = self.prompt_session
        if self.prefix_cache.hits or self.prefix_cache.misses:
            stats["prefix_cache"] = self.prefix_cache.stats()
        if isinstance(self.decoder, SpeculativeDecoder):
            stats["speculative"] = {"draft_tokens": self.decoder.draft_tokens, **self.decoder.last_stats.to_dict()}
        return stats


def _widest(generation: GenerationConfig, budgets: Sequence[int] | None) -> GenerationConfig:
    """``generation`` with room for the largest of ``budgets`` (a batch decodes to its longest row)."""
    if not budgets:
        return generation
    from dataclasses import replace

    return replace(generation, max_new_tokens=max(budgets))


def runs_on_cpu(providers: list[str] | None) -> bool:
    """Whether ONNX Runtime runs these graphs on the CPU (the default, or CPU listed first)."""
    return not providers or PROVIDER_ALIASES.get(providers[0].lower(), providers[0]) == "CPUExecutionProvider"


def _onnxruntime_at_least(version: tuple[int, int]) -> bool:
    import onnxruntime

    try:
        return tuple(int(part) for part in onnxruntime.__version__.split(".")[:2]) >= version
    except ValueError:  # a local build's version string
        return False
