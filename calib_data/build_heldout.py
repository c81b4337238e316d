"""Cut the held-out pack (``calib_data/heldout/``) from the val split of the shared data folder.

    python calib_data/build_heldout.py            # reads $EOV_DATA_DIR (default ../shared/data)

The examples are the training data factory's own val-split examples (docs/data.md: the same tasks,
questions and programmatic labels the gate draws on the full data), drawn with a fixed seed, from
permissively licensed sources only (HIT-UAV CC BY 4.0, BigEarthNet CDLA-Permissive-1.0, SSL4EO-S12
CC BY 4.0; for land cover beyond one class, a EuroSAT scene (MIT) and the BigEarthNet v2 patch
(CDLA-Permissive-2.0), which no split reads; HRSID, GPL-3.0, and Major-TOM, CC BY-SA 4.0, are left
out), without any example read from a calibration sample's file or patch. Each view is written as the crop it was cut from, in the sensor's
stored units (8-bit PNG for thermal frames, GeoTIFF for Sentinel-1/-2), and each record holds its
reference answer in that file's pixels: the format a user writes by hand (docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eov_edge.core.bands import SLOT_INDEX, get_band_set  # noqa: E402
from eov_edge.core.paths import data_dir  # noqa: E402
from eov_edge.core.tasks import TASKS  # noqa: E402

OUT = HERE / "heldout"
PER_TASK = 32
SEED = 3000  # neither eov-eval's (1000) nor the data-folder gate's (2000)
IMAGE_SIZE, PATCH_SIZE = 224, 16
STORED_DN_STEP = 8  # uint16 Sentinel-2 DN are written to multiples of this  # the shipped nano's canvas; crops are written at their own size
# Sentinel-2 scenes no split of the training data reads: a water scene and BigEarthNet v2's patch
EUROSAT_WATER = "rico_hdl/EuroSAT_MS/SeaLake/SeaLake_3000.tif"
BIGEARTHNET_V2 = "rico_hdl/BigEarthNet/BigEarthNet-S2"
LICENCES = {
    "eurosat": ("MIT", "EuroSAT, Helber et al., IEEE JSTARS 2019; contains Copernicus Sentinel data"),
    "hit_uav": ("CC BY 4.0", "HIT-UAV, Suo et al., Scientific Data 2023"),
    "bigearthnet": ("CDLA-Permissive-1.0", "BigEarthNet, Sumbul et al., IGARSS 2019; contains modified "
                    "Copernicus Sentinel data 2017"),
    "bigearthnet_v2": ("CDLA-Permissive-2.0", "reBEN (BigEarthNet v2), Clasen et al., 2024; contains modified "
                       "Copernicus Sentinel data 2017"),
    "ssl4eo": ("CC BY 4.0", "SSL4EO-S12, Wang et al., 2022; contains modified Copernicus Sentinel data 2020"),
}


def dataset_of(source: str) -> str:
    if "EuroSAT" in source:
        return "eurosat"
    if "BigEarthNet-S2" in source:
        return "bigearthnet_v2"
    if "hit_uav" in source:
        return "hit_uav"
    if source.startswith("bigearthnet"):
        return "bigearthnet"
    return "ssl4eo"  # the S1/S2 pairs' sources are SSL4EO date folders


def stored(view) -> np.ndarray:
    """The view's crop in stored units, with the change task's radiometric offset applied."""
    pixels = view.extra["source_pixels"].astype(np.float64)
    offset = view.extra.get("canvas_offset")
    if offset:
        bs = get_band_set(view.band_set)
        from eov_edge.core.bands import CANVAS_SLOTS

        for c, band in enumerate(bs.bands):
            slot = CANVAS_SLOTS[SLOT_INDEX[band.slot]]
            pixels[c] += offset * slot.std / band.scale  # canvas units -> stored units
    return pixels


def write_view(view, root: Path, folder: Path, stem: str, written: dict[str, str]) -> dict:
    """One view's crop as a file under ``folder`` (inside the pack being written at ``root``);
    identical crops are written once."""
    import rasterio

    bs = get_band_set(view.band_set)
    pixels = stored(view)
    entry: dict = {"band_set": bs.name}
    if view.modality == "optical" and bs.modality != "optical":  # the RGB bands of a Sentinel-2 crop
        keep = ["B04", "B03", "B02"]
        pixels = pixels[[bs.band_names.index(b) for b in keep]]
        entry.update(bands=keep, modality="optical")
        names = keep
    else:
        names = list(bs.band_names)
    dtype = np.dtype(bs.stored_dtype or "float32")
    if dtype.kind == "f":
        # Sentinel-1 dB to 1/64 dB (a binary fraction: the low mantissa bits become zeros, which
        # deflate packs; 0.008 dB at most, far below the sensor's radiometric accuracy)
        pixels = np.round(pixels * 64) / 64
    if dtype == np.uint16:
        # Sentinel-2 DN (reflectance x 10^4) to multiples of STORED_DN_STEP: 0.0004 reflectance at most,
        # under the products' own noise and 1% of a band's canvas spread; deflate packs the cleared bits
        pixels = np.rint(pixels / STORED_DN_STEP) * STORED_DN_STEP
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        pixels = np.clip(np.rint(pixels), info.min, info.max)
    data = pixels.astype(dtype)
    count, height, width = data.shape
    with tempfile.TemporaryDirectory() as tmp:
        if dtype == np.uint8 and count == 1:
            path, profile = Path(tmp) / "v.png", {"driver": "PNG"}
        else:
            path = Path(tmp) / "v.tif"
            profile = {"driver": "GTiff", "compress": "deflate", "predictor": 3 if dtype.kind == "f" else 2,
                       "zlevel": 9}
        with rasterio.open(path, "w", width=width, height=height, count=count, dtype=data.dtype, **profile) as ds:
            ds.write(data)
            if profile["driver"] == "GTiff":
                for i, name in enumerate(names, start=1):
                    ds.set_band_description(i, name)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in written:
            target = folder / f"{stem}{path.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written[digest] = target.relative_to(root).as_posix()
    entry["file"] = written[digest]
    return entry


def box_in_file(box, crop: int) -> list[float]:
    scale = crop / IMAGE_SIZE  # canvas pixels -> the written crop's pixels
    return [round(float(v) * scale, 2) for v in box]


def reference(example, crop: int) -> dict:
    task, target = example.task, example.target
    if task in ("classification", "vqa", "cross_modal"):
        return {"answer": example.answer}
    if task == "multilabel":
        return {"labels": target["labels"]}
    if task == "caption":
        return {"captions": target["references"]}
    if task == "grounding":
        return {"box": box_in_file(target["box"], crop), "label": target["class"]}
    if task == "detection":
        return {"objects": [{"label": label, "box": box_in_file(b, crop)} for label, b in target["objects"]]}
    if task == "change":
        return {"changed": target["changed"],
                "boxes": [{"label": label, "box": box_in_file(b, crop)} for label, b in target["boxes"]]}
    if task == "temporal":
        if target["kind"] == "direction":
            return {"direction": target["direction"]}
        return {"track": [box_in_file(b, crop) for _, b in target["boxes"]], "label": target["boxes"][0][0]}
    raise ValueError(task)


def main() -> None:
    from eov_edge.training.data.examples import ExampleFactory

    data = data_dir()
    if not (data / "README.md").is_file():
        raise SystemExit(f"{data}: shared data folder not found; set EOV_DATA_DIR")
    from eov_edge.core.bands import band_name_from_filename, find_band_set
    from eov_edge.core.raster import band_files_in
    from eov_edge.training.data.examples import land_cover_map
    from eov_edge.training.data.sources import Scene, _read_all

    factory = ExampleFactory(data, "val", IMAGE_SIZE, PATCH_SIZE, keep_source_pixels=True)
    factory.hrsid = []  # GPL-3.0: not shipped
    calib_manifest = json.loads((HERE / "manifest.json").read_text())
    calib_sources = [Path(f["source"]) for sample in calib_manifest["samples"] for f in sample["files"]]
    calib = {p.name for p in calib_sources}
    calib_patches = {p.parent.name for p in calib_sources}  # a band-file view's folder: one patch
    # Major-TOM (CC BY-SA) and the calibration samples' BigEarthNet patch stay out
    keep = [i for i, s in enumerate(factory.s2) if s.source.startswith("bigearthnet")
            and s.source.removeprefix("bigearthnet_") not in calib_patches]
    # The val split's BigEarthNet patches are all dense vegetation: land cover also comes from
    # Sentinel-2 scenes no split of the training data reads (a EuroSAT sea scene: water; BigEarthNet
    # v2's patch). The SSL4EO location is not used for land cover: its whole scenes train that task.
    extra = [Scene(_read_all([str(data / EUROSAT_WATER)]), "sentinel2_l1c", str(data / EUROSAT_WATER),
                   meta={"dataset": "eurosat"})]
    for patch in sorted((data / BIGEARTHNET_V2).glob("*/*")):
        files = band_files_in(patch)
        order = find_band_set(tuple(band_name_from_filename(Path(f).name) for f in files)).band_names
        by_band = {band_name_from_filename(Path(f).name): f for f in files}
        extra.append(Scene(_read_all([by_band[b] for b in order]), "sentinel2_l2a", str(patch),
                           meta={"dataset": "bigearthnet_v2"}))
    factory.s2 = [factory.s2[i] for i in keep] + extra
    factory.s2_classes = [factory.s2_classes[i] for i in keep] + [land_cover_map(s) for s in extra]

    staging = Path(tempfile.mkdtemp(prefix=".heldout.", dir=HERE))
    final = OUT
    rng = random.Random(SEED)
    records, written, skipped = [], {}, Counter()
    for task in TASKS:
        kept = 0
        while kept < PER_TASK:
            example = factory.sample(task, rng)
            if Path(example.source).name in calib:
                skipped[task] += 1
                continue
            crop = example.views[0].extra["source_pixels"].shape[-1]
            stem = f"{task}_{kept:02d}"
            views = [write_view(v, staging, staging / "views" / task, f"{stem}_v{i}", written)
                     for i, v in enumerate(example.views)]
            licence, attribution = LICENCES[dataset_of(example.source)]
            source = example.source.split("shared/data/")[-1]
            records.append({"id": stem, "task": task, "views": views, "prompt": example.instruction,
                            **reference(example, crop), "source": source, "licence": licence})
            kept += 1
    (staging / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if (final / "README.md").is_file():  # the pack's README (sources, licences, method) is kept
        shutil.copyfile(final / "README.md", staging / "README.md")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    print(f"{len(records)} examples, {len(written)} view files, {size / 2**20:.2f} MiB -> {final}; "
          f"skipped for sharing a calibration file: {dict(skipped) or 'none'}")


if __name__ == "__main__":
    main()
