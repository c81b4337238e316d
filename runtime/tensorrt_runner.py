"""TensorRT behind the runner interface (engine from ``eov-export engine``), imported lazily.

Written against TensorRT 10.x / 11.x and cuda-python (``cuda.bindings.runtime``): the engine's
metadata is checked (TensorRT version, compute capability, engine and source hashes) before it is
deserialized; each call picks the optimization profile (the decoder's "prefill" when there is no
past, "decode" otherwise), sets input shapes, and runs ``execute_async_v3`` on one stream with
device buffers that grow but are never reallocated for a smaller call.

Not yet done (stated in the README): the KV cache still crosses the PCIe/shared-memory boundary each
step (the generation loop hands numpy buffers to every runner); keeping it on the device needs the
decoder loop to own device buffers. This module is not exercised on our CPU-only machines; its
tests skip without TensorRT and a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eov_edge import manifest as mf
from eov_edge.runtime.runner import Runner, RunnerError


def _cuda_check(result):
    """cuda-python returns (err, *values); raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RunnerError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class TensorRTRunner(Runner):
    def __init__(self, name: str, path: Path, entry: mf.GraphEntry, engine_dir: Path,
                 manifest: mf.Manifest | None = None) -> None:
        super().__init__(name, path, entry)
        self.engine_dir = Path(engine_dir)
        self.manifest = manifest
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity bytes)

    def _activate(self) -> None:
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise RunnerError("the TensorRT backend needs tensorrt and cuda-python (pip install 'eov-edge[trt]' on "
                              "the device); use backend='onnxruntime' elsewhere") from None
        from eov_edge.export.tensorrt_build import check_engine, load_meta

        meta = next((m for m in load_meta(self.engine_dir) if m.graph == self.name), None)
        if meta is None:
            raise RunnerError(f"{self.engine_dir}: no engine for the {self.name} graph")
        props = _cuda_check(cudart.cudaGetDeviceProperties(0))
        check_engine(meta, self.engine_dir, trt.__version__, (props.major, props.minor), self.manifest)
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine((self.engine_dir / meta.engine_file).read_bytes())
        if self.engine is None:
            raise RunnerError(f"{meta.engine_file}: TensorRT could not deserialize the engine; rebuild it")
        self.context = self.engine.create_execution_context()
        self.profile_names = [p["name"] for p in meta.profiles]
        self.stream = _cuda_check(cudart.cudaStreamCreate())
        self._current_profile = None

    def _profile_for(self, feed: dict[str, np.ndarray]) -> int:
        if len(self.profile_names) == 1:
            return 0
        decode = self.name == mf.DECODER and feed[mf.past_names(1)[0]].shape[2] > 0
        return self.profile_names.index("decode" if decode else "prefill")

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if pointer:
                _cuda_check(self._cudart.cudaFree(pointer))
            pointer = int(_cuda_check(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart, context = self._trt, self._cudart, self.context
        profile = self._profile_for(feed)
        if profile != self._current_profile:
            context.set_optimization_profile_async(profile, self.stream)
            self._current_profile = profile
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            context.set_input_shape(name, array.shape)
            pointer = self._device_buffer(name, array.nbytes)
            if array.nbytes:
                _cuda_check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self.stream))
            context.set_tensor_address(name, pointer)
        results = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            host = outputs.get(name)
            if host is None or host.shape != shape or host.dtype != dtype:
                host = np.empty(shape, dtype)
            results[name] = host
            context.set_tensor_address(name, self._device_buffer(name, host.nbytes))
        if not context.execute_async_v3(self.stream):
            raise RunnerError(f"{self.name}: TensorRT execution failed")
        for name, host in results.items():
            if host.nbytes:
                _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, d2h,
                                                   self.stream))
        _cuda_check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def _deactivate(self) -> None:
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = None
