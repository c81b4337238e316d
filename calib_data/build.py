"""Copy the calibration samples out of the shared data folder and write ``manifest.json``.

    python calib_data/build.py            # reads $EOV_DATA_DIR (default ../shared/data)

Only permissively licensed sources are copied (MIT, public domain, CDLA-Permissive, CC BY 4.0,
BSD-3); HRSID (GPL-3.0) and Major-TOM (CC BY-SA 4.0) stay out of the repository. Each entry records
its source path, dataset, licence, attribution, labels where the dataset has them, and the sha256
of every file, so a changed sample is caught by the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eov_edge.core.paths import data_dir  # noqa: E402

MANIFEST_VERSION = 1

LICENCES = {
    "eurosat": ("MIT", "EuroSAT, Helber et al., IEEE JSTARS 2019"),
    "ucmerced": ("public domain (USGS imagery)", "UC Merced Land Use, Yang & Newsam, ACM GIS 2010"),
    "bigearthnet": ("CDLA-Permissive-1.0", "BigEarthNet, Sumbul et al., IGARSS 2019; contains Copernicus Sentinel data 2017"),
    "hit_uav": ("CC BY 4.0", "HIT-UAV, Suo et al., Scientific Data 2023"),
    "ssl4eo": ("CC BY 4.0", "SSL4EO-S12, Wang et al., 2022; contains Copernicus Sentinel data 2020"),
    "landsat": ("public domain (Landsat); file from the rasterio test data, BSD-3-Clause", "USGS Landsat-7 ETM+, via rasterio"),
}

HIT_UAV_CLASS = {0: "person", 1: "car", 2: "bicycle", 3: "other vehicle"}  # 4 DontCare is dropped


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hit_uav_boxes(data: Path, split: str, filenames: list[str]) -> dict[str, list[dict]]:
    annotations = json.loads((data / "hit_uav" / "annotations" / f"{split}.json").read_text())
    ids = {img["filename"]: img["id"] for img in annotations["images"] if img["filename"] in filenames}
    out: dict[str, list[dict]] = {name: [] for name in filenames}
    by_id = {v: k for k, v in ids.items()}
    for ann in annotations["annotation"]:  # HIT-UAV's key is "annotation", not "annotations"
        if ann["image_id"] in by_id and ann["category_id"] in HIT_UAV_CLASS:
            x, y, w, h = ann["bbox"]
            out[by_id[ann["image_id"]]].append(
                {"label": HIT_UAV_CLASS[ann["category_id"]], "box_xyxy": [x, y, x + w, y + h]}
            )
    return out


def main() -> None:
    data = data_dir()
    if not data.is_dir():
        raise SystemExit(f"{data}: shared data folder not found; set EOV_DATA_DIR")
    entries = []

    def add(sample_id: str, modality: str, band_set: str, dataset: str, views: list[list[str]],
            labels: dict | None = None, task: str | None = None) -> None:
        """Copy each view's files to calib_data/<modality>/<id>/[view<k>/]<name>."""
        files, view_paths = [], []
        for k, sources in enumerate(views):
            paths = []
            for src in sources:
                src_path = data / src
                rel = Path(modality) / sample_id / (f"view{k}" if len(views) > 1 else "") / src_path.name
                dst = HERE / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src_path, dst)
                os.chmod(dst, 0o644)
                files.append({"path": rel.as_posix(), "sha256": sha256(dst), "source": src})
                paths.append(rel.as_posix())
            view_paths.append(paths)
        licence, attribution = LICENCES[dataset]
        entries.append({
            "id": sample_id, "modality": modality, "band_set": band_set, "views": view_paths,
            "files": files, "dataset": dataset, "licence": licence, "attribution": attribution,
            "labels": labels or {}, "task": task,
        })

    def band_files(folder: str, pattern: str) -> list[str]:
        return sorted(f"{folder}/{p.name}" for p in (data / folder).glob(pattern))

    # optical
    add("eurosat_rgb_pasture_300", "optical", "rgb8", "eurosat",
        [["rico_hdl/EuroSAT_RGB/Pasture/Pasture_300.jpg"]], {"class": "pasture"}, "classification")
    add("ucmerced_airplane00", "optical", "rgb8", "ucmerced",
        [["rico_hdl/UCMerced_LandUse/Images/airplane/airplane00.tif"]], {"class": "airplane"},
        "classification")
    # multispectral: one 13-band file, one file-per-band patch, one georeferenced Landsat scene
    add("eurosat_ms_annualcrop_1", "multispectral", "sentinel2_l1c", "eurosat",
        [["rico_hdl/EuroSAT_MS/AnnualCrop/AnnualCrop_1.tif"]], {"class": "annual crop"},
        "classification")
    s2 = "bigearthnet_tiny/s2-tiny/S2A_MSIL2A_20170617T113321_36_85"
    s2_meta = json.loads((data / s2 / "S2A_MSIL2A_20170617T113321_36_85_labels_metadata.json").read_text())
    add("bigearthnet_s2_36_85", "multispectral", "sentinel2_l2a", "bigearthnet",
        [band_files(s2, "*_B*.tif")], {"classes": s2_meta["labels"]}, "multilabel")
    add("landsat7_etm_olinda", "multispectral", "landsat7_etm8", "landsat",
        [["geotiff_samples/L7_ETMs.tif"]], {}, "caption")
    # SAR
    s1 = "bigearthnet_tiny/s1-tiny/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"
    s1_meta = json.loads((data / s1 / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39_labels_metadata.json").read_text())
    add("bigearthnet_s1_61_39", "sar", "sentinel1_db", "bigearthnet",
        [band_files(s1, "*_V?.tif")], {"classes": s1_meta["labels"]}, "multilabel")
    # infrared: two frames of different flights (HIT-UAV train and val splits) with their boxes
    for split, name in (("train", "1_130_90_0_04077.jpg"), ("val", "0_100_30_0_03306.jpg")):
        boxes = hit_uav_boxes(data, split, [name])[name]
        add(f"hit_uav_{name[:-4]}", "infrared", "thermal8", "hit_uav",
            [[f"hit_uav/{split}/{name}"]], {"objects": boxes}, "detection")
    # temporal: one Sentinel-2 L2A location (processing baseline 02.14), June and August 2020
    t = "rico_hdl/SSL4EO-S12/s2a/0000200"
    dates = sorted(p.name for p in (data / t).iterdir())
    add("ssl4eo_s2a_0000200", "temporal", "sentinel2_l2a", "ssl4eo",
        [band_files(f"{t}/{d}", "B*.tif") for d in dates], {"dates": [d[:8] for d in dates]}, "change")
    # video: three consecutive frames of one HIT-UAV flight
    frames = ["0_100_30_0_03280.jpg", "0_100_30_0_03281.jpg", "0_100_30_0_03284.jpg"]
    boxes = hit_uav_boxes(data, "train", frames)
    add("hit_uav_seq_0_100_30_03280", "video", "thermal8", "hit_uav",
        [[f"hit_uav/train/{f}"] for f in frames],
        {"frames": [{"file": f, "objects": boxes[f]} for f in frames]}, "temporal")

    manifest = {
        "format_version": MANIFEST_VERSION,
        "modalities": ["optical", "sar", "infrared", "multispectral", "temporal", "video"],
        "samples": entries,
    }
    tmp = HERE / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, HERE / "manifest.json")
    print(f"wrote {len(entries)} samples to {HERE / 'manifest.json'}")


if __name__ == "__main__":
    main()
