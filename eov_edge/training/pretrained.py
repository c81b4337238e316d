"""The reference model built from pretrained components: a SigLIP vision tower and a Qwen2 decoder.

    model, processor = from_components("small", vision_dir="siglip/", decoder_dir="qwen2.5-0.5b/")

Both folders are what transformers' ``save_pretrained`` writes (``config.json``, safetensors, for the
decoder also its ``tokenizer.json``), downloaded by the user on their own machine; nothing is fetched
here. The folders' configs give the shapes; the preset gives only the rest (context length, the
projector's merge, the FGVLA taps).

Decoder. The decoder's tokenizer is kept, with this project's special tokens (prompt tags, view tags,
SLIS shapes, 1000 location bins) put in front of it: they keep ids 0..K-1, which the grammar, the
exported graphs and the engines rely on, and every decoder token moves up by K. The embedding rows
(and an untied LM head's) move with their tokens, so the decoder computes exactly what it did: its
logits on a text prompt are the original's, K columns later. Rows past the tokenizer's last token
(Qwen2 pads its embedding to a round size) are dropped, as no tokenizer can decode them. The K new
rows start as transformers' ``mean_resizing`` does: the old rows' mean plus a small spread, so they
are in distribution and still distinguishable (training then codes the location rows, train.py).

Vision. SigLIP's layers and positions are copied as they are. Its patch embedding sees three
channels normalized as ``(pixel/255 - 0.5) / 0.5``; our canvas holds 16 standardized slots, an
8-bit photo landing on red, green and blue as ``(DN * 0.3/255 - mean) / std`` (core.bands, rgb8).
The RGB weights are rescaled and the bias shifted so that a photo read onto the canvas gives
SigLIP's own patch embedding (then its own features, to float rounding). Slots a photo leaves empty
hold 0 and add nothing, so the other slots' weights can start anywhere without changing that: the
greyscale sensors (thermal, SAR VV and VH) start as a grey photo, the sum of the RGB weights at a
scale that maps one standard deviation to 0.2 of display brightness; the multispectral-only slots
(coastal, red edge, NIR, water vapour, cirrus, SWIR) start at zero and learn in the imaging-physics
stage. The modality embedding starts at zero, the last tap's norm as SigLIP's post-layernorm when
the last tap is the last layer, the other taps' norms as identity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from eov_edge.core.bands import CANVAS_SLOTS, SLOT_INDEX, get_band_set
from eov_edge.core.errors import CheckpointError, ConfigError
from eov_edge.core.prompt import EOS, PAD, SPECIAL_TOKENS
from eov_edge.core.tokenizer import TOKENIZER_FILE, TextTokenizer
from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration
from eov_edge.model.processor import EarthOneVisionProcessor

VISION_MODEL_TYPES = ("siglip_vision_model", "siglip")  # a SiglipVisionModel, or a whole SigLIP
DECODER_MODEL_TYPES = ("qwen2",)  # Qwen2 and Qwen2.5 (Qwen3 adds q/k norms our exporter does not map)
RGB_SLOTS = ("red", "green", "blue")  # SigLIP's channel order
GREYSCALE_SLOTS = ("thermal_ir", "sar_vv", "sar_vh")
GREY_PER_STD = 0.2  # display brightness (0-1) one standard deviation of a greyscale slot starts as
NEW_ROW_SPREAD = 0.01  # new embedding rows: mean + this x the per-dimension std x N(0, 1)


def _read_config(directory: Path, what: str, flag: str) -> dict:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{flag} {directory}: no config.json; give a folder written by transformers' "
                              f"save_pretrained for the {what}")
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None


def _safetensors_files(directory: Path, flag: str) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{flag} {directory}: no *.safetensors weights; save the model with "
                              "save_pretrained(..., safe_serialization=True)")
    return files


def _read_tensors(directory: Path, prefixes: tuple[str, ...], flag: str) -> dict[str, torch.Tensor]:
    """Every tensor whose name starts with one of ``prefixes`` (prefix removed), in float32, from all
    the folder's safetensors shards; only those tensors are read."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(directory, flag):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    for prefix in prefixes:
                        if name.startswith(prefix):
                            out[name[len(prefix):]] = handle.get_tensor(name).float()
                            break
        except Exception as err:  # safetensors raises its own error types on a bad header
            raise CheckpointError(f"{file}: could not read the weights ({type(err).__name__}: {err})") from None
    return out


