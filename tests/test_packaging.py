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


def test_version_is_exposed():
    assert eov_edge.__version__.count(".") == 2
