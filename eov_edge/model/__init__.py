"""The Earth-OneVision reference model (PyTorch + transformers)."""

from eov_edge.model.config import PRESETS, EarthOneVisionConfig
from eov_edge.model.modeling import (
    CachedDecoder,
    EarthOneVisionForConditionalGeneration,
    FeatureProjector,
    SpectralVisionEncoder,
)

__all__ = [
    "CachedDecoder",
    "PRESETS",
    "EarthOneVisionConfig",
    "EarthOneVisionForConditionalGeneration",
    "FeatureProjector",
    "SpectralVisionEncoder",
]
