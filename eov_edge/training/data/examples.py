"""Task examples for all nine task kinds, composed from real scenes (see docs/data.md).

Real labels: HIT-UAV boxes (infrared counting, presence, grounding, detection, captions) and HRSID
ship masks (SAR, same tasks). Programmatic labels on real imagery, documented in docs/data.md:
- land cover from spectral indices of Sentinel-2 (NDWI, NDVI) for classification, multi-label
  classification and captions of multispectral, optical (RGB bands only) and co-registered SAR views;
- change: a real object chip (HIT-UAV vehicle/person, or a Sentinel-2 patch from elsewhere in the
  scene) pasted into a copy of the first view;
- video: a real vehicle chip moved across three copies of a real thermal background;
- cross-modal: a Sentinel-1 and a Sentinel-2 crop of one SSL4EO location, same place or not.

Every example is drawn from a ``random.Random``, so a seed fixes the whole validation set.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from eov_edge.core import slis
from eov_edge.core.bands import MODALITY_INDEX, get_band_set, to_canvas
from eov_edge.core.raster import View
from eov_edge.core.tasks import DIRECTIONS, TASKS
from eov_edge.evaluation.examples import Example
from eov_edge.evaluation.resize import resize
from eov_edge.training.data.sources import (
    Box,
    Scene,
    Split,
    load_hit_uav,
    load_hrsid,
    load_s1_s2_pairs,
    load_s2_scenes,
)

OBJECT_CLASSES = ("person", "car", "bicycle", "other vehicle", "ship")
LAND_COVER_CLASSES = ("water", "dense vegetation", "sparse vegetation", "bare or built-up")
PLURAL = {"person": "people", "car": "cars", "bicycle": "bicycles", "other vehicle": "other vehicles",
          "ship": "ships"}
MAX_DETECTIONS = 12
LAND_COVER_MIN_FRACTION = 0.10
# aux channels: objects (centre, cover) per class, then land cover per class
AUX_CHANNELS = 2 * len(OBJECT_CLASSES) + len(LAND_COVER_CLASSES)


def land_cover_map(scene: Scene) -> np.ndarray:
    """Per-pixel class index (H, W) of a Sentinel-2 scene from NDWI and NDVI."""
    bs = get_band_set(scene.band_set)
    names = bs.band_names
    spec = {b.name: b for b in bs.bands}

    def reflectance(band: str) -> np.ndarray:
        b = spec[band]
        return scene.values[names.index(band)].astype(np.float32) * b.scale + b.offset

    green, red, nir = reflectance("B03"), reflectance("B04"), reflectance("B08")
    ndwi = (green - nir) / np.maximum(green + nir, 1e-6)
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    classes = np.full(ndvi.shape, 3, np.int64)  # bare or built-up
    classes[ndvi > 0.25] = 2
    classes[ndvi > 0.5] = 1
    classes[ndwi > 0.05] = 0
    return classes


def _resize(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(C, h, w) -> (C, size, size); area averaging when shrinking, bilinear when enlarging."""
    return resize(array, size, "nearest" if mode == "nearest" else "area")


