"""A stand-in for the ``tensorrt`` and ``cuda.bindings.runtime`` modules, for CPU dry runs of the
engine builder and the TensorRT runner.

It accepts only what the real bindings have, where they have it:
- an enum's members are the ones its ``py::enum_`` binds, worth their C++ values
  (``tensorrt_api/tensorrt-api-<version>.json``, from TensorRT's sources at the release tag):
  ``trt.BuilderFlag.INT8`` fails on 11.x, where only ``DataType`` has ``INT8``, and
  ``int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` is 1 on 10.3 and 0 on 11;
- an object a typed call returns (``trt.Builder(...)``, ``builder.create_builder_config()``,
  ``runtime.deserialize_cuda_engine(...)``, ...) has only its class's methods and properties;
- every other name must be one the compiled module registers (``tensorrt_api/*.txt``, from the wheels).
It records every call (path, arguments) and answers the calls whose results the code reads from
``answers`` (by the called name: a value, or a function of the call's arguments). Not a backend:
nothing here computes.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

NAMES = Path(__file__).resolve().parent / "tensorrt_api"
# the API description per major: class members and enum values from the sources of this release
API_OF_MAJOR = {"10": "tensorrt-api-10.3.0.json", "11": "tensorrt-api-11.1.json"}
# what a call returns, where the code then uses the result's methods (NvInfer.h's signatures)
RETURNS = {
    ("Builder", "create_network"): "INetworkDefinition",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
}


def registered(list_name: str) -> set[str]:
    """The names of a list and every tail of one (the linker stores "INT8" inside "UINT8")."""
    names = (NAMES / f"{list_name}.txt").read_text().split()
    return {name[i:] for name in names for i in range(len(name))}


def api(version: str) -> dict:
    return json.loads((NAMES / API_OF_MAJOR[version.split(".")[0]]).read_text())


class BindingsDouble:
    """An untyped name of the module (a function, a class-level constant): checked against the flat
    list of registered names only."""

    def __init__(self, allowed: set[str], calls: list, path: str, answers: dict, api: dict | None = None) -> None:
        self._allowed, self._calls, self._path, self._answers, self._api = allowed, calls, path, answers, api

    def _child(self, name: str):
        api = self._api or {}
        if self._path == "trt" and name in api.get("enums", {}):
            return EnumDouble(name, api["enums"][name], api["tag"])
        if self._path == "trt" and name in api.get("classes", {}):
            return ClassDouble(self._allowed, self._calls, f"{self._path}.{name}", self._answers, api, name)
        return BindingsDouble(self._allowed, self._calls, f"{self._path}.{name}", self._answers, api)

    def __getattr__(self, name: str):
        if name.startswith("_") and name != "__version__":
            raise AttributeError(name)
        bound = self._path == "trt" and self._api and (name in self._api["enums"] or name in self._api["classes"])
        if name not in self._allowed and not bound:  # the sources' class and enum names count too
            raise AttributeError(f"{self._path}.{name}: not a name the real bindings register")
        answer = self._answers.get(name)
        if answer is not None and not callable(answer):
            return answer
        return self._child(name)

    def __call__(self, *args, **kwargs):
        self._calls.append((self._path, args, kwargs))
        answer = self._answers.get(self._path.rsplit(".", 1)[-1])
        if callable(answer):
            return answer(*args, **kwargs)
        return answer if answer is not None else self._result(args, kwargs)

    def _result(self, args, kwargs):
        return BindingsDouble(self._allowed, self._calls, f"{self._path}()", self._answers, self._api)

    def __eq__(self, other) -> bool:
        return isinstance(other, BindingsDouble) and other._path == self._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __repr__(self) -> str:
        return f"<{self._path}>"


class ClassDouble(BindingsDouble):
    """A bound class (``trt.Builder``): calling it makes an instance of it; class-level names
    (``trt.Logger.WARNING``, exported enum values) are checked against the flat list."""

    def __init__(self, allowed, calls, path, answers, api, class_name: str) -> None:
        super().__init__(allowed, calls, path, answers, api)
        self._class = class_name

    def _result(self, args, kwargs):
        return InstanceDouble(self._allowed, self._calls, f"{self._path}()", self._answers, self._api, self._class)


class InstanceDouble(BindingsDouble):
    """An object of a bound class: only that class's methods and properties exist on it."""

    def __init__(self, allowed, calls, path, answers, api, class_name: str) -> None:
        super().__init__(allowed, calls, path, answers, api)
        self._class = class_name

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        members = self._api["classes"][self._class]
        if name not in members:
            raise AttributeError(f"{self._path}.{name}: {self._class} has no {name!r} in TensorRT "
                                 f"{self._api['tag']} (it has {', '.join(members[:12])}, ...)")
        answer = self._answers.get(name)
        if answer is not None and not callable(answer):
            return answer
        returned = RETURNS.get((self._class, name))
        if returned is not None:
            return ClassDouble(self._allowed, self._calls, f"{self._path}.{name}", self._answers, self._api, returned)
        return BindingsDouble(self._allowed, self._calls, f"{self._path}.{name}", self._answers, self._api)


class EnumDouble:
    """A bound enum: its members only, each worth its C++ value."""

    def __init__(self, name: str, members: dict, tag: str) -> None:
        self._name, self._members, self._tag = name, members, tag

    def __getattr__(self, member: str):
        if member.startswith("_"):
            raise AttributeError(member)
        if member not in self._members:
            raise AttributeError(f"trt.{self._name}.{member}: not a member of {self._name} in TensorRT {self._tag} "
                                 f"(its members: {', '.join(self._members)})")
        return EnumMember(self._name, member, self._members[member])


class EnumMember:
    def __init__(self, enum: str, name: str, value: int | None) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        if self.value is None:
            raise AssertionError(f"the value of {self.enum}.{self.name} was not found in the headers")
        return self.value

    def __eq__(self, other) -> bool:
        return isinstance(other, EnumMember) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return f"<trt.{self.enum}.{self.name}>"


def install(monkeypatch, tensorrt_list: str, version: str, trt_answers: dict, cuda_answers: dict
            ) -> tuple[list, list]:
    """Put the two stand-ins where ``import tensorrt`` and ``from cuda.bindings import runtime`` find
    them; returns their call records (TensorRT, CUDA)."""
    trt_calls, cuda_calls = [], []
    trt = BindingsDouble(registered(tensorrt_list), trt_calls, "trt", {"__version__": version, **trt_answers},
                         api(version))
    cudart = BindingsDouble(registered("cuda-bindings-12.8.0"), cuda_calls, "cudart", cuda_answers)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return trt_calls, cuda_calls
