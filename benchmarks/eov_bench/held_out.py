"""The held-out examples the benchmarks score: the val split of the full data folder where it is
present (the larger set), else the pack shipped in ``calib_data/heldout/``; never an example that
shares a file with the calibration samples."""

from __future__ import annotations

from eov_edge.evaluation.examples import ExampleSet

GATE_SEED = 2000  # the data folder's draw for backend comparisons (eov-eval's is 1000)


def benchmark_set(image_size: int, patch_size: int, per_task: int, calibration_sources) -> tuple[ExampleSet, int]:
    """(examples, how many were dropped for sharing a calibration file)."""
    from eov_edge.core.paths import data_dir, heldout_pack
    from eov_edge.evaluation.heldout import load_heldout

    root = data_dir()
    if (root / "README.md").is_file():
        from eov_edge.training.evaluate import data_folder_set

        examples = data_folder_set(root, image_size, patch_size, per_task, seed=GATE_SEED, baseline_factor=1)
    else:
        examples = load_heldout(heldout_pack(), image_size, per_task=per_task)
    return examples.without_files(calibration_sources)