def vision_config_from(directory: Path) -> "object":
    """The SigLIP vision config of ``directory`` (a SiglipVisionModel or a whole SiglipModel)."""
    from transformers import SiglipVisionConfig

    raw = _read_config(directory, "vision tower (SigLIP)", "--init-vision")
    model_type = raw.get("model_type")
    if model_type not in VISION_MODEL_TYPES:
        raise ConfigError(f"--init-vision {directory}: a {model_type!r} model; give a SigLIP vision tower "
                          f"(model_type {' or '.join(VISION_MODEL_TYPES)})")
    fields = raw.get("vision_config", {}) if model_type == "siglip" else raw
    fields = {k: v for k, v in fields.items() if k not in ("model_type", "architectures", "transformers_version")}
    config = SiglipVisionConfig(**fields)
    if config.num_channels != 3:
        raise ConfigError(f"--init-vision {directory}: {config.num_channels} input channels; the canvas "
                          "adapter maps an RGB (3-channel) patch embedding")
    return config


def decoder_config_from(directory: Path) -> "object":
    from transformers import Qwen2Config

    raw = _read_config(directory, "decoder (Qwen2)", "--init-decoder")
    if raw.get("model_type") not in DECODER_MODEL_TYPES:
        raise ConfigError(f"--init-decoder {directory}: a {raw.get('model_type')!r} model; give a Qwen2 or "
                          "Qwen2.5 causal LM (model_type qwen2)")
    return Qwen2Config.from_pretrained(directory)


def decoder_tokenizer(directory: Path):
    """The decoder's own ``tokenizers.Tokenizer``: its tokenizer.json, or (a folder with only
    vocab.json and merges.txt) the fast tokenizer transformers builds from them."""
    from tokenizers import Tokenizer

    file = directory / TOKENIZER_FILE
    if file.is_file():
        try:
            return Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises bare Exception on a corrupt file
            raise CheckpointError(f"{file}: not a valid tokenizer.json ({err})") from None
    if (directory / "vocab.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory, local_files_only=True).backend_tokenizer
    raise CheckpointError(f"--init-decoder {directory}: no tokenizer.json (or vocab.json and merges.txt); "
                          "save the decoder's tokenizer beside it (tokenizer.save_pretrained)")


def extend_tokenizer(decoder: "object") -> tuple[TextTokenizer, int]:
    """Our special tokens at ids 0..K-1 in front of the decoder's tokenizer, every one of its tokens
    (model vocabulary and added tokens) moved up by K. Returns the tokenizer and K; checked: every
    token of the decoder keeps its place K ids later."""
    from tokenizers import Tokenizer

    spec = json.loads(decoder.to_str())
    model = spec.get("model", {})
    if model.get("type") not in ("BPE", "WordPiece", "WordLevel") or not isinstance(model.get("vocab"), dict):
        raise ConfigError(f"the decoder's tokenizer is a {model.get('type')!r} model; a BPE (Qwen2) tokenizer "
                          "is expected")
    offset = len(SPECIAL_TOKENS)
    taken = [t for t in SPECIAL_TOKENS if t in model["vocab"] or any(a["content"] == t for a in spec["added_tokens"])]
    if taken:
        raise ConfigError(f"the decoder's tokenizer already has tokens named {taken[:5]}; these names are "
                          "this model's prompt and SLIS tokens")
    model["vocab"] = {**{t: i for i, t in enumerate(SPECIAL_TOKENS)},
                      **{t: i + offset for t, i in model["vocab"].items()}}
    added = [dict(token, id=token["id"] + offset) for token in spec["added_tokens"]]
    ours = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
            for i, t in enumerate(SPECIAL_TOKENS)]
    spec["added_tokens"] = ours + added
    # A post-processor adding BOS/EOS would add the decoder's ids; TextTokenizer encodes without them.
    extended = Tokenizer.from_str(json.dumps(spec))
    original = decoder.get_vocab(with_added_tokens=True)
    moved = extended.get_vocab(with_added_tokens=True)
    wrong = [t for t, i in original.items() if moved.get(t) != i + offset]
    if wrong or len(moved) != len(original) + offset:
        raise ConfigError(f"extending the decoder's tokenizer moved {len(wrong)} token(s) off their place "
                          f"(e.g. {wrong[:3]}); its token ids are not contiguous from 0")
    return TextTokenizer(extended), offset


