"""eov_edge.runtime: onboard inference with numpy + onnxruntime (or TensorRT), no torch.

This package must import on a Jetson that has only the base install (numpy, onnxruntime,
tokenizers, rasterio, click). It builds on the torch-free shared modules (``eov_edge.core``)
re-exported here. Never import torch, transformers, export or quantize here or in anything imported
from here: the import-linter contracts in setup.cfg and ``tests/runtime/test_import.py`` check it.
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