class ExampleFactory:
    """Draws examples of each task from the scenes of one split."""

    def __init__(self, data_root: Path, split: Split, image_size: int, patch_size: int,
                 hit_uav_limit: int | None = None, keep_source_pixels: bool = False) -> None:
        self.split = split
        # each view also keeps its crop in stored units (View.extra["source_pixels"], (C, crop, crop)):
        # what the held-out pack writes to files
        self.keep_source_pixels = keep_source_pixels
        self.size = image_size
        self.grid = image_size // patch_size
        self.train = split == "train"
        self.hit_uav = [s for s in load_hit_uav(data_root, split, hit_uav_limit)]
        self.hrsid = load_hrsid(data_root, split)
        self.s2 = load_s2_scenes(data_root, split)
        self.s2_classes = [land_cover_map(s) for s in self.s2]
        self.pairs = load_s1_s2_pairs(data_root, split)
        self.pair_classes = [land_cover_map(s2) for _, s2 in self.pairs]
        self.chips = [  # real object chips for the change and video tasks
            (scene, label, box) for scene in self.hit_uav for label, box in scene.objects
            if label in ("car", "person") and box[2] - box[0] >= 8 and box[3] - box[1] >= 8
        ]

    # -- views ---------------------------------------------------------------------------------
    def view(self, scene: Scene, x0: int, y0: int, crop: int, modality: str | None = None,
             values: np.ndarray | None = None, band_set: str | None = None) -> View:
        """Crop (crop x crop at x0, y0) of ``scene`` (or of ``values``), resampled onto the canvas."""
        values = scene.values if values is None else values
        window = values[:, y0 : y0 + crop, x0 : x0 + crop].astype(np.float32)
        resized = _resize(window, self.size, "area")
        bs = get_band_set(band_set or scene.band_set)
        canvas, present = to_canvas(resized, np.ones((self.size, self.size), bool), bs)
        extra = {"source_pixels": window} if self.keep_source_pixels else {}
        return View(canvas, np.ones((self.size, self.size), bool), present, bs.name,
                    modality or bs.modality, (scene.source,), (crop, crop), extra=extra)

    def rgb_view(self, scene: Scene, x0: int, y0: int, crop: int) -> View:
        """Only the red, green and blue bands of a Sentinel-2 crop: an 'optical' view."""
        view = self.view(scene, x0, y0, crop, modality="optical")
        keep = np.zeros(16, bool)
        from eov_edge.core.bands import SLOT_INDEX

        for slot in ("red", "green", "blue"):
            keep[SLOT_INDEX[slot]] = True
        view.canvas[~keep] = 0.0
        view.present = keep & view.present
        return view

    def boxes_in(self, objects, x0: int, y0: int, crop: int) -> list[tuple[str, Box]]:
        """Objects whose centre lies in the window, clipped, in canvas pixels."""
        scale = self.size / crop
        out = []
        for label, (a, b, c, d) in objects:
            cx, cy = (a + c) / 2, (b + d) / 2
            if x0 <= cx < x0 + crop and y0 <= cy < y0 + crop:
                box = (max(a, x0), max(b, y0), min(c, x0 + crop), min(d, y0 + crop))
                out.append((label, tuple((v - o) * scale for v, o in zip(box, (x0, y0, x0, y0)))))
        return out

    def object_aux(self, boxes: list[tuple[str, Box]]) -> np.ndarray:
        """Dense targets (grid, grid, AUX): object centre and cover per class and patch."""
        aux = np.zeros((self.grid, self.grid, AUX_CHANNELS), np.float32)
        cell = self.size / self.grid
        for label, (x1, y1, x2, y2) in boxes:
            k = OBJECT_CLASSES.index(label)
            cx, cy = min(int((x1 + x2) / 2 / cell), self.grid - 1), min(int((y1 + y2) / 2 / cell), self.grid - 1)
            aux[cy, cx, 2 * k] = 1.0
            gx1, gy1 = int(x1 // cell), int(y1 // cell)
            gx2, gy2 = min(int(np.ceil(x2 / cell)), self.grid), min(int(np.ceil(y2 / cell)), self.grid)
            aux[gy1:max(gy2, gy1 + 1), gx1:max(gx2, gx1 + 1), 2 * k + 1] = 1.0
        return aux

    def land_aux(self, classes: np.ndarray, x0: int, y0: int, crop: int) -> tuple[np.ndarray, list[float]]:
        """Dense land-cover targets (grid, grid, AUX) and the class fractions of the window."""
        window = classes[y0 : y0 + crop, x0 : x0 + crop]
        onehot = np.stack([(window == k) for k in range(len(LAND_COVER_CLASSES))]).astype(np.float32)
        per_patch = _resize(onehot, self.grid, "area")  # (4, g, g) fractions
        aux = np.zeros((self.grid, self.grid, AUX_CHANNELS), np.float32)
        aux[..., 2 * len(OBJECT_CLASSES):] = np.moveaxis(per_patch, 0, -1)
        return aux, onehot.mean(axis=(1, 2)).tolist()

    # -- windows ---------------------------------------------------------------------------------
    def window(self, rng: random.Random, scene: Scene, scale: tuple[float, float], val_scale: float,
               around_object: float = 0.0) -> tuple[int, int, int]:
        crop = int(round(self.size * (rng.uniform(*scale) if self.train else val_scale)))
        crop = max(8, min(crop, scene.width, scene.height))
        if scene.objects and rng.random() < around_object:
            _, (a, b, c, d) = rng.choice(scene.objects)
            cx, cy = (a + c) / 2 + rng.uniform(-0.4, 0.4) * crop, (b + d) / 2 + rng.uniform(-0.4, 0.4) * crop
            x0, y0 = int(cx - crop / 2), int(cy - crop / 2)
        else:
            x0, y0 = rng.randrange(0, scene.width - crop + 1), rng.randrange(0, scene.height - crop + 1)
        x_min, x_max = scene.columns or (0, scene.width)
        crop = min(crop, x_max - x_min)
        return min(max(x_min, x0), x_max - crop), min(max(0, y0), scene.height - crop), crop

    def object_scene(self, rng: random.Random) -> tuple[Scene, tuple[float, float], float]:
        """A thermal frame (3 in 4) or a SAR chip, with its crop scale range."""
        if self.hrsid and rng.random() < 0.25:
            return rng.choice(self.hrsid), (1.5, 2.5), 2.0
        return rng.choice(self.hit_uav), (1.0, 1.5), 1.25

    # -- tasks -------------------------------------------------------------------------------------
    def sample(self, task: str, rng: random.Random, modalities: tuple[str, ...] | None = None) -> Example:
        """An example of ``task``; the factory picks each task's sensors itself (``modalities`` is for
        sources that hold any, as the user's JSONL files)."""
        return getattr(self, f"_{task}")(rng)

    def tasks_for(self, modalities: tuple[str, ...] | None) -> set[str]:
        return set(TASKS)

    def _object_view(self, rng: random.Random, around: float = 0.7):
        scene, scale, val_scale = self.object_scene(rng)
        x0, y0, crop = self.window(rng, scene, scale, val_scale, around_object=around)
        view = self.view(scene, x0, y0, crop)
        boxes = self.boxes_in(scene.objects, x0, y0, crop)
        return scene, view, boxes

    def _vqa(self, rng: random.Random) -> Example:
        scene, view, boxes = self._object_view(rng, around=0.6)
        classes = ("ship",) if scene.band_set == "sar_amplitude8" else ("person", "car")
        cls = rng.choice(classes)
        count = sum(label == cls for label, _ in boxes)
        if rng.random() < 0.5:
            instruction, answer = f"How many {PLURAL[cls]} are there?", str(count)
            kind = "count"
        else:
            instruction, answer = f"Is there a {cls} in the image?", "yes" if count else "no"
            kind = "presence"
        return Example("vqa", [view], instruction, answer, {"kind": kind, "class": cls, "count": count},
                       scene.source, [self.object_aux(boxes)])

    def _grounding(self, rng: random.Random) -> Example:
        for _ in range(50):
            scene, view, boxes = self._object_view(rng, around=1.0)
            if boxes:
                break
        label, box = max(boxes, key=lambda lb: (lb[1][2] - lb[1][0]) * (lb[1][3] - lb[1][1]))
        obj = slis.SpatialObject.from_pixels("box", [box[:2], box[2:]], self.size, self.size)
        return Example("grounding", [view], f"Where is the largest {label}?", slis.serialize([obj]),
                       {"box": box, "class": label}, scene.source, [self.object_aux(boxes)])

    def _detection(self, rng: random.Random) -> Example:
        for _ in range(50):
            scene, view, boxes = self._object_view(rng, around=0.8)
            if len(boxes) <= MAX_DETECTIONS:
                break
        boxes = boxes[:MAX_DETECTIONS]
        ordered = sorted(boxes, key=lambda lb: (round(lb[1][1] / 16), lb[1][0]))
        objects = [slis.SpatialObject.from_pixels("box", [b[:2], b[2:]], self.size, self.size, label=label)
                   for label, b in ordered]
        instruction = "Detect all ships." if scene.band_set == "sar_amplitude8" else "Detect all objects."
        answer = slis.serialize(objects) if objects else "none"
        return Example("detection", [view], instruction, answer, {"objects": ordered}, scene.source,
                       [self.object_aux(boxes)])

    def _s2_window(self, rng: random.Random):
        index = rng.randrange(len(self.s2))
        scene = self.s2[index]
        x0, y0, crop = self.window(rng, scene, (0.5, 1.0), 0.75)
        aux, fractions = self.land_aux(self.s2_classes[index], x0, y0, crop)
        return scene, x0, y0, crop, aux, fractions

    def _classification(self, rng: random.Random) -> Example:
        # Class-balanced by rejection: dense vegetation covers most scenes, and a majority answer
        # must not be enough to score.
        wanted = rng.randrange(len(LAND_COVER_CLASSES))
        for _ in range(40):
            scene, x0, y0, crop, aux, fractions = self._s2_window(rng)
            if int(np.argmax(fractions)) == wanted:
                break
        rgb = rng.random() < 0.4
        view = self.rgb_view(scene, x0, y0, crop) if rgb else self.view(scene, x0, y0, crop)
        label = LAND_COVER_CLASSES[int(np.argmax(fractions))]
        return Example("classification", [view], "What kind of scene is this?", label,
                       {"label": label}, scene.source, [aux])

    def _multilabel(self, rng: random.Random) -> Example:
        if rng.random() < 0.3:  # SAR view labelled from the co-registered Sentinel-2 scene
            k = rng.randrange(len(self.pairs))
            s1, _ = self.pairs[k]
            x0, y0, crop = self.window(rng, s1, (0.35, 0.5), 0.45)
            view = self.view(s1, x0, y0, crop)
            aux, fractions = self.land_aux(self.pair_classes[k], x0, y0, crop)
            source = s1.source
        else:
            scene, x0, y0, crop, aux, fractions = self._s2_window(rng)
            view, source = self.view(scene, x0, y0, crop), scene.source
        labels = [c for c, f in zip(LAND_COVER_CLASSES, fractions) if f >= LAND_COVER_MIN_FRACTION]
        return Example("multilabel", [view], "List all land-cover classes present.", "; ".join(labels),
                       {"labels": labels}, source, [aux])

    def _caption(self, rng: random.Random) -> Example:
        if rng.random() < 0.5:
            scene, view, boxes = self._object_view(rng, around=0.5)
            counts = {c: sum(label == c for label, _ in boxes) for c in OBJECT_CLASSES}
            parts = [f"{n} {PLURAL[c] if n != 1 else c}" for c, n in counts.items() if n]
            kind = "SAR image of the sea" if scene.band_set == "sar_amplitude8" else "thermal drone image"
            caption = f"A {kind} with {' and '.join(parts) if parts else 'no objects'}."
            aux = [self.object_aux(boxes)]
        else:
            scene, x0, y0, crop, land, fractions = self._s2_window(rng)
            view = self.view(scene, x0, y0, crop)
            order = np.argsort(fractions)[::-1]
            first, second = LAND_COVER_CLASSES[order[0]], LAND_COVER_CLASSES[order[1]]
            caption = f"A multispectral image mostly covered by {first}" + (
                f", with some {second}." if fractions[order[1]] >= LAND_COVER_MIN_FRACTION else ".")
            aux = [land]
        return Example("caption", [view], "Describe the image.", caption, {"references": [caption]},
                       scene.source, aux)

    def _random_chip(self, rng: random.Random) -> tuple[str, np.ndarray]:
        """A real HIT-UAV object (label, stored values (1, h, w)) cut from its annotated box."""
        chip_scene, label, (a, b, c, d) = rng.choice(self.chips)
        return label, chip_scene.values[:, int(b) : int(d), int(a) : int(c)]

    def _paste_chip(self, rng: random.Random, values: np.ndarray, crop: int, x0: int, y0: int):
        """Paste a real HIT-UAV chip into a thermal window; returns new values and its window box."""
        label, chip = self._random_chip(rng)
        h, w = chip.shape[1:]
        px, py = rng.randrange(0, crop - w), rng.randrange(0, crop - h)
        out = values.copy()
        out[:, y0 + py : y0 + py + h, x0 + px : x0 + px + w] = chip
        return out, label, (px, py, px + w, py + h)

    def _change(self, rng: random.Random) -> Example:
        scene = rng.choice(self.hit_uav)
        x0, y0, crop = self.window(rng, scene, (1.0, 1.5), 1.25)
        before = self.view(scene, x0, y0, crop)
        changed = rng.random() < 0.5
        boxes: list[tuple[str, Box]] = []
        if changed:
            values, label, (a, b, c, d) = self._paste_chip(rng, scene.values, crop, x0, y0)
            scale = self.size / crop
            boxes = [(label, (a * scale, b * scale, c * scale, d * scale))]
            after = self.view(scene, x0, y0, crop, values=values)
        else:
            after = self.view(scene, x0, y0, crop)
        jitter = np.float32(rng.uniform(-0.05, 0.05))
        after.canvas[after.present] += jitter  # radiometric difference between acquisitions
        after.extra["canvas_offset"] = float(jitter)
        if changed:
            obj = slis.SpatialObject.from_pixels("box", [boxes[0][1][:2], boxes[0][1][2:]], self.size,
                                                 self.size, label=boxes[0][0], view=1)
            answer = "yes " + slis.serialize([obj])
        else:
            answer = "no"
        # Both views show the window's own objects too: the dense targets mark them in both, so the
        # auxiliary head is never told "no object" where one is (the pasted chip is added on view 2).
        present = self.boxes_in(scene.objects, x0, y0, crop)
        aux = [self.object_aux(present), self.object_aux(present + boxes)]
        return Example("change", [before, after], "Has anything changed between the two images?", answer,
                       {"changed": changed, "boxes": boxes}, scene.source, aux)

    def _temporal(self, rng: random.Random) -> Example:
        scene = rng.choice(self.hit_uav)
        x0, y0, crop = self.window(rng, scene, (1.0, 1.5), 1.25)
        label, chip = self._random_chip(rng)
        h, w = chip.shape[1:]
        k = rng.randrange(len(DIRECTIONS))
        angle = np.deg2rad(90 - 45 * k)  # north = up = -y
        step = rng.uniform(0.12, 0.2) * crop
        dx, dy = np.cos(angle) * step, -np.sin(angle) * step
        cx = crop / 2 - dx + rng.uniform(-0.1, 0.1) * crop
        cy = crop / 2 - dy + rng.uniform(-0.1, 0.1) * crop
        views, boxes = [], []
        scale = self.size / crop
        present = self.boxes_in(scene.objects, x0, y0, crop)  # the background frame's own objects
        for t in range(3):
            px = int(np.clip(cx + t * dx - w / 2, 0, crop - w))
            py = int(np.clip(cy + t * dy - h / 2, 0, crop - h))
            values = scene.values.copy()
            values[:, y0 + py : y0 + py + h, x0 + px : x0 + px + w] = chip
            views.append(self.view(scene, x0, y0, crop, values=values))
            boxes.append((label, (px * scale, py * scale, (px + w) * scale, (py + h) * scale)))
        if rng.random() < 0.5:
            instruction, answer, kind = f"Which direction does the {label} move?", DIRECTIONS[k], "direction"
        else:
            objs = [slis.SpatialObject.from_pixels("box", [b[:2], b[2:]], self.size, self.size, view=t)
                    for t, (_, b) in enumerate(boxes)]
            instruction, answer, kind = f"Track the {label} across the frames.", slis.serialize(objs), "track"
        return Example("temporal", views, instruction, answer,
                       {"kind": kind, "direction": DIRECTIONS[k], "boxes": boxes}, scene.source,
                       [self.object_aux(present + [bx]) for bx in boxes])

    def _cross_modal(self, rng: random.Random) -> Example:
        k = rng.randrange(len(self.pairs))
        s1, s2 = self.pairs[k]
        x_min, x_max = s1.columns or (0, s1.width)
        crop = int(round(self.size * (rng.uniform(0.35, 0.45) if self.train else 0.4)))
        crop = min(crop, x_max - x_min)

        def corner() -> tuple[int, int]:
            return rng.randrange(x_min, x_max - crop + 1), rng.randrange(0, s1.height - crop + 1)

        x0, y0 = corner()
        same = rng.random() < 0.5
        x1, y1 = x0, y0
        while not same and abs(x1 - x0) <= 0.75 * crop and abs(y1 - y0) <= 0.75 * crop:
            x1, y1 = corner()  # a window that overlaps the first by less than a quarter on an axis
        optical = self.view(s2, x1, y1, crop)
        sar = self.view(s1, x0, y0, crop)
        aux_sar, _ = self.land_aux(self.pair_classes[k], x0, y0, crop)
        aux_opt, _ = self.land_aux(self.pair_classes[k], x1, y1, crop)
        answer = "A" if same else "B"
        return Example("cross_modal", [sar, optical],
                       "Do the SAR and multispectral views show the same place? A) yes B) no", answer,
                       {"answer": answer}, s1.source, [aux_sar, aux_opt])


def modality_ids(example: Example) -> list[int]:
    return [MODALITY_INDEX[v.modality] for v in example.views]
