"""Calibration feeds per graph, from real samples of every modality (``calib_data/`` by default).

Samples come from ``calib_data/`` or from the user's held-out JSONL format (views and questions only).
Encoder feeds are the samples' views; projector feeds are the FP32 encoder's outputs; decoder feeds
are recorded while the FP32 runtime pipeline answers each sample with its task's question: the
prefill and every decode step, exactly the tensors the device will feed (including the masked
slots of the preallocated cache). Calibration samples must not be evaluation samples: the gate
checks that the two share no file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.calib import CalibSample, load_calib_samples
from eov_edge.core.errors import EOVError
from eov_edge.core.inputs import Sample

CALIB_MAX_NEW_TOKENS = 16  # decode steps recorded per sample (with the prefill)


class QuantizeError(EOVError, RuntimeError):
    """A quantization cannot be made, checked or accepted (bad calibration data, failed gate, ...)."""


@dataclass
class CalibrationSet:
    """Feed dicts per graph name, every one checked against the graph's manifest inputs."""

    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # the files the feeds were made from
    sample_ids: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)

    def reader(self, graph: str) -> "FeedReader":
        if not self.feeds.get(graph):
            raise QuantizeError(f"no calibration feeds for the {graph} graph; check the calibration samples")
        return FeedReader(self.feeds[graph])

    def summary(self) -> dict:
        return {"samples": len(self.sample_ids), "sample_ids": self.sample_ids,
                "modalities": sorted(set(self.modalities)),
                "feeds": {name: len(feeds) for name, feeds in self.feeds.items()}}


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds (rewindable)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only feeds[start:end] (onnxruntime's strided calibration calls this)."""
        self._iter = iter(self._feeds[start_index:end_index])

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self):
        return iter(self._feeds)


@dataclass(frozen=True)
class CalibrationInput:
    """One input the FP32 pipeline answers while its feeds are recorded."""

    id: str
    files: tuple[str, ...]  # the files its views are read from
    read: Callable[[int], Sample]  # its views at a canvas size, with its question
    modality: str | None = None  # calib_data's sample modality (temporal, video, ...); else its views'


def load_calibration_samples(directory: str | Path | None) -> list[CalibSample]:
    try:
        samples = load_calib_samples(directory, verify=True)
    except EOVError as err:
        raise QuantizeError(f"calibration data: {err}") from None
    if not samples:
        raise QuantizeError(f"{directory}: no calibration samples")
    return samples


def calibration_inputs(source: str | Path | None) -> list[CalibrationInput]:
    """Calibration inputs from a samples folder with a ``manifest.json`` (default: calib_data/), or
    from a held-out JSONL file (or a folder with one; docs/evaluation.md): its records' views and
    questions, their reference answers unread."""
    path = Path(source) if source is not None else None
    if path is not None and (path.suffix == ".jsonl" or (path.is_dir() and not (path / "manifest.json").is_file())):
        from eov_edge.evaluation.heldout import load_heldout

        try:
            examples = load_heldout(path, image_size=1).examples  # views and questions only: any size
        except EOVError as err:
            raise QuantizeError(f"calibration data: {err}") from None
        return [CalibrationInput(e.source, e.files, lambda size, e=e: Sample(views=e.read_views(size),
                                                                              instruction=e.instruction))
                for e in examples]
    return [CalibrationInput(c.id, tuple(str(p) for files in c.views for p in files), c.as_sample, c.modality)
            for c in load_calibration_samples(path)]


def collect_feeds(pipeline, inputs: list[CalibrationInput], max_new_tokens: int = CALIB_MAX_NEW_TOKENS) -> CalibrationSet:
    """Run the FP32 ``pipeline`` on every input and record each graph's feeds."""
    from eov_edge.runtime.generation import GenerationConfig

    result = CalibrationSet()
    recorded: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in pipeline.runners}
    originals = {}
    for name, runner in pipeline.runners.items():
        originals[name] = runner.infer

        def recording(feed, outputs=None, _name=name, _infer=runner.infer):
            # buffers are reused, so copied; the embedding table (read only, vocabulary-sized) is not
            recorded[_name].append({k: v if k == mf.EMBED_TABLE else np.array(v, copy=True) for k, v in feed.items()})
            return _infer(feed, outputs)

        runner.infer = recording
    try:
        for item in inputs:
            try:
                question = item.read(pipeline.spec.image_size)
                pipeline.answer_samples([question], GenerationConfig(max_new_tokens=max_new_tokens))
            except EOVError as err:
                raise QuantizeError(f"calibration sample {item.id}: {err}") from None
            result.sample_ids.append(item.id)
            result.modalities += [item.modality] if item.modality else [v.modality for v in question.views]
            result.sources += list(item.files)
    finally:
        for name, runner in pipeline.runners.items():
            runner.infer = originals[name]
    for name, feeds in recorded.items():
        if not feeds:
            raise QuantizeError(f"running the calibration samples fed nothing to the {name} graph")
        for feed in feeds:
            pipeline.runners[name].check_feed(feed)  # mismatched calibration data fails here, loudly
    result.feeds = recorded
    return result


def calibration_set(artifacts: Path, calib_dir: str | Path | None = None,
                    max_new_tokens: int = CALIB_MAX_NEW_TOKENS, verify_hashes: bool = True) -> CalibrationSet:
    """Feeds for every graph of the FP32 ``artifacts`` from the samples in ``calib_dir`` (a folder
    with a manifest.json, default calib_data/, or a held-out JSONL file). ``verify_hashes``: False
    where the caller has checked the artifacts' hashes already."""
    from eov_edge.runtime.pipeline import Pipeline

    samples = calibration_inputs(calib_dir)
    with Pipeline.from_artifacts(artifacts, verify_hashes=verify_hashes) as pipeline:
        if any(entry.precision != "fp32" for entry in pipeline.manifest.graphs.values()):
            raise QuantizeError(f"{artifacts}: quantize from the FP32 export, not from already quantized graphs")
        return collect_feeds(pipeline, samples, max_new_tokens)


__all__ = ["CalibrationInput", "CalibrationSet", "FeedReader", "QuantizeError", "calibration_inputs", "calibration_set",
           "collect_feeds"]
