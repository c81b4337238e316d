"""`make demo`: run the reference model on a real sample of every modality from calib_data/.

By default it loads the shipped nano checkpoint (``eov_edge/assets/eov-nano``); without it (or with
``--random``) it builds ``nano`` with fixed-seed random weights and says so. It shows the chain end
to end: real rasters -> canvas -> prompt -> encoder -> projector -> decoder -> SLIS parse. Later
issues grow it into export -> quantize -> verify -> run -> benchmark.
"""

from __future__ import annotations

import argparse
import time

from eov_edge.calib import load_calib_samples
from eov_edge.inputs import Sample
from eov_edge.tasks import DEFAULT_QUESTIONS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the reference model on calib_data samples.")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped nano)")
    parser.add_argument("--random", action="store_true", help="use random weights instead of a checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration
    from eov_edge.processor import EarthOneVisionProcessor, load_checkpoint
    from eov_edge.tokenizer import TextTokenizer

    from eov_edge.ship import NANO_CHECKPOINT

    torch.manual_seed(args.seed)
    if args.checkpoint is None and not args.random and (NANO_CHECKPOINT / "config.json").is_file():
        args.checkpoint = NANO_CHECKPOINT
    if args.checkpoint:
        model, processor = load_checkpoint(args.checkpoint)
        origin = f"checkpoint {args.checkpoint}"
    else:
        config = EarthOneVisionConfig.from_preset(args.preset)
        model = EarthOneVisionForConditionalGeneration(config).eval()
        processor = EarthOneVisionProcessor(TextTokenizer.from_file(), config)
        origin = f"preset {args.preset} with RANDOM weights (seed {args.seed}), not a trained checkpoint"
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {origin}, {parameters / 1e6:.1f}M parameters, image {model.config.image_size}px, "
          f"{model.config.image_tokens_per_view} image tokens per view")
    for calib in load_calib_samples():
        views = calib.read(size=model.config.image_size)
        instruction = DEFAULT_QUESTIONS[calib.task or "caption"]
        started = time.perf_counter()
        answer = processor.answer(model, [Sample(views=views, instruction=instruction)],
                                  max_new_tokens=args.max_new_tokens)[0]
        elapsed_ms = (time.perf_counter() - started) * 1e3
        print(f"\n[{calib.modality}] {calib.id}: {len(views)} view(s), {views[0].band_set}, "
              f"{int(views[0].present.sum())} canvas slots")
        print(f"  Q: {instruction}")
        print(f"  A: {answer.text!r}  ({len(answer.token_ids)} tokens, {elapsed_ms:.0f} ms)")
        print(f"  SLIS: {len(answer.parsed.objects)} shape(s), {len(answer.parsed.problems)} problem(s)")


if __name__ == "__main__":
    main()
