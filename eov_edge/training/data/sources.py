"""Real rasters held in memory at native resolution, with their labels, split by a fixed rule.

Each loader returns :class:`Scene` objects: stored values (C, H, W) in the product's own units (so
8-bit frames stay 8-bit in memory), the band set that maps them to the canvas, and object boxes in
native pixels where the dataset has them. Task generators (:mod:`eov_edge.training.data.tasks`) crop,
resample and compose these into prompts and answers.

Splits (fixed, documented in docs/data.md):
- HIT-UAV: the dataset's own train / val split.
- HRSID mini: file names sorted, shuffled with seed 0, first 28 train, last 8 val.
- Sentinel-2 scenes: both Major-TOM cells split by columns (x < 700 train, x >= 748 val, a 48-px
  gap so no window straddles both); both SSL4EO L2A dates train; the BigEarthNet patches val.
- Sentinel-1 + Sentinel-2 pairs (SSL4EO, one location, two dates): columns x < 150 train,
  x >= 160 val.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from eov_edge.core.raster import band_files_in
from eov_edge.core.raster_checks import rasterio_module

Split = Literal["train", "val"]
Box = tuple[float, float, float, float]

HIT_UAV_CLASS = {0: "person", 1: "car", 2: "bicycle", 3: "other vehicle"}  # 4 DontCare dropped


@dataclass
class Scene:
    values: np.ndarray  # (C, H, W) as stored (uint8, uint16 or float32)
    band_set: str
    source: str
    objects: list[tuple[str, Box]] = field(default_factory=list)  # (label, x1 y1 x2 y2) native px
    meta: dict = field(default_factory=dict)
    columns: tuple[int, int] | None = None  # windows must lie in x0..x1 (spatial split of one scene)

    @property
    def height(self) -> int:
        return int(self.values.shape[1])

    @property
    def width(self) -> int:
        return int(self.values.shape[2])


def _read_all(paths: list[str]) -> np.ndarray:
    """Stack band files (or one multi-band file) at the finest band's grid."""
    rasterio = rasterio_module()
    from rasterio.enums import Resampling

    datasets = [rasterio.open(p) for p in paths]
    try:
        finest = max(datasets, key=lambda d: d.width * d.height)
        planes = [d.read(out_shape=(d.count, finest.height, finest.width), resampling=Resampling.bilinear)
                  for d in datasets]
    finally:
        for d in datasets:
            d.close()
    return np.concatenate(planes, axis=0)


def load_hit_uav(root: Path, split: Split, limit: int | None = None) -> list[Scene]:
    """Thermal frames (1 x 512 x 640 uint8) with person/car/bicycle/other-vehicle boxes."""
    annotations = json.loads((root / "hit_uav" / "annotations" / f"{split}.json").read_text())
    boxes: dict[int, list] = {}
    for ann in annotations["annotation"]:  # HIT-UAV's key is "annotation", not "annotations"
        if ann["category_id"] in HIT_UAV_CLASS:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append((HIT_UAV_CLASS[ann["category_id"]], (x, y, x + w, y + h)))
    images = sorted(annotations["images"], key=lambda im: im["filename"])[:limit]
    rasterio = rasterio_module()
    scenes = []
    for image in images:
        path = root / "hit_uav" / split / image["filename"]
        with rasterio.open(path) as ds:
            values = ds.read(1)[None]
        scenes.append(Scene(values, "thermal8", str(path), boxes.get(image["id"], []),
                            {"dataset": "hit_uav", "frame": image["filename"]}))
    return scenes


def _mask_boxes(mask: np.ndarray) -> list[Box]:
    """Boxes of the 8-connected components of a binary mask (touching ships merge)."""
    from rasterio import features

    out = []
    for geometry, value in features.shapes(mask.astype(np.uint8), mask=mask.astype(bool), connectivity=8):
        coords = np.asarray([pt for ring in geometry["coordinates"] for pt in ring])
        x1, y1 = coords.min(axis=0)
        x2, y2 = coords.max(axis=0)
        out.append((float(x1), float(y1), float(x2), float(y2)))
    return sorted(out)