def config_from_components(preset: str, vision_dir: Path | None, decoder_dir: Path | None,
                           vocab_size: int) -> EarthOneVisionConfig:
    """The preset's config with the vision and/or text config taken from the pretrained folders."""
    base = EarthOneVisionConfig.from_preset(preset, vocab_size=vocab_size)
    vision, text = base.vision_config, base.text_config
    overrides: dict = {}
    if vision_dir is not None:
        vision = vision_config_from(vision_dir)
        vision.num_channels = base.num_canvas_channels
        vision.vision_use_head = False
        grid = vision.image_size // vision.patch_size
        merge = next((m for m in (2, 3) if grid % m == 0), None)
        if merge is None:
            raise ConfigError(f"--init-vision {vision_dir}: a {grid}x{grid} patch grid can be merged neither "
                              "2x2 nor 3x3 into image tokens")
        overrides.update(merge_size=merge, vision_stem="patch", feature_layers=None)
    if decoder_dir is not None:
        text = decoder_config_from(decoder_dir)
        text.vocab_size = vocab_size
        text.pad_token_id = SPECIAL_TOKENS.index(PAD)
        text.eos_token_id = SPECIAL_TOKENS.index(EOS)
        text.bos_token_id = None
        text.dtype = "float32"  # the folder may say bfloat16; training keeps float32 master weights
        # RoPE positions do not depend on it; the runtime sizes its caches from it
        text.max_position_embeddings = base.text_config.max_position_embeddings
    fields = {k: getattr(base, k) for k in ("image_position_embedding", "vision_stem", "merge_size")}
    fields.update(overrides)
    return EarthOneVisionConfig(vision_config=vision, text_config=text, preset=preset, **fields)


def _new_rows(old: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, D) rows around the mean of ``old`` (R, D), as transformers' mean_resizing."""
    noise = torch.randn(count, old.shape[1], generator=generator)
    return old.mean(0) + NEW_ROW_SPREAD * old.std(0) * noise


def load_decoder(model: EarthOneVisionForConditionalGeneration, directory: Path, offset: int,
                 decoder_tokens: int, seed: int = 0) -> None:
    """Copy the Qwen2 weights of ``directory`` into ``model.language_model``, embedding rows moved
    up by ``offset`` (the first ``decoder_tokens`` rows kept)."""
    tensors = _read_tensors(directory, ("",), "--init-decoder")
    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"--init-decoder {directory}: no model.embed_tokens.weight; is it a Qwen2ForCausalLM?")
    if embed.shape[0] < decoder_tokens:
        raise CheckpointError(f"--init-decoder {directory}: {embed.shape[0]} embedding rows for a tokenizer of "
                              f"{decoder_tokens} tokens; tokenizer and weights do not belong together")
    generator = torch.Generator().manual_seed(seed)

    def extended(rows: torch.Tensor) -> torch.Tensor:  # (R, D) -> (K + T, D)
        return torch.cat([_new_rows(rows[:decoder_tokens], offset, generator), rows[:decoder_tokens]])

    tensors["model.embed_tokens.weight"] = extended(embed)
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" in tensors:
        tensors["lm_head.weight"] = extended(tensors["lm_head.weight"])
    else:
        raise CheckpointError(f"--init-decoder {directory}: an untied LM head but no lm_head.weight")
    expected = dict(model.language_model.state_dict())
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    _copy_checked(model.language_model, expected, tensors, directory, "--init-decoder")


def _copy_checked(module: torch.nn.Module, expected: dict, tensors: dict, directory: Path, flag: str) -> None:
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{flag} {directory}: {len(missing)} weight(s) missing, e.g. {missing[:3]}")
    shapes = [k for k in expected if tuple(expected[k].shape) != tuple(tensors[k].shape)]
    if shapes:
        k = shapes[0]
        raise CheckpointError(f"{flag} {directory}: {k} is {tuple(tensors[k].shape)}, the config says "
                              f"{tuple(expected[k].shape)}; config.json and the weights do not belong together")
    with torch.no_grad():
        for name, param in module.state_dict(keep_vars=True).items():
            if name in expected:
                param.copy_(tensors[name])


