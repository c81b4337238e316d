"""The Earth-OneVision reference model (PyTorch + transformers)."""

from eov_edge.model.config import PRESETS, EarthOneVisionConfig
from eov_edge.model.modeling import (
    EarthOneVisionForConditionalGeneration,
    FeatureProjector,
    SpectralVisionEncoder,
)

__all__ = [
    "PRESETS",
    "EarthOneVisionConfig",
    "EarthOneVisionForConditionalGeneration",
    "FeatureProjector",
    "SpectralVisionEncoder",
]
