"""A stand-in for the ``tensorrt`` and ``cuda.bindings.runtime`` modules, for CPU dry runs of the
engine builder and the TensorRT runner.

It accepts only the names the real bindings register (``tensorrt_api/*.txt``, extracted from the
wheels): any other attribute raises AttributeError, as the real module would. It records every call
(path, arguments) and answers the calls whose results the code reads from ``answers`` (by the
called name: a value, or a function of the call's arguments); everything else answers another
stand-in. Not a backend: nothing here computes.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

NAMES = Path(__file__).resolve().parent / "tensorrt_api"


def registered(list_name: str) -> set[str]:
    """The names of a list and every tail of one (the linker stores "INT8" inside "UINT8")."""
    names = (NAMES / f"{list_name}.txt").read_text().split()
    return {name[i:] for name in names for i in range(len(name))}


class BindingsDouble:
    def __init__(self, allowed: set[str], calls: list, path: str, answers: dict) -> None:
        self._allowed, self._calls, self._path, self._answers = allowed, calls, path, answers

    def __getattr__(self, name: str):
        if name.startswith("_") and name != "__version__":
            raise AttributeError(name)
        if name not in self._allowed:
            raise AttributeError(f"{self._path}.{name}: not a name the real bindings register")
        answer = self._answers.get(name)
        if answer is not None and not callable(answer):
            return answer
        return BindingsDouble(self._allowed, self._calls, f"{self._path}.{name}", self._answers)

    def __call__(self, *args, **kwargs):
        self._calls.append((self._path, args, kwargs))
        answer = self._answers.get(self._path.rsplit(".", 1)[-1])
        if callable(answer):
            return answer(*args, **kwargs)
        return answer if answer is not None else BindingsDouble(self._allowed, self._calls, f"{self._path}()",
                                                                 self._answers)

    def __int__(self) -> int:  # enum members: their bit position in the tests' eyes
        return 0

    def __eq__(self, other) -> bool:
        return isinstance(other, BindingsDouble) and other._path == self._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __repr__(self) -> str:
        return f"<{self._path}>"


def install(monkeypatch, tensorrt_list: str, version: str, trt_answers: dict, cuda_answers: dict
            ) -> tuple[list, list]:
    """Put the two stand-ins where ``import tensorrt`` and ``from cuda.bindings import runtime`` find
    them; returns their call records (TensorRT, CUDA)."""
    trt_calls, cuda_calls = [], []
    trt = BindingsDouble(registered(tensorrt_list), trt_calls, "trt", {"__version__": version, **trt_answers})
    cudart = BindingsDouble(registered("cuda-bindings-12.8.0"), cuda_calls, "cudart", cuda_answers)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return trt_calls, cuda_calls
