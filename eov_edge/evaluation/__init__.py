"""Held-out examples and their scoring, numpy only: the user's JSONL files, the pack shipped with the
project and the training data's val split all become :class:`ExampleSet` s, scored per task by one
scorer for every backend. Used by ``eov-eval``, the quantization gate, calibration and the benchmarks."""

from eov_edge.evaluation.examples import Example, ExampleSet

__all__ = ["Example", "ExampleSet"]