def load_hrsid(root: Path, split: Split) -> list[Scene]:
    """SAR chips (800 x 800 8-bit amplitude) with ship boxes from the masks' components."""
    names = sorted(p.stem for p in (root / "hrsid_mini" / "images").glob("*.jpg"))
    random.Random(0).shuffle(names)
    chosen = names[:28] if split == "train" else names[28:]
    rasterio = rasterio_module()
    scenes = []
    for name in sorted(chosen):
        with rasterio.open(root / "hrsid_mini" / "images" / f"{name}.jpg") as ds:
            values = ds.read().mean(axis=0, keepdims=True).round().astype(np.uint8)  # greyscale x3
        with rasterio.open(root / "hrsid_mini" / "masks" / f"{name}.png") as ds:
            mask = ds.read().max(axis=0) > 127  # ships are marked in any of the 3 channels
        objects = [("ship", box) for box in _mask_boxes(mask)]
        scenes.append(Scene(values, "sar_amplitude8", f"hrsid_mini/{name}", objects, {"dataset": "hrsid"}))
    return scenes


def load_s2_scenes(root: Path, split: Split) -> list[Scene]:
    """Sentinel-2 L2A scenes (12 bands, uint16) for land-cover, change and optical tasks."""
    rico = root / "rico_hdl"
    entries: list[tuple[str, list[str], str, tuple[int, int] | None]] = []
    columns = (0, 700) if split == "train" else (748, 1068)
    for cell_dir, band_set in (("0U/0U_199R", "sentinel2_l2a_n0400"), ("199U/199U_1099R", "sentinel2_l2a")):
        cell = next((rico / "Major-TOM-Core" / "S2L2A" / cell_dir).iterdir())
        entries.append((f"major_tom_{cell_dir.split('/')[1]}", band_files_in(cell), band_set, columns))
    if split == "train":
        for date in sorted((rico / "SSL4EO-S12" / "s2a" / "0000200").iterdir()):
            entries.append((f"ssl4eo_s2a_{date.name[:8]}", band_files_in(date), "sentinel2_l2a", None))
    else:
        for patch in sorted((root / "bigearthnet_tiny" / "s2-tiny").iterdir()):
            entries.append((f"bigearthnet_{patch.name}", band_files_in(patch), "sentinel2_l2a", None))
    from eov_edge.core.bands import band_name_from_filename as band_of
    from eov_edge.core.bands import find_band_set

    scenes = []
    for name, files, band_set, cols in entries:
        order = find_band_set(tuple(band_of(Path(f).name) for f in files)).band_names
        by_band = {band_of(Path(f).name): f for f in files}
        values = _read_all([by_band[b] for b in order])
        scenes.append(Scene(values, band_set, name, meta={"dataset": name.split("_")[0]}, columns=cols))
    return scenes


def load_s1_s2_pairs(root: Path, split: Split) -> list[tuple[Scene, Scene]]:
    """Co-registered Sentinel-1 (dB) and Sentinel-2 L2A scenes of one SSL4EO location."""
    base = root / "rico_hdl" / "SSL4EO-S12"
    s1_dates = sorted((base / "s1" / "0000200").iterdir())
    s2_dates = sorted((base / "s2a" / "0000200").iterdir())
    columns = (0, 150) if split == "train" else (160, 264)
    from eov_edge.core.bands import BAND_SETS
    from eov_edge.core.bands import band_name_from_filename as band_of

    pairs = []
    for s1_dir, s2_dir in zip(s1_dates, s2_dates):  # June/June and Sept/Aug 2020
        s1 = Scene(_read_all(band_files_in(s1_dir)), "sentinel1_db", s1_dir.name, columns=columns)
        by_band = {band_of(Path(f).name): f for f in band_files_in(s2_dir)}
        s2 = Scene(_read_all([by_band[b] for b in BAND_SETS["sentinel2_l2a"].band_names]), "sentinel2_l2a",
                   s2_dir.name, columns=columns)
        pairs.append((s1, s2))
    return pairs
