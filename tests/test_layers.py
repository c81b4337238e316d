"""The import layers are contracts (setup.cfg ``[importlinter]``), and breaking one fails."""

from __future__ import annotations

import pytest

from tests.layers import assemble, lint_imports


@pytest.fixture()
def tree(tmp_path):
    return assemble(tmp_path)


def test_the_layers_hold(tree):
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 7 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, code, contract", [
    # the bottom layer reaching up, in a function body: a lazy import is still an edge
    ("core/raster.py", "def _up():\n    from eov_edge.runtime import pipeline\n", "Layers"),
    # the device runtime pulling in torch, lazily
    ("runtime/scene.py", "def _heavy():\n    import torch\n", "The device runtime needs no build side"),
    # the runtime reaching into the build side
    ("runtime/geo.py", "from eov_edge.export import specs\n", "The device runtime needs no build side"),
    # the shared core needing torch
    ("core/metrics.py", "import torch\n", "The shared core is torch-free"),
    # the model knowing of deployment
    ("model/config.py", "import onnxruntime\n", "Model and training know nothing of deployment"),
    # the gate reading the training code instead of an example set
    ("quantize/gate.py", "def _data():\n    from eov_edge.training.data import examples\n",
     "Quantization gates on example sets, never on the training code"),
    # held-out scoring needing torch (the gate and the device tools read it)
    ("evaluation/resize.py", "def _t():\n    import torch\n", "Held-out examples and scoring are numpy only"),
    # pipeline imports generation; generation importing pipeline back is a cycle
    ("runtime/generation.py", "def _back():\n    from eov_edge.runtime import pipeline\n", "No import cycles"),
])
def test_a_back_edge_breaks_its_contract(tree, module, code, contract):
    path = tree / "eov_edge" / module
    path.write_text(path.read_text() + "\n\n" + code)
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = result.stdout[result.stdout.find("Broken contracts"):]
    assert contract in broken, result.stdout[-3000:]
