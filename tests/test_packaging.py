"""Install layout: one import namespace, extras as the design says, entry points present."""

import configparser
import subprocess
import sys
from pathlib import Path

import eov_edge

ROOT = Path(__file__).resolve().parents[1]


def read_setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_top_level_folders_map_into_the_eov_edge_namespace():
    import eov_edge.export
    import eov_edge.quantize
    import eov_edge.runtime

    assert Path(eov_edge.runtime.__file__).parent == ROOT / "runtime"
    assert Path(eov_edge.export.__file__).parent == ROOT / "export"
    assert Path(eov_edge.quantize.__file__).parent == ROOT / "quantize"


def test_no_top_level_runtime_or_export_module_is_installed(tmp_path):
    code = "import importlib.util as u; print([n for n in ('runtime', 'export', 'quantize') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_base_install_is_the_runtime_and_build_side_is_extras():
    cfg = read_setup_cfg()
    base = cfg["options"]["install_requires"]
    for name in ("numpy", "onnxruntime", "tokenizers", "rasterio", "click"):
        assert name in base
    assert "torch" not in base and "transformers" not in base
    extras = cfg["options.extras_require"]
    assert "torch==2.13.0" in extras["export"]
    assert "transformers" in extras["export"] and "onnx" in extras["export"]
    assert set(extras) >= {"export", "gpu", "trt", "dev"}


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme
    assert len(readme) < 15_000, "the README is a product page: move detail to docs/"


def test_version_is_exposed():
    assert eov_edge.__version__.count(".") == 2


# Requirements no source file imports by name, and what uses them; every other requirement must be
# imported somewhere, so a dependency that nothing uses fails here.
USED_WITHOUT_IMPORT = {
    "onnxscript": "torch.onnx.export(dynamo=True) imports it",
    "safetensors": "transformers' save_pretrained / from_pretrained store the checkpoint weights with it",
    "onnxruntime-gpu": "installs the onnxruntime module with the CUDA provider",
    "import-linter": "tests/layers.py runs its lint-imports",
    "ruff": "make test runs ruff check",
    "pytest-timeout": "pytest plugin",
    "pytest-xdist": "pytest plugin (-n)",
}
MODULE_OF = {"onnxruntime-genai": "onnxruntime_genai", "llama-cpp-python": "llama_cpp", "cuda-python": "cuda",
             "tensorrt-cu12": "tensorrt",
             "tensorrt-cu13": "tensorrt"}
SOURCE_DIRS = ("eov_edge", "export", "quantize", "runtime", "benchmarks", "calib_data", "tests")


def _requirements() -> set[str]:
    import re

    cfg = read_setup_cfg()
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return {m.group(0) for line in lines if (m := re.match(r"[A-Za-z0-9_.-]+", line.split("#")[0].strip()))}


def test_every_requirement_is_imported_or_says_what_uses_it():
    import re

    sources = "\n".join(p.read_text() for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)
    unused = []
    for name in sorted(_requirements()):
        if name in USED_WITHOUT_IMPORT:
            continue
        module = MODULE_OF.get(name, name.replace("-", "_"))
        if not re.search(rf"^\s*(import|from) {re.escape(module)}\b", sources, re.MULTILINE):
            unused.append(name)
    assert not unused, f"setup.cfg requires {unused} but nothing imports them"
    assert set(USED_WITHOUT_IMPORT) <= _requirements()
