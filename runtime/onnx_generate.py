"""Greedy generation over the exported graphs with numpy + ONNX Runtime (no torch).

The minimal loop the export parity check needs: encoder -> projector -> image embeddings written
over the ``<image>`` placeholders of the gathered token embeddings -> decoder prefill (past length
0) -> decode steps (one token each) until EOS or ``max_new_tokens``. The runtime issue wraps this in
runners and a Pipeline; the arithmetic here is the reference for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eov_edge import manifest as mf
from eov_edge.tokenizer import TextTokenizer


class OnnxGraphs:
    """Sessions for the encoder, projector and decoder of one artifacts folder."""

    def __init__(self, directory: str | os.PathLike, providers: list[str] | None = None,
                 threads: int | None = None, verify_hashes: bool = True) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = mf.load_manifest(self.directory, verify_hashes=verify_hashes)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {
            name: ort.InferenceSession(str(self.directory / entry.file), options, providers=providers)
            for name, entry in self.manifest.graphs.items()
        }
        self.embed_table = np.load(self.directory / self.manifest.embedding["file"])  # (V, D)
        self.tokenizer = TextTokenizer.from_file(self.directory / self.manifest.tokenizer["file"])

    def image_embeds(self, pixel_values: np.ndarray, modality_ids: np.ndarray) -> np.ndarray:
        """(V, 16, H, W), (V,) -> (V, N', D)."""
        (features,) = self.sessions[mf.ENCODER].run(
            None, {mf.PIXEL_VALUES: pixel_values, mf.MODALITY_IDS: modality_ids})
        (embeds,) = self.sessions[mf.PROJECTOR].run(None, {mf.FEATURES: features})
        return embeds

    def prompt_embeds(self, input_ids: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        """Token embeddings (B, S, D) with image embeddings over the placeholders, in reading order."""
        embeds = self.embed_table[input_ids]  # (B, S, D) — a copy
        is_image = input_ids == self.manifest.special_tokens["image"]
        embeds[is_image] = image_embeds.reshape(-1, embeds.shape[-1])
        return embeds

    def decoder_step(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                     past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {mf.INPUTS_EMBEDS: inputs_embeds, mf.ATTENTION_MASK: attention_mask, mf.POSITION_IDS: position_ids}
        feed.update(zip(mf.past_names(self.manifest.num_layers), past))
        logits, *present = self.sessions[mf.DECODER].run(None, feed)
        return logits, present

    def greedy(self, batch: dict[str, np.ndarray], max_new_tokens: int) -> np.ndarray:
        """Greedy token ids (B, <= max_new_tokens); finished rows are padded like generate() pads."""
        m = self.manifest
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"].astype(np.int64)
        embeds = self.prompt_embeds(input_ids, self.image_embeds(batch["pixel_values"], batch["modality_ids"]))
        batch_size = input_ids.shape[0]
        past = [np.zeros((batch_size, m.num_kv_heads, 0, m.head_dim), np.float32) for _ in range(2 * m.num_layers)]
        positions = np.clip(attention_mask.cumsum(-1) - 1, 0, None)  # left padding: count real tokens
        eos, pad = m.special_tokens["eos"], m.special_tokens["pad"]
        finished = np.zeros(batch_size, bool)
        out = []
        for _ in range(max_new_tokens):
            logits, past = self.decoder_step(embeds, attention_mask, positions, past)
            next_ids = logits[:, -1].argmax(-1)
            next_ids = np.where(finished, pad, next_ids)
            out.append(next_ids)
            finished |= next_ids == eos
            if finished.all():
                break
            embeds = self.embed_table[next_ids][:, None, :]
            positions = positions[:, -1:] + 1
            attention_mask = np.concatenate([attention_mask, np.ones((batch_size, 1), np.int64)], axis=1)
        return np.stack(out, axis=1)
