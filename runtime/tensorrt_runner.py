"""TensorRT behind the runner interface (engine from ``eov-export engine``), imported lazily.

Written against TensorRT 10.x / 11.x and cuda-python (``cuda.bindings.runtime``): the engine's
metadata is checked (TensorRT version, compute capability, engine and source hashes) before it is
deserialized; each call picks the optimization profile (the decoder's "prefill" when there is no
past, "decode" otherwise), sets input shapes, and runs ``execute_async_v3`` on one stream with
device buffers that grow but are never reallocated for a smaller call.

Decode steps (:meth:`TensorRTRunner.bind_decode`) keep the KV cache on the device: the prompt's
cache is uploaded once, each step uploads only the new token's embedding, the mask and the position,
appends the step's key/value to the device cache with one strided device-to-device copy per tensor
(``cudaMemcpy2DAsync``: B*KV rows of hd values into slot ``length`` of rows C*hd apart) and downloads
only the logits. This module is not exercised on our CPU-only machines; its tests skip without
TensorRT and a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from eov_edge.core import manifest as mf
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
        from eov_edge.runtime.engine_meta import check_engine, load_meta

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
        self._check_io(trt, meta.engine_file)
        self.context = self.engine.create_execution_context()
        self.profile_names = [p["name"] for p in meta.profiles]
        self.stream = _cuda_check(cudart.cudaStreamCreate())
        self._current_profile = None

    def _check_io(self, trt, engine_file: str) -> None:
        """The engine's inputs, outputs and their dtypes are the manifest's graph's: else a feed would
        fail deep inside TensorRT, or worse, run on the wrong buffers."""
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outputs = set(names) - inputs
        if inputs != set(self.input_names) or outputs != set(self.output_names):
            raise RunnerError(f"{engine_file}: engine inputs {sorted(inputs)} and outputs {sorted(outputs)}, the "
                              f"artifacts' {self.name} graph has {self.input_names} and {self.output_names}; "
                              "rebuild the engines from these artifacts")
        for spec in [*self.entry.inputs, *self.entry.outputs]:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name))).name
            if dtype != spec.dtype:
                raise RunnerError(f"{engine_file}: {spec.name} is {dtype} in the engine, {spec.dtype} in the "
                                  "artifacts; rebuild the engines from these artifacts")

    def _profile_for(self, feed: dict[str, np.ndarray]) -> int:
        if len(self.profile_names) == 1:
            return 0
        decode = self.name == mf.DECODER and feed[mf.past_names(1)[0]].shape[2] > 0
        return self.profile_names.index("decode" if decode else "prefill")

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """TensorRT answers a shape outside the active profile with False, not an exception."""
        if not self.context.set_input_shape(name, shape):
            low, _, high = self.engine.get_tensor_profile_shape(name, self._current_profile or 0)
            raise RunnerError(f"{self.name}: {name} of shape {tuple(shape)} is outside the engine's profile "
                              f"({tuple(low)} to {tuple(high)}); rebuild the engines with eov-export engine "
                              "--max-batch / --max-seq / --max-views large enough, or feed less")

    def _set_address(self, name: str, pointer: int) -> None:
        if not self.context.set_tensor_address(name, pointer):
            raise RunnerError(f"{self.name}: TensorRT refused the device address of {name}")

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
            self._set_input_shape(name, array.shape)
            pointer = self._device_buffer(name, array.nbytes)
            if array.nbytes:
                _cuda_check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self.stream))
            self._set_address(name, pointer)
        results = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            host = outputs.get(name)
            if host is None or host.shape != shape or host.dtype != dtype:
                host = np.empty(shape, dtype)
            results[name] = host
            self._set_address(name, self._device_buffer(name, host.nbytes))
        if not context.execute_async_v3(self.stream):
            raise RunnerError(f"{self.name}: TensorRT execution failed")
        for name, host in results.items():
            if host.nbytes:
                _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, d2h,
                                                   self.stream))
        _cuda_check(cudart.cudaStreamSynchronize(self.stream))
        return results

    def bind_decode(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], cache,
                    past_of: dict[str, str]):
        """Decode steps with the KV cache resident on the GPU (see the module docstring). ``feed``'s
        past arrays hold the prompt's cache now (uploaded once, never read again on the host);
        the other inputs are refilled in place by the caller between steps."""
        self.check_feed(feed)
        self.activate()
        trt, cudart, context = self._trt, self._cudart, self.context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._free_decode_buffers()
        profile = self.profile_names.index("decode") if "decode" in self.profile_names else 0
        context.set_optimization_profile_async(profile, self.stream)
        self._current_profile = profile
        resident = set(past_of.values()) | set(past_of)  # past inputs and present outputs stay on the GPU
        pointers = {}
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            self._set_input_shape(name, array.shape)
            pointers[name] = int(_cuda_check(cudart.cudaMalloc(max(array.nbytes, 1))))  # never null, even empty
            if name in resident:  # the prompt's cache, once
                _cuda_check(cudart.cudaMemcpyAsync(pointers[name], array.ctypes.data, array.nbytes, h2d, self.stream))
            self._set_address(name, pointers[name])
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * trt.nptype(self.engine.get_tensor_dtype(name))().itemsize
            pointers[name] = int(_cuda_check(cudart.cudaMalloc(max(nbytes, 1))))
            self._set_address(name, pointers[name])
        self._decode_pointers = list(pointers.values())
        uploads = [(pointers[n], a) for n, a in feed.items() if n not in resident]
        downloads = [(pointers[n], outputs[n]) for n in self.output_names if n not in resident and n in outputs]
        copies = []  # present (B, KV, 1, hd) -> slot `length` of past (B, KV, C, hd)
        for present, past in past_of.items():
            batch, heads, capacity, head_dim = feed[past].shape
            item = trt.nptype(self.engine.get_tensor_dtype(past))().itemsize
            copies.append((pointers[past], pointers[present], capacity * head_dim * item, head_dim * item,
                           batch * heads))

        def step() -> dict[str, np.ndarray]:
            if cache.length >= cache.capacity:  # the slot write below would land past the device buffers
                raise RunnerError(f"{self.name}: KV cache of {cache.capacity} positions is full")
            start = time.perf_counter()
            for pointer, array in uploads:  # embedding, mask, position: refilled in place by the loop
                _cuda_check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self.stream))
            if not context.execute_async_v3(self.stream):
                raise RunnerError(f"{self.name}: TensorRT execution failed")
            for past, present, row_bytes, slot_bytes, rows in copies:
                _cuda_check(cudart.cudaMemcpy2DAsync(past + cache.length * slot_bytes, row_bytes, present, slot_bytes,
                                                     slot_bytes, rows, d2d, self.stream))
            for pointer, host in downloads:
                _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, d2h, self.stream))
            _cuda_check(cudart.cudaStreamSynchronize(self.stream))
            cache.append_step(copy=False)  # the slot was written on the device; unmask it
            self.timings.append(time.perf_counter() - start)
            return outputs

        return step

    def _free_decode_buffers(self) -> None:
        for pointer in getattr(self, "_decode_pointers", []):
            self._cudart.cudaFree(pointer)
        self._decode_pointers = []

    def _deactivate(self) -> None:
        self._free_decode_buffers()
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = None
