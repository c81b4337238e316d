"""ONNX Runtime implementation of the runner interface (CPU or CUDA), and the session options every
ONNX Runtime session eov-edge creates shares."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from eov_edge.core.manifest import GraphEntry
from eov_edge.runtime.runner import Runner, RunnerError, buffers_key, same_buffers

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}
THREAD_POOLS = ("session", "shared")
_ORT_SHARED_THREADS: int | None = None  # size of the process-wide ORT pool, once we created it
# glibc's mmap threshold (mallopt's M_MMAP_THRESHOLD, malloc.h): blocks above it are mmap'd and
# unmapped when freed; below it they come from the heap, and stay in the process once freed
_M_MMAP_THRESHOLD = -3
LOADING_MMAP_THRESHOLD = 128 << 10  # glibc's starting value
RUNNING_MMAP_THRESHOLD = 32 << 20  # the most glibc's own (dynamic) threshold rises to on 64-bit


def _set_mmap_threshold(size: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, size) where the C library is glibc and the user has not fixed it
    (``MALLOC_MMAP_THRESHOLD_``); whether it was set."""
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


@contextmanager
def freed_weights_leave_the_process():
    """While ONNX Runtime loads a graph, large freed blocks go back to the OS at once.

    ONNX Runtime loads each weight, packs it into the layout its CPU kernels read (prepacking) and
    frees the original. glibc raises its mmap threshold each time a large mmap'd block is freed, so
    later weights come from the heap and their freed originals stay resident: the small preset's
    FP32 decoder (201 MiB of weights) took 318 MiB once loaded, its peak 327 MiB. Held at 128 KiB
    while the session is made, every original is unmapped when freed: 213 MiB, peak 221 MiB.
    Afterwards the threshold is set where glibc's own would have risen (32 MiB), so a prompt's
    buffers are reused from the heap as before, not mapped afresh on every call (fresh mappings
    cost about 6% of the time to first token, measured). Process-wide; a no-op off glibc.
    """
    loading = _set_mmap_threshold(LOADING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if loading:
            _set_mmap_threshold(RUNNING_MMAP_THRESHOLD)


def ort_shared_thread_pool(threads: int | None) -> int:
    """Create (once per process) one ONNX Runtime thread pool for all sessions; returns its size.

    The pipeline alternates three sessions. With a pool per session, an idle pool spinning for work
    steals the cores the next session needs, so per-session pools run here without spinning, and
    then every small op pays a thread wake-up. One shared, spinning pool avoids both (nano, 2 cores:
    time to first token 41 ms per-session spinning, 17 ms per-session not spinning, 15 ms shared;
    benchmarks/runtime_latency.py). The catch: ONNX Runtime then requires *every* later session in
    the process to use the shared pool, so only a process that owns its ONNX Runtime use (eov-run,
    the benchmarks) should ask for it.
    """
    global _ORT_SHARED_THREADS
    if _ORT_SHARED_THREADS is None:
        import onnxruntime as ort

        _ORT_SHARED_THREADS = max(1, threads or os.cpu_count() or 1)
        ort.set_global_thread_pool_sizes(_ORT_SHARED_THREADS, 1)
    return _ORT_SHARED_THREADS


def session_options(threads: int | None = None, config_entries: dict[str, str] | None = None):
    """ONNX Runtime SessionOptions for any session eov-edge creates: the shared pool once it exists
    (ONNX Runtime then refuses any other), else a non-spinning pool of its own; ``config_entries``:
    session config keys and values (``add_session_config_entry``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    if _ORT_SHARED_THREADS is not None:
        options.use_per_session_threads = False
    else:
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtRunner(Runner):
    """ONNX Runtime on CPU or CUDA (``providers``, first available wins, as ORT orders them).

    ``thread_pool``: "session" (default; a pool per session, not spinning: safe beside other ONNX
    Runtime users in the process) or "shared" (one spinning pool; faster, see
    :func:`ort_shared_thread_pool`). ``threads``: intra-op threads (default: ONNX Runtime's choice,
    the physical cores). ``config_entries``: session config entries (the decoder's prefill session).
    """

    def __init__(self, name: str, path: Path, entry: GraphEntry, providers: list[str] | None = None,
                 threads: int | None = None, thread_pool: str = "session",
                 config_entries: dict[str, str] | None = None) -> None:
        super().__init__(name, path, entry)
        self.config_entries = dict(config_entries or {})
        if thread_pool not in THREAD_POOLS:
            raise RunnerError(f"thread_pool must be one of {THREAD_POOLS}, got {thread_pool!r}")
        self.providers = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["CPUExecutionProvider"])]
        self.threads = threads
        self.thread_pool = thread_pool
        self.session = None
        self._binding = None  # (key of the bound buffers, IOBinding), reused while the key holds

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        unavailable = [p for p in self.providers if p not in available]
        if unavailable:
            raise RunnerError(
                f"ONNX Runtime here offers {available}, not {unavailable}; install onnxruntime-gpu for CUDA "
                "(pip install 'eov-edge[gpu]') or run with --providers cpu"
            )
        # EOV_THREAD_POOL=session keeps per-session pools in a process that also hosts other ONNX
        # Runtime users (the test suite, a notebook): once the shared pool exists, ORT refuses them.
        if self.thread_pool == "shared" and os.environ.get("EOV_THREAD_POOL") != "session":
            self.threads = ort_shared_thread_pool(self.threads)  # the first runner in a process fixes its size
        options = session_options(self.threads, self.config_entries)
        try:
            with freed_weights_leave_the_process():
                self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types from C++
            raise RunnerError(f"{self.path}: ONNX Runtime cannot load the graph ({err}); re-export the "
                              "artifacts with this eov-edge version") from None

    def _run(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not outputs:
            values = self.session.run(None, feed)
            return dict(zip(self.output_names, values))
        # IOBinding: the given outputs are written into the caller's arrays, nothing is allocated
        # for them; the rest come back as new arrays. Inputs are bound by address, so a decode loop
        # that refills the same buffers in place reuses the binding as it is: no per-step rebinding.
        feed_key, outputs_key = buffers_key(feed), buffers_key(outputs)
        cached = self._binding
        if cached is not None and same_buffers(cached[0], feed_key) and same_buffers(cached[1], outputs_key):
            binding = cached[2]
        else:
            binding = self._bind(feed, outputs)
            reusable = all(a.flags.c_contiguous for a in feed.values())
            self._binding = (feed_key, outputs_key, binding) if reusable else None
        self.session.run_with_iobinding(binding)
        if len(outputs) == len(self.output_names):
            return outputs  # every output was written in place
        values = binding.get_outputs()  # OrtValues; only the unbound ones are copied out
        return {name: outputs[name] if name in outputs else value.numpy()
                for name, value in zip(self.output_names, values)}

    def _bind_call(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
                   ) -> Callable[[], dict[str, np.ndarray]]:
        if len(outputs) != len(self.output_names) or not all(a.flags.c_contiguous for a in feed.values()):
            return super()._bind_call(feed, outputs)
        binding, run, timings, clock = self._bind(feed, outputs), self.session.run_with_iobinding, self.timings, time.perf_counter

        def call() -> dict[str, np.ndarray]:
            start = clock()
            run(binding)
            timings.append(clock() - start)
            return outputs

        return call

    def _bind(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]):
        binding = self.session.io_binding()
        for name, array in feed.items():
            if array.flags.c_contiguous:
                binding.bind_input(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))  # ORT keeps its own copy
        for name in self.output_names:
            if name in outputs:
                array = outputs[name]
                if not array.flags.c_contiguous:
                    raise RunnerError(f"{self.name}: output buffer {name} must be C-contiguous")
                binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        return binding

    def _deactivate(self) -> None:
        self.session = None
        self._binding = None
