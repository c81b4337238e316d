"""A user's own held-out JSONL gates a quantization, calibrates it and is scored by eov-eval."""

import json
import shutil

import pytest
from click.testing import CliRunner

from eov_edge.core.paths import heldout_pack

pytestmark = pytest.mark.slow


@pytest.fixture()
def user_set(tmp_path):
    """Six hand-written records over three task kinds: thermal PNG frames and Sentinel-2 GeoTIFFs
    (copied from the shipped pack under the user's own names)."""
    pack = heldout_pack().parent
    folder = tmp_path / "my_heldout"
    (folder / "img").mkdir(parents=True)
    frames = sorted((pack / "views" / "detection").glob("*.png"))[:2]
    records = [json.loads(line) for line in heldout_pack().read_text().splitlines()]
    patches = [pack / r["views"][0]["file"] for r in records  # 12-band Sentinel-2 L2A views
               if r["task"] == "classification" and r["views"][0]["band_set"] == "sentinel2_l2a"
               and "bands" not in r["views"][0]][:2]
    for i, f in enumerate(frames + patches):
        shutil.copy(f, folder / "img" / f"site{i}{f.suffix}")
    records = [
        {"task": "detection", "views": ["img/site0.png"], "band_set": "thermal8",
         "objects": [{"label": "car", "box": [40, 50, 70, 80]}]},
        {"task": "detection", "views": ["img/site1.png"], "band_set": "thermal8", "objects": []},
        {"task": "vqa", "views": ["img/site0.png"], "band_set": "thermal8", "prompt": "How many cars are there?",
         "answer": 1},
        {"task": "vqa", "views": ["img/site1.png"], "band_set": "thermal8", "prompt": "Is there a car in the image?",
         "answer": "no"},
        {"task": "classification", "views": [{"file": "img/site2.tif", "band_set": "sentinel2_l2a"}],
         "answer": "dense vegetation"},
        {"task": "classification", "views": [{"file": "img/site3.tif", "band_set": "sentinel2_l2a"}],
         "answer": "water"},
    ]
    file = folder / "heldout.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records))
    return file


def test_a_hand_written_set_gates_quantization_and_is_scored_by_eov_eval(nano_artifacts, user_set, tmp_path):
    from eov_edge.cli import eval_main
    from eov_edge.quantize.build import quantize_artifacts

    out = tmp_path / "int8"
    report = quantize_artifacts(nano_artifacts, "ort-cpu-int8", out, gate_data=user_set.parent, max_drop=100.0,
                                progress=lambda m: None)
    gate = report["gate"]
    assert report["accepted"] and gate["examples"] == 6 and gate["examples_from"] == str(user_set)
    assert gate["per_task_counts"] == {"detection": 2, "vqa": 2, "classification": 2}
    assert gate["example_set"]["sha256"] and {r["task"] for r in gate["rows"]} == {"detection", "vqa", "classification"}
    assert set(gate["tasks_not_gated"]) == {"multilabel", "caption", "grounding", "change", "temporal", "cross_modal"}
    assert "not gated (no examples): multilabel" in (out / "quant_report.md").read_text()

    result = CliRunner().invoke(eval_main, ["--artifacts", str(out), "--data", str(user_set),
                                            "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert set(scored["tasks"]) == {"detection", "vqa", "classification"}
    assert scored["tasks"]["vqa"]["n"] == 2 and scored["sha256"] == gate["example_set"]["sha256"]
    assert "margin_ci95" in scored["tasks"]["classification"] and (tmp_path / "eval.md").is_file()


def test_a_bad_record_stops_quantization_and_eov_eval_before_anything_is_written(nano_artifacts, user_set, tmp_path):
    from eov_edge.cli import eval_main, export_main

    lines = user_set.read_text().splitlines()
    lines.insert(1, json.dumps({"task": "detection", "views": ["img/gone.png"], "objects": []}))
    lines.insert(3, json.dumps({"task": "segmentation", "views": ["img/site0.png"]}))
    user_set.write_text("\n".join(lines) + "\n")
    out = tmp_path / "int8"
    result = CliRunner().invoke(export_main, ["quantize", "--artifacts", str(nano_artifacts), "--recipe",
                                              "ort-cpu-int8", "--gate-data", str(user_set), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "line 2: view 0: file" in result.output and "gone.png not found" in result.output
    assert "line 4: unknown task 'segmentation'" in result.output
    assert not out.exists() and not list(tmp_path.glob(".int8*"))
    result = CliRunner().invoke(eval_main, ["--artifacts", str(nano_artifacts), "--data", str(user_set),
                                            "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 1 and "line 2:" in result.output and not (tmp_path / "eval.json").exists()


def test_calibration_reads_the_views_and_questions_of_a_held_out_file(nano_artifacts, user_set):
    from eov_edge.core import manifest as mf
    from eov_edge.quantize.calibration import calibration_set

    calibration = calibration_set(nano_artifacts, user_set)
    summary = calibration.summary()
    assert summary["samples"] == 6 and summary["modalities"] == ["infrared", "multispectral"]
    assert summary["feeds"]["encoder"] == 6 and len(calibration.feeds[mf.DECODER]) > 6
    assert {p.split("/")[-1] for p in calibration.sources} == {"site0.png", "site1.png", "site2.tif", "site3.tif"}


def test_the_gate_refuses_a_set_whose_every_file_calibration_saw(nano_artifacts, user_set, tmp_path):
    from eov_edge.quantize.build import QuantizeError, quantize_artifacts

    with pytest.raises(QuantizeError, match="shares a file with the calibration samples"):
        quantize_artifacts(nano_artifacts, "ort-cpu-int8", tmp_path / "x", calib_dir=user_set, gate_data=user_set,
                           progress=lambda m: None)
    assert not (tmp_path / "x").exists()
