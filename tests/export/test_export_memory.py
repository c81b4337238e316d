"""Export memory: nothing of an exported graph stays alive after its export, and a graph's weights
are streamed to external data, not serialized in memory. The 2B export must fit a 24 GB machine
(benchmarks/export_large.py measures it); these are the guards CI can afford."""

import gc
import json
import subprocess
import sys
import textwrap

import pytest

from eov_edge.export.onnx_export import export_onnx
from eov_edge.model.processor import load_model


def test_no_exported_graph_stays_alive_after_the_export(tmp_path):
    """onnxscript's rewrite rules keep the last graph they matched, and through it every weight of
    the export module (the decoder's copy: 6 GB for eov-2b); the exporter clears them."""
    from torch.onnx._internal.exporter._core import TorchTensor

    export_onnx(tmp_path / "a", model_and_processor=load_model(None, "nano", seed=0), preset="nano", validate=False)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, TorchTensor)]
    assert not alive, f"{len(alive)} exported weights still referenced after the export, e.g. {alive[0]!r:.120}"


MEASURE = textwrap.dedent("""
    import json, resource, sys, tempfile
    from pathlib import Path
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.model.processor import load_model

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    # a first export pays the exporter's own first-use memory (modules, caches)
    export_onnx(Path(tempfile.mkdtemp()) / "w", model_and_processor=load_model(None, "nano", seed=0), preset="nano",
                validate=False)
    model, processor = load_model(None, "small", seed=0)
    decoder_bytes = sum(p.numel() * 4 for p in model.language_model.parameters())
    built = status("VmRSS")
    # the peak of the export alone: reset the high-water mark (Linux >= 4.0), so that nothing before
    # it (the first export, building the model) is counted; ru_maxrss cannot be reset
    try:
        Path("/proc/self/clear_refs").write_text("5")
        window = "export"
    except OSError:
        window = "process"
    export_onnx(Path(tempfile.mkdtemp()) / "a", model_and_processor=(model, processor), preset="small",
                validate=False, external_threshold=1_000_000, decoder=sys.argv[1])  # streamed, as eov-2b's are
    peak = status("VmHWM") if window == "export" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"decoder_bytes": decoder_bytes, "built": built, "peak": peak, "window": window,
                      "over_model": peak - built}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("decoder, bound", [("portable", 2.5), ("ort-cpu", 3.0)])
def test_export_peak_is_about_one_copy_of_the_decoder(decoder, bound):
    """The export module holds one transposed copy of the decoder's weights (fused Q/K/V and
    gate/up); beyond it, streaming external data adds little. Measured on small: 1.16x the decoder's
    weights over the model, against 4.05x when the graph is serialized in memory (the path a
    1.4 GB graph took before, 5.2 GB over the model). The bound sits between the two: CI's machine
    once measured 2.08x where this one measures 1.18-1.22x run after run, and 2.5x still fails the
    in-memory path by a wide margin. The fused CPU decoder (ort-cpu) is written after the portable
    one, its weights streamed one by one: 1.62x here, 4.20x when it was serialized in memory (which
    put eov-2b's fused export over 24 GB)."""
    done = subprocess.run([sys.executable, "-c", MEASURE, decoder], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = measured["over_model"] / measured["decoder_bytes"]
    assert ratio < bound, f"the export's peak was {ratio:.2f}x the decoder's weights over the model: {measured}"
