"""Torch side of input building, checkpoint loading and answering (training and PyTorch baseline).

    model, processor = load_checkpoint("eov_edge/assets/eov-nano")
    answers = processor.answer(model, [Sample(views=[view], instruction="Detect all ship.")])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from eov_edge.core.answer import Answer, answer_from_ids
from eov_edge.core.errors import CheckpointError, ConfigError
from eov_edge.core.inputs import InputSpec, Sample, build_batch
from eov_edge.core.tokenizer import TOKENIZER_FILE, TextTokenizer
from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration


class EarthOneVisionProcessor:
    """Turns :class:`Sample` lists into model tensors and generated ids back into answers."""

    def __init__(self, tokenizer: TextTokenizer, config: EarthOneVisionConfig) -> None:
        if tokenizer.vocab_size > config.text_config.vocab_size:
            raise CheckpointError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                f"{config.text_config.vocab_size}: tokenizer and checkpoint do not belong together"
            )
        self.tokenizer = tokenizer
        self.spec = InputSpec(config.image_size, config.image_tokens_per_view, config.max_context)

    def __call__(self, samples: Sequence[Sample], with_labels: bool = False, padding_side: str = "left",
                 max_new_tokens: int = 0) -> dict[str, torch.Tensor]:
        arrays = build_batch(samples, self.tokenizer, self.spec, with_labels, padding_side, max_new_tokens)
        return {name: torch.from_numpy(array) for name, array in arrays.items()}

    def decode(self, ids: Sequence[int]) -> Answer:
        """The answer in generated ``ids`` (no token probabilities: greedy ids only)."""
        return answer_from_ids(ids, None, self.tokenizer, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)

    def answer(self, model: EarthOneVisionForConditionalGeneration, samples: Sequence[Sample],
               max_new_tokens: int = 32, **generate_kwargs) -> list[Answer]:
        """Greedy answers (by default) for ``samples``."""
        batch = self(samples, max_new_tokens=max_new_tokens)
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
        return [self.decode(row) for row in generated.tolist()]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.tokenizer.save(Path(directory) / TOKENIZER_FILE)


def load_checkpoint(
    directory: str | os.PathLike, **from_pretrained_kwargs
) -> tuple[EarthOneVisionForConditionalGeneration, EarthOneVisionProcessor]:
    """Model (in eval mode) and processor from a checkpoint folder, with clear errors."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    if not config_file.is_file():
        raise CheckpointError(f"{directory}: no config.json; is this a checkpoint folder?")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None
    if model_type != EarthOneVisionConfig.model_type:
        raise CheckpointError(
            f"{directory}: a {model_type!r} checkpoint, not {EarthOneVisionConfig.model_type!r}; "
            "eov-edge only loads Earth-OneVision checkpoints"
        )
    if not any(directory.glob("*.safetensors")):
        raise CheckpointError(f"{directory}: no *.safetensors weights")
    # Weights may be stored in fp16 (the shipped checkpoint); compute in fp32 unless told otherwise.
    from_pretrained_kwargs.setdefault("dtype", torch.float32)
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" for a few MB of local safetensors is noise
    try:
        model = EarthOneVisionForConditionalGeneration.from_pretrained(directory, **from_pretrained_kwargs)
    except Exception as err:  # safetensors, torch and transformers each raise their own types
        raise CheckpointError(f"{directory}: could not load the weights ({type(err).__name__}: {err})") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    tokenizer = TextTokenizer.from_file(directory / TOKENIZER_FILE)
    return model.eval(), EarthOneVisionProcessor(tokenizer, model.config)


def save_checkpoint(
    model: EarthOneVisionForConditionalGeneration, processor: EarthOneVisionProcessor,
    directory: str | os.PathLike,
) -> None:
    """Write weights (safetensors), config and tokenizer into ``directory`` atomically."""
    import shutil
    import tempfile

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" for one local file is noise
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; checkpoints are meant to be shared
        for file in tmp.iterdir():
            os.chmod(file, 0o644)
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def load_model(checkpoint: Path | None, preset: str | None, seed: int = 0):
    """Model and processor from a checkpoint, or from a preset with random weights (seeded). Eager
    attention: the traced graphs then hold plain MatMul/Softmax, which every backend imports."""
    if checkpoint is not None:
        model, processor = load_checkpoint(checkpoint, attn_implementation="eager")
        return model, processor
    if preset is None:
        raise ConfigError("give --checkpoint DIR, or --preset NAME for random weights")
    torch.manual_seed(seed)
    config = EarthOneVisionConfig.from_preset(preset)
    model = EarthOneVisionForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    return model, EarthOneVisionProcessor(TextTokenizer.from_file(), config)