def canvas_patch_embedding(rgb_weight: torch.Tensor, rgb_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's RGB patch embedding (D, 3, p, p), (D,) as one over the 16-slot canvas.

    A photo's DN lands on slot c as z_c = (DN * s - mean_c) / std_c (s = rgb8's scale), SigLIP's
    input is x_c = 2 DN / 255 - 1 = a_c z_c + b_c with a_c = 2 std_c / (255 s), b_c = 2 mean_c / (255 s)
    - 1; so W'_c = a_c W_c and bias' = bias + sum_c b_c W_c (summed over the kernel) give W x + bias.
    """
    scale = {band.slot: band.scale for band in get_band_set("rgb8").bands}
    weight = torch.zeros(rgb_weight.shape[0], len(CANVAS_SLOTS), *rgb_weight.shape[2:], dtype=torch.float64)
    bias = rgb_bias.double().clone()
    w64 = rgb_weight.double()
    for channel, name in enumerate(RGB_SLOTS):
        slot = CANVAS_SLOTS[SLOT_INDEX[name]]
        a = 2 * slot.std / (255 * scale[name])
        b = 2 * slot.mean / (255 * scale[name]) - 1
        weight[:, SLOT_INDEX[name]] = a * w64[:, channel]
        bias += b * w64[:, channel].sum(dim=(1, 2))
    grey = w64.sum(dim=1)  # (D, p, p): SigLIP's response to a grey photo per unit of x
    for name in GREYSCALE_SLOTS:
        weight[:, SLOT_INDEX[name]] = 2 * GREY_PER_STD * grey  # x = 2 * brightness - 1
    return weight.float(), bias.float()


def load_vision(model: EarthOneVisionForConditionalGeneration, directory: Path) -> None:
    """Copy SigLIP's vision weights of ``directory`` into ``model.vision_encoder`` (see the module)."""
    # Hub checkpoints name the tower's weights vision_model.*; transformers 5 saves a
    # SiglipVisionModel's without the prefix.
    tensors = _read_tensors(directory, ("vision_model.",), "--init-vision")
    if not tensors:
        tensors = {k: v for k, v in _read_tensors(directory, ("",), "--init-vision").items()
                   if k.startswith(("embeddings.", "encoder.", "post_layernorm."))}
    if not tensors:
        raise CheckpointError(f"--init-vision {directory}: no vision_model.* weights; is it a SigLIP model?")
    encoder = model.vision_encoder
    mapped = {
        "embeddings.position_embedding.weight": tensors.get("embeddings.position_embedding.weight"),
        "modality_embedding.weight": torch.zeros_like(encoder.modality_embedding.weight),
    }
    rgb_weight, rgb_bias = tensors.get("embeddings.patch_embedding.weight"), tensors.get("embeddings.patch_embedding.bias")
    if rgb_weight is None or rgb_bias is None:
        raise CheckpointError(f"--init-vision {directory}: no patch embedding weights (vision_model.embeddings.*)")
    mapped["embeddings.patch_embedding.weight"], mapped["embeddings.patch_embedding.bias"] = (
        canvas_patch_embedding(rgb_weight, rgb_bias))
    for i in range(len(encoder.layers)):
        prefix = f"encoder.layers.{i}."
        mapped.update({f"layers.{i}.{k[len(prefix):]}": v for k, v in tensors.items() if k.startswith(prefix)})
    depth = model.config.vision_config.num_hidden_layers
    for tap, layer in enumerate(model.config.feature_layers):
        last = layer == depth and "post_layernorm.weight" in tensors
        norm = encoder.tap_norms[tap]
        mapped[f"tap_norms.{tap}.weight"] = tensors["post_layernorm.weight"] if last else torch.ones_like(norm.weight)
        mapped[f"tap_norms.{tap}.bias"] = tensors["post_layernorm.bias"] if last else torch.zeros_like(norm.bias)
    mapped = {k: v for k, v in mapped.items() if v is not None}
    expected = {k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    _copy_checked(encoder, expected, mapped, directory, "--init-vision")


def from_components(preset: str, vision_dir: str | os.PathLike | None = None,
                    decoder_dir: str | os.PathLike | None = None, seed: int = 0,
                    ) -> tuple[EarthOneVisionForConditionalGeneration, EarthOneVisionProcessor]:
    """The reference model with the given pretrained parts (others random, seeded) and its processor."""
    vision_dir = Path(vision_dir) if vision_dir is not None else None
    decoder_dir = Path(decoder_dir) if decoder_dir is not None else None
    for flag, directory in (("--init-vision", vision_dir), ("--init-decoder", decoder_dir)):
        if directory is not None and not directory.is_dir():
            raise CheckpointError(f"{flag} {directory}: folder not found")
    if vision_dir is not None:
        vision_config_from(vision_dir)  # the wrong kind of folder is named before anything loads
    decoder_tokens = 0
    if decoder_dir is not None:
        decoder_config_from(decoder_dir)
        original = decoder_tokenizer(decoder_dir)
        tokenizer, offset = extend_tokenizer(original)
        decoder_tokens = original.get_vocab_size(with_added_tokens=True)
    else:
        tokenizer, offset = TextTokenizer.from_file(), 0
    config = config_from_components(preset, vision_dir, decoder_dir, tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = EarthOneVisionForConditionalGeneration(config)
    if vision_dir is not None:
        load_vision(model, vision_dir)
    if decoder_dir is not None:
        load_decoder(model, decoder_dir, offset, decoder_tokens, seed)
    return model, EarthOneVisionProcessor(tokenizer, config)
