"""eov-run: single images, multi-view samples, scenes, JSON and GeoJSON output, clear errors."""

import json

import pytest
from click.testing import CliRunner

from eov_edge.runtime.cli import main

pytestmark = pytest.mark.slow


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_single_images_batch_json(nano_artifacts, calib_samples):
    images = [calib_samples[k].views[0][0] for k in ("ucmerced_airplane00", "eurosat_rgb_pasture_300")]
    result = run("--artifacts", nano_artifacts, *images, "--task", "classify", "--json", "--no-verify")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "classification" and len(report["results"]) == 2
    assert all(r["text"] for r in report["results"])
    assert report["stats"]["graphs"]["encoder"]["calls"] == 1  # both images in one batch
    assert report["stats"]["peak_rss_mb"] > 0


def test_multi_view_change_and_readable_output(nano_artifacts, calib_samples):
    sample = calib_samples["ssl4eo_s2a_0000200"]
    views = [",".join(str(p) for p in files) for files in sample.views]  # one-file-per-band views
    result = run("--artifacts", nano_artifacts, *views, "--task", "change", "--max-new-tokens", "16")
    assert result.exit_code == 0, result.output
    assert result.output.count(": ") >= 1 and " + " in result.output  # one answer for both views


def test_several_tasks_about_one_image_in_one_run(nano_artifacts, calib_samples):
    image = calib_samples["ucmerced_airplane00"].views[0][0]
    result = run("--artifacts", nano_artifacts, image, "--task", "classification,caption,detect", "--prompt",
                 "Is there an airplane?", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["question"] for r in report["results"]] == ["classification", "caption", "detection",
                                                          "Is there an airplane?"]
    assert report["stats"]["graphs"]["encoder"]["calls"] == 1
    alone = json.loads(run("--artifacts", nano_artifacts, image, "--task", "caption", "--max-new-tokens", 96,
                           "--json").stdout)["results"][0]
    assert report["results"][1]["text"] == alone["text"]  # the same budget (96: a spatial task is asked)


def test_stream_prints_the_answer(nano_artifacts, calib_samples):
    image = calib_samples["ucmerced_airplane00"].views[0][0]
    streamed = run("--artifacts", nano_artifacts, image, "--task", "caption", "--stream")
    plain = run("--artifacts", nano_artifacts, image, "--task", "caption", "--json")
    assert streamed.exit_code == 0 and plain.exit_code == 0
    assert streamed.stdout.strip() == json.loads(plain.stdout)["results"][0]["text"].strip()


def test_detection_geojson_for_a_georeferenced_image(nano_artifacts, shared_data, tmp_path):
    out = tmp_path / "det.geojson"
    image = shared_data / "geotiff_samples" / "RGB.byte.tif"
    result = run("--artifacts", nano_artifacts, image, "--task", "detect", "--geojson", out)
    assert result.exit_code == 0, result.output
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection  # RFC 7946: WGS 84
    native = tmp_path / "native.geojson"
    result = run("--artifacts", nano_artifacts, image, "--task", "detect", "--geojson", native, "--geojson-crs", "native")
    assert result.exit_code == 0, result.output
    assert json.loads(native.read_text())["crs"]["properties"]["name"].endswith("32618")


def test_scene_run_with_tiles(nano_artifacts, shared_data, tmp_path):
    out = tmp_path / "scene.geojson"
    image = shared_data / "geotiff_samples" / "RGB.byte.tif"
    result = run("--artifacts", nano_artifacts, image, "--task", "detect", "--tile", 384, "--overlap", 64,
                 "--geojson", out, "--json")
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)["scenes"]
    scene = report["summary"]
    from eov_edge.runtime.scene import plan_tiles

    assert scene["tiles_done"] == scene["tiles"] == len(plan_tiles(718, 791, 384, 64)) == 9
    collection = json.loads(out.read_text())
    assert len(collection["features"]) == scene["detections"] == len(report["detections"])
    # RFC 7946: WGS 84 longitude/latitude inside the UTM scene's footprint, no crs member
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(image) as ds:
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    assert "crs" not in collection and collection["properties"]["coordinates"] == "wgs84"
    points = [p for f in collection["features"] for p in (
        [f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Point" else f["geometry"]["coordinates"][0])]
    assert points and all(west <= x <= east and south <= y <= north for x, y in points)


@pytest.mark.parametrize("case, message", [
    ("missing_artifacts", "no manifest.json"),
    ("missing_image", "no such file"),
    ("bad_task", "unknown task"),
    ("bad_overlap", "overlap"),
    ("long_prompt", "exceed the context"),
])
def test_errors_are_one_clear_line(nano_artifacts, calib_samples, tmp_path, case, message):
    image = calib_samples["ucmerced_airplane00"].views[0][0]
    args = {
        "missing_artifacts": ["--artifacts", tmp_path, image],
        "missing_image": ["--artifacts", nano_artifacts, tmp_path / "nope.tif"],
        "bad_task": ["--artifacts", nano_artifacts, image, "--task", "segment"],
        "bad_overlap": ["--artifacts", nano_artifacts, image, "--tile", 64, "--overlap", 64],
        "long_prompt": ["--artifacts", nano_artifacts, image, "--prompt", "word " * 5000],
    }[case]
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_answers_say_which_band_filled_which_slot(nano_artifacts, calib_samples, tmp_path):
    """--json carries each view's band set, the slots its bands filled and what decided each; --bands
    names an undescribed stack's bands."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    image = calib_samples["eurosat_ms_annualcrop_1"].views[0][0]  # 13 bands, guessed by count and dtype
    [result] = json.loads(run("--artifacts", nano_artifacts, image, "--task", "classify", "--json",
                              "--no-verify").stdout)["results"]
    [inputs] = result["inputs"]
    assert inputs["band_set"] == "sentinel2_l1c" and len(inputs["slots"]) == 13
    assert {s["decided_by"] for s in inputs["slots"]} == {"band count and data type"}
    assert {"band": "B04", "slot": "red", "decided_by": "band count and data type"} in inputs["slots"]
    assert inputs["empty_slots"] == ["sar_vv", "sar_vh", "thermal_ir"]

    stack = tmp_path / "rgbn.tif"
    with rasterio.open(stack, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 10, 10)) as ds:
        ds.write(np.random.default_rng(0).integers(300, 3000, (4, 64, 64)).astype("uint16"))
    refused = run("--artifacts", nano_artifacts, stack, "--task", "classify", "--no-verify")
    assert refused.exit_code == 1 and "--bands B04,B03,B02,B08" in refused.output
    named = run("--artifacts", nano_artifacts, stack, "--task", "classify", "--bands", "B04,B03,B02,B08", "--json",
                "--no-verify")
    assert named.exit_code == 0, named.output
    [inputs] = json.loads(named.stdout)["results"][0]["inputs"]
    assert [(s["band"], s["slot"], s["decided_by"]) for s in inputs["slots"]] == [
        ("B02", "blue", "--bands"), ("B03", "green", "--bands"), ("B04", "red", "--bands"), ("B08", "nir", "--bands")]
