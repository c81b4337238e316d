"""The shipped calibration samples (``calib_data/manifest.json``): listing, checking, reading."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from eov_edge.core.errors import RasterReadError
from eov_edge.core.inputs import Sample
from eov_edge.core.manifest import sha256_file
from eov_edge.core.paths import calib_dir
from eov_edge.core.raster import View, read_view
from eov_edge.core.tasks import DEFAULT_QUESTIONS

SAMPLE_MODALITIES = ("optical", "sar", "infrared", "multispectral", "temporal", "video")


@dataclass(frozen=True)
class CalibSample:
    id: str
    modality: str  # one of SAMPLE_MODALITIES (temporal and video are multi-view)
    band_set: str
    views: tuple[tuple[Path, ...], ...]  # files of each view
    dataset: str
    licence: str
    task: str | None
    labels: dict = field(default_factory=dict)

    def read(self, size: int | None = None) -> list[View]:
        """The sample's views on the canvas, resampled to ``size`` x ``size``."""
        return [read_view(list(files), band_set=self.band_set, size=size) for files in self.views]

    @property
    def question(self) -> str:
        """Its task's default question (a caption where the sample has no task)."""
        return DEFAULT_QUESTIONS[self.task or "caption"]

    def as_sample(self, size: int | None = None) -> Sample:
        """The model input: its views at ``size`` with its task's default question."""
        return Sample(views=self.read(size=size), instruction=self.question)


def calib_questions(image_size: int, single_view: bool = False) -> list[tuple[str, Sample]]:
    """(id, Sample) of every calibration sample (``single_view``: only the one-view ones), each with its
    task's default question: the inputs that export validation, quantization calibration and the
    benchmarks all answer."""
    return [(c.id, c.as_sample(image_size)) for c in load_calib_samples() if not single_view or len(c.views) == 1]


def load_calib_samples(directory: str | Path | None = None, verify: bool = False) -> list[CalibSample]:
    """Samples listed in ``directory/manifest.json``; ``verify`` checks every file's sha256."""
    directory = Path(directory) if directory is not None else calib_dir()
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise RasterReadError(
            f"{manifest_path}: calibration manifest not found; set EOV_CALIB_DIR or rebuild it with "
            "`python calib_data/build.py`"
        )
    manifest = json.loads(manifest_path.read_text())
    samples = []
    for entry in manifest["samples"]:
        if verify:
            for f in entry["files"]:
                path = directory / f["path"]
                if not path.is_file():
                    raise RasterReadError(f"{path}: listed in the calibration manifest but missing")
                digest = sha256_file(path)
                if digest != f["sha256"]:
                    raise RasterReadError(f"{path}: sha256 {digest} differs from the manifest's {f['sha256']}")
        samples.append(CalibSample(
            id=entry["id"], modality=entry["modality"], band_set=entry["band_set"],
            views=tuple(tuple(directory / p for p in view) for view in entry["views"]),
            dataset=entry["dataset"], licence=entry["licence"], task=entry.get("task"),
            labels=entry.get("labels", {}),
        ))
    if not samples:
        raise RasterReadError(f"{manifest_path}: lists no samples")
    return samples
