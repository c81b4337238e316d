"""Earth-OneVision: spectral-canvas vision encoder (FGVLA taps), projector, Qwen2 decoder.

The three parts are plain modules with tensor-only inputs and outputs, so export takes each as it
is (encoder, projector, decoder graphs) with no patching:

    pixel_values (V, 16, H, W), modality_ids (V,)
      -> SpectralVisionEncoder -> features (V, N, T*Dv)        N = (H/p)*(W/p), T taps
      -> FeatureProjector      -> image_embeds (V, N/4, Dlm)  2x2 merge, LN, Linear, GELU, Linear
      -> replace the <image> placeholders of input_ids -> Qwen2ForCausalLM(inputs_embeds=...)

V counts views over the whole batch: a sample with a time series of 3 frames contributes 3 views,
and its prompt carries 3 ``<image>`` runs in order.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    Qwen2ForCausalLM,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.siglip.modeling_siglip import (
    SiglipAttention,
    SiglipEncoderLayer,
    SiglipMLP,
    SiglipVisionEmbeddings,
)

from eov_edge.core.errors import PromptError, ViewMismatchError
from eov_edge.core.slis_grammar import SlisGrammar
from eov_edge.model.config import EarthOneVisionConfig, conv_stem_stages


class ConvPatchStem(nn.Sequential):
    """Convolutional stem (``vision_stem="conv"``): (V, C, H, W) -> (V, D, H/p, W/p). A 4x4 stride-4
    convolution to width D/2**k, then k stride-2 3x3 convolutions doubling the width up to D (p =
    4 * 2**k), each convolution followed by BatchNorm and ReLU, then a 1x1 convolution. It replaces
    the patch embedding's single Conv2d(kernel = stride = p), so SiglipVisionEmbeddings (positions,
    flattening) is unchanged. Overlapping 3x3 kernels on a 4-px grid see a 5-15 px object where one
    linear map of a 16-px patch hardly does (after Xiao et al. 2021, "Early convolutions help
    transformers see better", whose stem is stride-2 3x3 convolutions from full resolution: in our
    probe that found thermal people about as well and cars better, at three times the extra
    training cost; docs/data.md)."""

    def __init__(self, in_channels: int, width: int, patch_size: int) -> None:
        k = conv_stem_stages(patch_size)
        widths = [width // 2 ** (k - i) for i in range(k + 1)]  # D/2**k ... D/2, D
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, stride=4, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        super().__init__(*layers, nn.Conv2d(width, width, 1))

    @property
    def weight(self) -> torch.Tensor:
        """SiglipVisionEmbeddings casts its input to ``patch_embedding.weight.dtype``."""
        return self[0].weight


class SpectralVisionEncoder(nn.Module):
    """ViT over the 16-slot canvas with a modality embedding and multi-level (FGVLA) outputs."""

    def __init__(self, config: EarthOneVisionConfig) -> None:
        super().__init__()
        vision = config.vision_config
        self.image_size = vision.image_size
        self.num_canvas_channels = config.num_canvas_channels
        self.num_modalities = config.num_modalities
        self.feature_layers = tuple(config.feature_layers)
        # Conv2d(16 -> D, patch, stride patch) (or ConvPatchStem) + learned positions; one stem for
        # every sensor.
        self.embeddings = SiglipVisionEmbeddings(vision)
        if config.vision_stem == "conv":
            self.embeddings.patch_embedding = ConvPatchStem(vision.num_channels, vision.hidden_size, vision.patch_size)
        self.modality_embedding = nn.Embedding(config.num_modalities, vision.hidden_size)
        # Layers past the deepest tap would never be used: don't build them.
        self.layers = nn.ModuleList(SiglipEncoderLayer(vision) for _ in range(max(self.feature_layers)))
        self.tap_norms = nn.ModuleList(
            nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps) for _ in self.feature_layers
        )

    def forward(self, pixel_values: torch.Tensor, modality_ids: torch.Tensor) -> torch.Tensor:
        """pixel_values (V, 16, H, W) f32, modality_ids (V,) i64 -> features (V, N, T*D)."""
        hidden = self.embeddings(pixel_values)  # (V, N, D)
        hidden = hidden + self.modality_embedding(modality_ids)[:, None, :]  # (V, N, D)
        taps = []
        for depth, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden, attention_mask=None)  # (V, N, D)
            if depth in self.feature_layers:
                # Each level normalized on its own, so no depth dominates the concatenation.
                taps.append(self.tap_norms[len(taps)](hidden))
        return torch.cat(taps, dim=-1)  # (V, N, T*D)


class FeatureProjector(nn.Module):
    """Merge 2x2 neighbouring tokens, then LayerNorm -> Linear -> GELU -> Linear to decoder width,
    plus (``image_position_embedding``) a learned position per merged token in the decoder's space."""

    def __init__(self, config: EarthOneVisionConfig) -> None:
        super().__init__()
        self.grid_size = config.grid_size
        self.merge_size = config.merge_size
        merged_dim = config.multi_level_dim * config.merge_size**2
        text_width = config.text_config.hidden_size
        self.norm = nn.LayerNorm(merged_dim)
        self.fc1 = nn.Linear(merged_dim, text_width)
        self.act = ACT2FN[config.projector_hidden_act]
        self.fc2 = nn.Linear(text_width, text_width)
        tokens = (config.grid_size // config.merge_size) ** 2
        self.position_embedding = (
            nn.Parameter(torch.zeros(tokens, text_width)) if config.image_position_embedding else None
        )  # (N', Dlm)

    def merge_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """features (V, g*g, C) -> (V, (g/m)^2, m*m*C), row-major over the merged grid."""
        g, m, c = self.grid_size, self.merge_size, features.shape[-1]
        x = features.reshape(-1, g // m, m, g // m, m, c)  # (V, gy, my, gx, mx, C)
        x = x.permute(0, 1, 3, 2, 4, 5)  # (V, gy, gx, my, mx, C)
        return x.reshape(-1, (g // m) ** 2, m * m * c)  # (V, N', 4C)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (V, N, C) -> image_embeds (V, N/4, Dlm)."""
        merged = self.merge_tokens(features)  # (V, N', 4C)
        embeds = self.fc2(self.act(self.fc1(self.norm(merged))))  # (V, N', Dlm)
        if self.position_embedding is not None:
            embeds = embeds + self.position_embedding  # (V, N', Dlm) + (N', Dlm)
        return embeds


class SlisLogitsProcessor(LogitsProcessor):
    """transformers' hook for :class:`eov_edge.core.slis_grammar.SlisGrammar`: one instance per
    ``generate()`` call; each call reads the tokens chosen since the previous one."""

    def __init__(self, expected_locations: bool = True) -> None:
        self.grammar: SlisGrammar | None = None
        self.seen = 0
        self.expected_locations = expected_locations

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids (B, T): the generated tokens so far (with inputs_embeds prompts, T starts at 0)
        if self.grammar is None:
            self.grammar, self.seen = SlisGrammar(input_ids.shape[0], self.expected_locations), input_ids.shape[1]
        for column in input_ids[:, self.seen :].T.tolist():
            self.grammar.advance(column)
        self.seen = input_ids.shape[1]
        return self.grammar.constrain(scores.clone())  # (B, V)


class CachedDecoder(nn.Module):
    """One decoder step over flat KV-cache tensors through transformers' own forward: the reference
    the exported decoder (``eov_edge.export.decoder_module.ExportDecoder``) is validated against.

    inputs_embeds (B, S, D), attention_mask (B, P+S) i64, position_ids (B, S) i64,
    past: 2L tensors (B, KV, P, hd) as key0, value0, key1, ... (P = 0 for prefill)
    -> logits (B, 1, V) of the last position, then 2L present tensors (B, KV, P+S, hd).
    """

    def __init__(self, language_model: Qwen2ForCausalLM) -> None:
        super().__init__()
        self.language_model = language_model
        self.num_layers = language_model.config.num_hidden_layers

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(config=self.language_model.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


class EarthOneVisionPreTrainedModel(PreTrainedModel):
    config_class = EarthOneVisionConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """SigLIP's init for the vision trunk; the decoder keeps Qwen2's own (it is a PreTrainedModel).

        Also rebuilds the non-persistent ``position_ids`` buffer, which from_pretrained leaves
        uninitialized (it is not in the checkpoint).
        """
        super()._init_weights(module)
        if isinstance(module, SiglipVisionEmbeddings):
            init.normal_(module.position_embedding.weight, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, SiglipAttention):
            for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(proj.weight)
                init.zeros_(proj.bias)
        elif isinstance(module, SiglipMLP):
            init.xavier_uniform_(module.fc1.weight)
            init.xavier_uniform_(module.fc2.weight)
            init.normal_(module.fc1.bias, std=1e-6)
            init.normal_(module.fc2.bias, std=1e-6)
        elif isinstance(module, nn.Conv2d):  # the patch embedding, or the convolutional stem's layers
            init.lecun_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):  # the convolutional stem
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, FeatureProjector) and module.position_embedding is not None:
            init.zeros_(module.position_embedding)  # training starts it from a grid code (train.py)


class EarthOneVisionForConditionalGeneration(EarthOneVisionPreTrainedModel):
    """The whole model: views + prompt ids -> next-token logits; :meth:`generate` answers."""

    _tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}

    def __init__(self, config: EarthOneVisionConfig) -> None:
        super().__init__(config)
        # PreTrainedModel resolves the attention implementation on the composite config only; the
        # setter forwards it to the sub-configs (the vision layers read it from theirs).
        config._attn_implementation = config._attn_implementation
        self.vision_encoder = SpectralVisionEncoder(config)
        self.projector = FeatureProjector(config)
        self.language_model = Qwen2ForCausalLM(config.text_config)
        if not config.tie_word_embeddings:
            self._tied_weights_keys = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def encode_images(self, pixel_values: torch.Tensor, modality_ids: torch.Tensor) -> torch.Tensor:
        """pixel_values (V, 16, H, W), modality_ids (V,) -> image_embeds (V, N', Dlm)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (self.config.num_canvas_channels, size, size):
            raise ViewMismatchError(
                f"pixel_values must be (views, {self.config.num_canvas_channels}, {size}, {size}), got "
                f"{tuple(pixel_values.shape)}; read views with size={size}"
            )
        if modality_ids.shape != (pixel_values.shape[0],):
            raise ViewMismatchError(
                f"modality_ids must have one entry per view ({pixel_values.shape[0]}), got "
                f"{tuple(modality_ids.shape)}"
            )
        features = self.vision_encoder(pixel_values, modality_ids)  # (V, N, T*Dv)
        return self.projector(features)  # (V, N', Dlm)

    def embed_inputs(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, modality_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings with image embeddings written over the ``<image>`` placeholders."""
        image_embeds = None if pixel_values is None else self.encode_images(pixel_values, modality_ids)
        return self.merge_image_embeds(input_ids, image_embeds)

    def merge_image_embeds(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """input_ids (B, S), image_embeds (V, N', Dlm) or None -> inputs_embeds (B, S, Dlm)."""
        embeds = self.get_input_embeddings()(input_ids)  # (B, S, Dlm)
        is_image = input_ids == self.config.image_token_id  # (B, S)
        placeholders = int(is_image.sum())
        if image_embeds is None:
            if placeholders:
                raise PromptError(f"input_ids hold {placeholders} image placeholders but no pixel_values")
            return embeds
        if placeholders != image_embeds.shape[0] * image_embeds.shape[1]:
            raise PromptError(
                f"input_ids hold {placeholders} image placeholders but {image_embeds.shape[0]} view(s) "
                f"x {image_embeds.shape[1]} tokens were given; build inputs with EarthOneVisionProcessor"
            )
        # Placeholders are filled in reading order: batch row, then position (views in prompt order).
        flat = image_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)  # (V*N', Dlm)
        return embeds.masked_scatter(is_image[..., None], flat)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Next-token logits (and the loss when ``labels`` are given; -100 masks a position)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (with pixel_values for the views) or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, modality_ids)
        if position_ids is None and attention_mask is not None and cache is None:
            # Left-padded rows start counting positions at their first real token, as in generate().
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        slis_grammar: bool = True,
        expected_locations: bool = True,
        **kwargs,
    ) -> torch.Tensor:
        """Answer ids (B, new_tokens) for left-padded prompts; greedy unless told otherwise.

        The views are encoded once; the decoder's own ``generate`` then runs with the KV cache.
        ``slis_grammar``: mask tokens that would break a spatial answer's grammar
        (:mod:`eov_edge.core.slis_grammar`; the device runtime does the same by default).
        ``expected_locations``: with the grammar, a location token is the mean bin of the model's
        distribution, not its argmax (see that module).
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values, modality_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if slis_grammar:
            kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []),
                                                              SlisLogitsProcessor(expected_locations)])
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id)
        kwargs.setdefault("eos_token_id", self.config.text_config.eos_token_id)
        return self.language_model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            **kwargs,
        )
