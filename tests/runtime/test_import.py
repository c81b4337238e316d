"""The runtime imports and works on a machine without torch and transformers (a Jetson)."""

import subprocess
import sys
import textwrap

import pytest

BLOCKED = ("torch", "transformers", "nncf", "optimum", "onnxscript", "ray")  # ray: only eov-run --ray needs it

SCRIPT = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"{{name}} is blocked: the runtime must not need it")
            return None

    sys.meta_path.insert(0, Block())

    import eov_edge.runtime as rt
    import eov_edge.runtime.pipeline, eov_edge.runtime.scene, eov_edge.runtime.cli  # the whole device side
    import eov_edge.runtime.scene_runs
    import eov_edge.core.manifest
    from eov_edge.core.calib import load_calib_samples

    sample = next(s for s in load_calib_samples() if s.modality == "video")
    views = sample.read(size=32)
    tokenizer = rt.TextTokenizer.from_file()
    spec = rt.InputSpec(image_size=32, image_tokens_per_view=4, max_context=256)
    batch = rt.build_batch([rt.Sample(views=views, instruction="Track the car.")], tokenizer, spec)
    assert batch["pixel_values"].shape == (3, 16, 32, 32), batch["pixel_values"].shape
    parsed = rt.slis.parse("<t1>car <box><loc_1><loc_2><loc_3><loc_4></box>")
    assert parsed.ok and parsed.objects[0].view == 1

    if len(sys.argv) > 1:  # the whole device path on exported artifacts: scene to GeoJSON, and the CLI
        from click.testing import CliRunner
        from eov_edge.runtime.cli import main as eov_run
        from eov_edge.runtime.pipeline import Pipeline
        from eov_edge.runtime.scene import run_scene

        pipe = Pipeline.from_artifacts(sys.argv[1])
        result = run_scene(pipe, sys.argv[2], "detection", tile=384, overlap=32)
        assert result.tiles_done == result.tiles and result.geojson()["type"] == "FeatureCollection"
        cli = CliRunner().invoke(eov_run, ["--artifacts", sys.argv[1], sys.argv[2], "--task", "caption", "--json"])
        assert cli.exit_code == 0, cli.output
        out = sys.argv[3]  # scenes into a folder, in this process: no Ray needed
        cli = CliRunner().invoke(eov_run, ["--artifacts", sys.argv[1], sys.argv[2], "--task", "caption",
                                           "--max-new-tokens", "4", "--out", out])
        assert cli.exit_code == 0, cli.output
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
    assert not heavy, heavy
    print("runtime ok")
    """
)


def test_runtime_works_with_torch_and_transformers_blocked():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runtime ok" in result.stdout


@pytest.mark.slow
def test_pipeline_scene_and_cli_run_with_torch_and_transformers_blocked(nano_artifacts, shared_data, tmp_path):
    scene = shared_data / "geotiff_samples" / "RGB.byte.tif"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(nano_artifacts), str(scene), str(tmp_path / "out")],
                            capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runtime ok" in result.stdout


# The static side (lazy imports inside functions included) is the runtime's import-linter
# contract, checked in tests/test_layers.py.
