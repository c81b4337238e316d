"""eov_edge.runtime: onboard inference with numpy + onnxruntime (or TensorRT), no torch.

This package must import on a Jetson that has only the base install (numpy, onnxruntime,
tokenizers, rasterio, click). It builds on the torch-free shared modules re-exported here; the
runners and the Pipeline arrive with the runtime issue. Never import torch or transformers here or
in anything imported from here: ``tests/runtime/test_import.py`` blocks them and checks.
"""

from eov_edge.core import bands, prompt, slis
from eov_edge.core.inputs import InputSpec, Sample, build_batch
from eov_edge.core.raster import View, read_view
from eov_edge.core.tokenizer import TextTokenizer

__all__ = [
    "InputSpec",
    "Sample",
    "TextTokenizer",
    "View",
    "bands",
    "build_batch",
    "prompt",
    "read_view",
    "slis",
]
