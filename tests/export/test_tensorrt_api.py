"""Every TensorRT and cuda-python name the code uses exists in the real bindings of each TensorRT we
support (10.3, JetPack 6.1/6.2; 11.4, pip and JetPack 7), read from the wheels
(``tensorrt_api/extract_names.py``); a name one version lacks is used only on the other's branch."""

import ast
from pathlib import Path

import pytest

from tests.export.tensorrt_double import registered

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("export/tensorrt_build.py", "runtime/tensorrt_runner.py")
TENSORRT = {"10": "tensorrt-cu12-bindings-10.3.0", "11": "tensorrt-cu12-bindings-11.4.0.106"}
CUDA = "cuda-bindings-12.8.0"

# What each variable or attribute holds in the sources: the module, or an object of its bindings.
TENSORRT_ROOTS = {"trt", "builder", "network", "parser", "config", "profile", "context", "engine", "logger"}
TENSORRT_SELF = {"_trt", "context", "engine", "_runtime", "_logger"}
CUDA_ROOTS = {"cudart", "props"}
CUDA_SELF = {"_cudart"}
# Names a TensorRT major lacks, the majors that have them, and the condition of the branch using them.
ONLY_ON = {"FP16": ({"10"}, "strongly_typed")}


def _chain(node: ast.AST) -> list[str]:
    """``a.b(x).c`` -> [a, b, c]; through calls and subscripts."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return []


def used_names() -> tuple[dict[str, list[ast.Attribute]], dict[str, list[ast.Attribute]]]:
    """(TensorRT names, cuda-python names) the sources use, each with the Attribute nodes using it."""
    tensorrt, cuda = {}, {}
    for source in SOURCES:
        tree = ast.parse((ROOT / source).read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
                continue  # the outermost attribute of a chain names the whole chain
            chain = _chain(node)
            if len(chain) < 2:
                continue
            root, names = (chain[1], chain[2:]) if chain[0] == "self" else (chain[0], chain[1:])
            is_self = chain[0] == "self"
            target = (tensorrt if root in (TENSORRT_SELF if is_self else TENSORRT_ROOTS) else
                      cuda if root in (CUDA_SELF if is_self else CUDA_ROOTS) else None)
            if target is not None:
                for name in names:
                    target.setdefault(name, []).append(node)
        for node in ast.walk(tree):
            node.parent = parents.get(node)  # for the branch check
    return tensorrt, cuda


@pytest.fixture(scope="module")
def names():
    return used_names()


def test_the_collector_finds_the_calls_that_matter(names):
    tensorrt, cuda = names
    assert {"set_input_shape", "set_tensor_address", "execute_async_v3", "build_serialized_network",
            "parse_from_file", "set_optimization_profile_async", "STRONGLY_TYPED", "FP16"} <= set(tensorrt)
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaMemcpy2DAsync", "cudaStreamSynchronize"} <= set(cuda)


@pytest.mark.parametrize("major", sorted(TENSORRT))
def test_every_tensorrt_name_exists_in_the_bindings(names, major):
    have = registered(TENSORRT[major])
    missing = sorted(n for n in names[0] if n not in have and major in ONLY_ON.get(n, ({major},))[0])
    assert not missing, f"TensorRT {major}.x bindings have no {missing}"


def test_names_of_one_major_are_used_only_on_its_branch(names):
    for name, (majors, condition) in ONLY_ON.items():
        for major, list_name in TENSORRT.items():
            # the exception is real: present exactly where it is said to be
            assert (name in registered(list_name)) == (major in majors), (name, major)
        for node in names[0].get(name, []):
            branch = node
            while branch is not None and not (isinstance(branch, ast.If) and condition in ast.unparse(branch.test)):
                branch = getattr(branch, "parent", None)
            assert branch is not None, f"{name} used outside an `if ... {condition}` branch (line {node.lineno})"


def test_every_cuda_name_exists_in_the_bindings(names):
    have = registered(CUDA)
    missing = sorted(n for n in names[1] if n not in have)
    assert not missing, f"cuda-python's runtime bindings have no {missing}"


# The class each variable of the sources holds, for the per-class check (tensorrt_api/tensorrt-api-*.json,
# from TensorRT's binding sources at the release tags).
CLASS_OF = {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
            "profile": "IOptimizationProfile", "context": "IExecutionContext", "engine": "ICudaEngine",
            "_runtime": "Runtime"}


# Enum members one major lacks (weak typing's precision flags are gone in 11), the majors that have
# them, and the condition of the branch that may use them.
MEMBERS_ONLY_ON = {("BuilderFlag", m): ({"10"}, "strongly_typed") for m in ("FP16", "INT8", "FP8")}
APIS = {"10": "tensorrt-api-10.3.0.json", "11": "tensorrt-api-11.1.json"}


def _api(major: str) -> dict:
    import json

    return json.loads((ROOT / "tests" / "export" / "tensorrt_api" / APIS[major]).read_text())


@pytest.mark.parametrize("major", sorted(APIS))
def test_every_method_is_its_objects_classs_and_every_enum_member_its_enums(major):
    """``config.set_flag`` must be IBuilderConfig's, ``trt.BuilderFlag.TF32`` a BuilderFlag member, in
    each TensorRT's own bindings; a member only one major has is used only on that major's branch."""
    api = _api(major)
    wrong = []
    for source in SOURCES:
        tree = ast.parse((ROOT / source).read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = _chain(node)
            if chain[:1] == ["self"]:
                chain = chain[1:]
            if len(chain) >= 2 and chain[0] in CLASS_OF and chain[1] not in api["classes"][CLASS_OF[chain[0]]]:
                wrong.append(f"{chain[0]}.{chain[1]} ({CLASS_OF[chain[0]]}, line {node.lineno})")
            if len(chain) == 3 and chain[0] == "trt" and chain[1] in api["enums"]:
                majors, condition = MEMBERS_ONLY_ON.get((chain[1], chain[2]), ({major}, None))
                if major in majors and chain[2] not in api["enums"][chain[1]]:
                    wrong.append(f"trt.{chain[1]}.{chain[2]} (line {node.lineno})")
                if condition is not None:
                    branch = node
                    while branch is not None and not (isinstance(branch, ast.If) and condition in ast.unparse(branch.test)):
                        branch = parents.get(branch)
                    if branch is None:
                        wrong.append(f"trt.{chain[1]}.{chain[2]} outside an `if ... {condition}` branch (line {node.lineno})")
    assert not wrong, f"TensorRT {api['tag']}: {wrong}"


def test_members_only_one_major_has_are_really_so():
    for (enum, member), (majors, _) in MEMBERS_ONLY_ON.items():
        for major in APIS:
            assert (member in _api(major)["enums"][enum]) == (major in majors), (enum, member, major)
