"""Byte-level BPE tokenizer trained on the project's own instruction corpus.

The shipped file ``eov_edge/assets/tokenizer.json`` is produced by::

    python -m eov_edge.core.tokenizer --out eov_edge/assets/tokenizer.json

and a test checks that re-training reproduces it byte for byte. Only ``tokenizers`` is needed, so
the device runtime loads the same file through :class:`TextTokenizer`.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from eov_edge.core import slis
from eov_edge.core.errors import CheckpointError
from eov_edge.core.paths import ASSETS_DIR
from eov_edge.core.prompt import (
    ASSISTANT,
    EOS,
    IMAGE,
    PAD,
    SPECIAL_TOKENS,
    USER,
    build_prompt,
)
from eov_edge.core.tasks import (
    CORINE_43_CLASSES,
    DIRECTIONS,
    EUROSAT_CLASSES,
    HIT_UAV_CLASSES,
    SAR_CLASSES,
    TASKS,
    UC_MERCED_CLASSES,
)

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_TOKENIZER_PATH = ASSETS_DIR / TOKENIZER_FILE
BPE_VOCAB_SIZE = 6144  # including the special tokens
CORPUS_SEED = 1234
CORPUS_SAMPLES = 6000

_CAPTION_SUBJECTS = (
    "a thermal drone view of a road with cars and pedestrians at night",
    "a SAR image of ships at sea near a harbour", "farmland with fields of different crops",
    "a dense residential area with houses and streets", "a river crossing a forest",
    "a coastline with beaches and shallow water", "an airport with runways and parked airplanes",
    "an industrial area with large buildings", "a lake surrounded by pasture",
    "bright ship targets on dark sea clutter", "a multispectral image of vegetated hills",
)


def instruction_corpus(num_samples: int = CORPUS_SAMPLES, seed: int = CORPUS_SEED) -> Iterator[str]:
    """Deterministic prompt+answer texts covering every task kind, class name and SLIS form."""
    rng = random.Random(seed)
    all_classes = HIT_UAV_CLASSES + SAR_CLASSES + EUROSAT_CLASSES + UC_MERCED_CLASSES
    modalities = ("optical", "sar", "infrared", "multispectral")

    def box() -> slis.SpatialObject:
        x1, y1 = rng.randrange(0, 990), rng.randrange(0, 990)
        return slis.SpatialObject("box", (x1, y1, rng.randrange(x1, 1000), rng.randrange(y1, 1000)))

    for i in range(num_samples):
        task = TASKS[list(TASKS)[i % len(TASKS)]]
        n_views = task.min_views if task.min_views > 1 else 1
        views = [rng.choice(modalities) for _ in range(n_views)]
        cls = rng.choice(all_classes)
        template = rng.choice(task.templates)
        if task.name == "classification":
            answer = rng.choice(EUROSAT_CLASSES + UC_MERCED_CLASSES)
        elif task.name == "multilabel":
            answer = "; ".join(rng.sample(CORINE_43_CLASSES, rng.randint(1, 4)))
        elif task.name == "caption":
            answer = rng.choice(_CAPTION_SUBJECTS).capitalize() + "."
        elif task.name == "vqa":
            answer = rng.choice(("yes", "no")) if "Is there" in template else str(rng.randint(0, 40))
        elif task.name == "grounding":
            answer = slis.serialize([box()])
        elif task.name == "detection":
            objs = [slis.SpatialObject("box", box().bins, rng.choice(HIT_UAV_CLASSES + SAR_CLASSES))
                    for _ in range(rng.randint(0, 5))]
            answer = slis.serialize(objs) if objs else "none"
        elif task.name == "change":
            answer = "no" if rng.random() < 0.4 else "yes " + slis.serialize([box() for _ in range(2)])
        elif task.name == "temporal":
            if "direction" in template:
                answer = rng.choice(DIRECTIONS)
            else:
                answer = slis.serialize(
                    [slis.SpatialObject("box", box().bins, view=v) for v in range(n_views)])
        else:
            options = " ".join(f"{letter}) {rng.choice(all_classes)}" for letter in "ABCD")
            template = template.replace("{options}", options)
            answer = rng.choice("ABCD")
        instruction = template.replace("{cls}", cls)
        yield build_prompt(instruction, views) + answer + EOS
    # Shapes other than boxes, so their tags are seen in context.
    for _ in range(num_samples // 10):
        quad = slis.SpatialObject("quad", tuple(rng.randrange(1000) for _ in range(8)), "ship")
        poly = slis.SpatialObject("poly", tuple(rng.randrange(1000) for _ in range(10)), "field")
        point = slis.SpatialObject("pt", (rng.randrange(1000), rng.randrange(1000)), "person")
        yield build_prompt("Outline the objects.", ["sar"]) + slis.serialize([quad, poly, point]) + EOS
    for name in CORINE_43_CLASSES + all_classes:
        yield name


def train_tokenizer(corpus: Iterable[str], vocab_size: int = BPE_VOCAB_SIZE):
    """Train a byte-level BPE with :data:`SPECIAL_TOKENS` at ids 0..K-1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


class TextTokenizer:
    """The project's tokenizer: text <-> ids, with the special-token ids the model needs."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        for token in SPECIAL_TOKENS:
            expected = SPECIAL_TOKENS.index(token)
            if tokenizer.token_to_id(token) != expected:
                raise CheckpointError(
                    f"tokenizer maps {token!r} to {tokenizer.token_to_id(token)}, expected {expected}: "
                    "it was not built by eov_edge.core.tokenizer; rebuild it with "
                    "`python -m eov_edge.core.tokenizer --out tokenizer.json`"
                )
        self.pad_token_id = SPECIAL_TOKENS.index(PAD)
        self.eos_token_id = SPECIAL_TOKENS.index(EOS)
        self.image_token_id = SPECIAL_TOKENS.index(IMAGE)
        self.user_token_id = SPECIAL_TOKENS.index(USER)
        self.assistant_token_id = SPECIAL_TOKENS.index(ASSISTANT)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None) -> "TextTokenizer":
        from tokenizers import Tokenizer

        path = Path(path) if path is not None else DEFAULT_TOKENIZER_PATH
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer file not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises bare Exception on a corrupt file
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({err})") from None

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; SLIS tokens are special, so keep them (the default) to parse shapes."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self._tokenizer.save(str(tmp), pretty=False)
        os.replace(tmp, path)


def build_default_tokenizer() -> TextTokenizer:
    return TextTokenizer(train_tokenizer(instruction_corpus()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_TOKENIZER_PATH)
    args = parser.parse_args(argv)
    tokenizer = build_default_tokenizer()
    tokenizer.save(args.out)
    print(f"wrote {args.out} ({tokenizer.vocab_size} tokens)")


if __name__ == "__main__":
    main()
