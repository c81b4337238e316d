"""Typed configuration of the Earth-OneVision reference model, with named presets.

A transformers ``PreTrainedConfig`` (so ``save_pretrained``/``from_pretrained`` work as users
expect) holding a SigLIP-style vision config and a Qwen2 text config, plus the fields that tie them
together (canvas channels, modality count, FGVLA tap depths, token merge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, Qwen2Config, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

from eov_edge.core.bands import CANVAS_VERSION, MODALITIES, NUM_CANVAS_SLOTS
from eov_edge.core.errors import ConfigError
from eov_edge.core.prompt import IMAGE, SPECIAL_TOKENS
from eov_edge.core.slis import SLIS_VERSION

PresetName = Literal["nano", "small", "eov-2b"]
PRESETS: tuple[PresetName, ...] = ("nano", "small", "eov-2b")


def default_feature_layers(depth: int) -> list[int]:
    """FGVLA taps at 1/4, 1/2, 3/4 and the full depth (1-based layer indices, deduplicated)."""
    return sorted({max(1, math.ceil(depth * q / 4)) for q in (1, 2, 3, 4)})


VISION_STEMS = ("patch", "conv")


def conv_stem_stages(patch_size: int) -> int | None:
    """Stride-2 stages of the convolutional stem after its stride-4 one (patch 16 -> 2), or None if
    ``patch_size`` is not a power of two >= 4."""
    if patch_size < 4 or patch_size & (patch_size - 1):
        return None
    return patch_size.bit_length() - 3


@strict
class EarthOneVisionConfig(PreTrainedConfig):
    r"""Earth-OneVision: spectral-canvas ViT encoder, multi-level projector, Qwen2 decoder.

    feature_layers: 1-based depths of the vision layers whose outputs are concatenated per token
        (FGVLA multi-level features); None means 1/4, 1/2, 3/4 and the last layer.
    merge_size: side of the square of patch tokens merged into one image token (pixel-unshuffle).
    image_position_embedding: add a learned (tokens per view, decoder width) table to the projector's
        output, so every image token carries its grid position in the language space (what the
        decoder reads to emit a location token). Every preset has it; False keeps older checkpoints.
    vision_stem: how pixels become patch tokens. "patch": one Conv2d with kernel = stride = patch
        size (ViT). "conv": a 4x4 stride-4 convolution, then stride-2 3x3 convolutions (BatchNorm,
        ReLU) down to the same patch grid, then a 1x1 convolution (after Xiao et al. 2021, "Early
        convolutions help transformers see better"): a 5-15 px object is seen by overlapping small
        kernels instead of falling inside one 16-px patch's single linear map. Needs a power-of-two
        patch size of at least 4. ``from_preset``: "conv" for nano (its shipped checkpoint), "patch"
        for the others; a config.json without the field is "patch" (checkpoints before nano-v11).
    """

    model_type = "earth_onevision"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=SiglipVisionConfig),
        "text_config": SubConfigSpec(config_class=Qwen2Config),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_canvas_channels: int = NUM_CANVAS_SLOTS
    num_modalities: int = len(MODALITIES)
    feature_layers: list[int] | None = None
    merge_size: int = 2
    projector_hidden_act: str = "gelu"
    image_position_embedding: bool = False
    vision_stem: str = "patch"
    image_token_id: int = SPECIAL_TOKENS.index(IMAGE)
    initializer_range: float = 0.02
    preset: str | None = None
    canvas_version: int = CANVAS_VERSION
    slis_version: int = SLIS_VERSION
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        vision, text = self.vision_config, self.text_config
        # The decoder owns the embedding tying; the composite follows it.
        self.tie_word_embeddings = bool(text.tie_word_embeddings)
        if vision.num_channels != self.num_canvas_channels:
            raise ConfigError(
                f"vision_config.num_channels must equal num_canvas_channels={self.num_canvas_channels} "
                f"(got {vision.num_channels}): every sensor is read onto the 16-slot canvas"
            )
        if vision.image_size % vision.patch_size:
            raise ConfigError(
                f"vision_config.image_size ({vision.image_size}) must be a multiple of patch_size "
                f"({vision.patch_size})"
            )
        if self.grid_size % self.merge_size:
            raise ConfigError(
                f"the patch grid ({self.grid_size}x{self.grid_size}) must be divisible by merge_size="
                f"{self.merge_size}: change image_size or patch_size"
            )
        if self.vision_stem not in VISION_STEMS:
            raise ConfigError(f"vision_stem must be one of {VISION_STEMS}, got {self.vision_stem!r}")
        if self.vision_stem == "conv":
            stages = conv_stem_stages(vision.patch_size)
            if stages is None or vision.hidden_size % 2**stages:
                raise ConfigError(
                    f"vision_stem='conv' halves the resolution per stage down to the patch grid: patch_size "
                    f"({vision.patch_size}) must be a power of two >= 4 and the vision width "
                    f"({vision.hidden_size}) divisible by patch_size / 4; use vision_stem='patch'"
                )
        if self.feature_layers is None:
            self.feature_layers = default_feature_layers(vision.num_hidden_layers)
        layers = list(self.feature_layers)
        if not layers or layers != sorted(set(layers)) or not all(
            1 <= d <= vision.num_hidden_layers for d in layers
        ):
            raise ConfigError(
                f"feature_layers must be increasing depths in 1..{vision.num_hidden_layers}, got {layers}"
            )
        if text.vocab_size < len(SPECIAL_TOKENS):
            raise ConfigError(
                f"text_config.vocab_size ({text.vocab_size}) is smaller than the {len(SPECIAL_TOKENS)} "
                "special tokens"
            )
        if self.max_context < self.image_tokens_per_view + 16:
            raise ConfigError(
                f"text_config.max_position_embeddings ({self.max_context}) leaves no room for text "
                f"after one view's {self.image_tokens_per_view} image tokens"
            )

    @property
    def grid_size(self) -> int:
        """Patches per side of a view."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def image_tokens_per_view(self) -> int:
        """Image embeddings one view contributes to the decoder (after the token merge)."""
        return (self.grid_size // self.merge_size) ** 2

    @property
    def multi_level_dim(self) -> int:
        """Width of the encoder's per-token features: taps x vision width."""
        return len(self.feature_layers) * self.vision_config.hidden_size

    @property
    def max_context(self) -> int:
        return self.text_config.max_position_embeddings

    @classmethod
    def from_preset(cls, name: str, vocab_size: int | None = None, **overrides: Any) -> "EarthOneVisionConfig":
        """Config of preset ``name`` (nano, small, eov-2b).

        vocab_size: defaults to the shipped tokenizer's size. Not padded to a round number: padded
            rows would be tokens no tokenizer can decode, yet greedy decoding could pick them.
        overrides: top-level fields, e.g. ``feature_layers=[2, 4]``.
        """
        if name not in _PRESET_SHAPES:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        if vocab_size is None:
            from eov_edge.core.tokenizer import TextTokenizer

            vocab_size = TextTokenizer.from_file().vocab_size
        shape = _PRESET_SHAPES[name]
        vision = SiglipVisionConfig(
            hidden_size=shape.vision_width,
            intermediate_size=shape.vision_mlp,
            num_hidden_layers=shape.vision_depth,
            num_attention_heads=shape.vision_heads,
            num_channels=NUM_CANVAS_SLOTS,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            vision_use_head=False,
        )
        eos = SPECIAL_TOKENS.index("<eos>")
        text = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=shape.text_width,
            intermediate_size=shape.text_mlp,
            num_hidden_layers=shape.text_depth,
            num_attention_heads=shape.text_heads,
            num_key_value_heads=shape.text_kv_heads,
            max_position_embeddings=shape.max_context,
            rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
            tie_word_embeddings=shape.tie_embeddings,
            pad_token_id=SPECIAL_TOKENS.index("<pad>"),
            eos_token_id=eos,
            bos_token_id=None,
        )
        overrides.setdefault("image_position_embedding", True)
        overrides.setdefault("vision_stem", shape.vision_stem)
        return cls(vision_config=vision, text_config=text, preset=name, **overrides)


@dataclass(frozen=True)
class _PresetShape:
    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_depth: int
    text_heads: int
    text_kv_heads: int
    text_mlp: int
    max_context: int
    rope_theta: float
    tie_embeddings: bool
    # nano's shipped checkpoint (nano-v11) has the convolutional stem: at nano's 16-px patches it
    # finds 5-15 px thermal people and cars the patch embedding hardly sees (docs/data.md); the
    # larger presets keep the ViT patch embedding of their reference trunks.
    vision_stem: str = "patch"

_PRESET_SHAPES: dict[str, _PresetShape] = {
    # ~7M parameters: trains on 2 CPU cores; 14x14 patches -> 49 image tokens per view.
    "nano": _PresetShape(224, 16, 192, 6, 3, 768, 256, 4, 4, 2, 768, 1024, 10000.0, True, vision_stem="conv"),
    # ~80M: for benchmarks; 16x16 patches -> 64 image tokens per view.
    "small": _PresetShape(256, 16, 384, 8, 6, 1536, 768, 8, 12, 4, 2048, 2048, 10000.0, False),
    # ~2B: a SigLIP-so400m trunk (1152 x 27, patch 16 at 384 px -> 144 tokens per view) and a
    # Qwen2-1.5B-class decoder (1536 wide, GQA 12/2, SwiGLU 8960). Qwen2-1.5B has 28 layers and
    # spends 233M parameters on a 152k vocabulary; ours is ~3k tokens, so 32 layers keep the
    # decoder at ~1.5B.
    "eov-2b": _PresetShape(384, 16, 1152, 27, 16, 4304, 1536, 32, 12, 2, 8960, 4096, 1e6, True),
}
