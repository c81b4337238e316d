"""eov-run's questions about images as library calls: how a job is asked, and what it returns."""

import json

import numpy as np
import pytest

from eov_edge.core.errors import PromptError
from eov_edge.core.tasks import SPATIAL_ANSWER_TOKENS, TASKS, TEXT_ANSWER_TOKENS
from eov_edge.runtime.jobs import (
    ImageJob,
    answer_images,
    read_images,
    results_report,
    stream_answer,
    write_geojson,
)
from eov_edge.runtime.options import ReadOptions

pytestmark = pytest.mark.slow


@pytest.fixture()
def two_images(calib_samples):
    return tuple(str(calib_samples[k].views[0][0]) for k in ("ucmerced_airplane00", "eurosat_rgb_pasture_300"))


def test_a_job_needs_a_question_and_takes_its_tasks_budget():
    with pytest.raises(PromptError, match="give a task or a prompt"):
        ImageJob(("a.tif",))
    assert ImageJob(("a.tif",), (TASKS["detection"],)).generation.max_new_tokens == SPATIAL_ANSWER_TOKENS
    assert ImageJob(("a.tif",), prompt="Any ships?").generation.max_new_tokens == TEXT_ANSWER_TOKENS
    assert not ImageJob(("a.tif", "b.tif"), (TASKS["caption"],)).together  # each image asked on its own
    assert ImageJob(("a.tif", "b.tif"), (TASKS["change"],)).together  # a task of several views
    assert ImageJob(("a.tif",), (TASKS["caption"], TASKS["vqa"])).together  # several questions, one sample


def test_one_question_about_each_image_is_one_batch(pipeline, two_images):
    job = ImageJob(two_images, (TASKS["classification"],))
    views = read_images(pipeline, job)
    results = answer_images(pipeline, job, views)
    expected = pipeline.answer_each(views, "classification", generation=job.generation)
    assert [r.images for r in results] == list(two_images)
    assert [r.answer.token_ids for r in results] == [a.token_ids for a in expected]
    report = results_report(job, results)
    assert report["task"] == "classification" and [r["question"] for r in report["results"]] == ["classification"] * 2


def test_several_questions_are_answered_about_one_sample(pipeline, two_images):
    job = ImageJob(two_images[:1], (TASKS["caption"], TASKS["detection"]), prompt="Is there an airplane?")
    results = answer_images(pipeline, job)
    assert [r.question for r in results] == ["caption", "detection", "Is there an airplane?"]
    assert job.generation.max_new_tokens == SPATIAL_ANSWER_TOKENS  # the widest question's budget
    [alone] = pipeline.answer(read_images(pipeline, job), "detection", generation=job.generation)
    assert results[1].answer.token_ids == alone.token_ids and results[1].answer.task == "detection"


def test_streaming_takes_one_sample_and_gives_the_answer(pipeline, two_images):
    with pytest.raises(PromptError, match="one sample"):
        stream_answer(pipeline, ImageJob(two_images, (TASKS["caption"],)))
    job = ImageJob(two_images[:1], (TASKS["caption"],))
    pieces = stream_answer(pipeline, job)
    text = "".join(pieces)
    [plain] = answer_images(pipeline, job)
    assert text == plain.answer.text and len(text) > 0


def test_geojson_of_a_georeferenced_image(pipeline, shared_data, tmp_path):
    import rasterio
    from rasterio.warp import transform_bounds

    image = str(shared_data / "geotiff_samples" / "RGB.byte.tif")
    with rasterio.open(image) as raster:
        west, south, east, north = transform_bounds(raster.crs, "EPSG:4326", *raster.bounds)
    job = ImageJob((image,), (TASKS["detection"],), read=ReadOptions(nodata=0))
    views = read_images(pipeline, job)
    results = answer_images(pipeline, job, views)
    out = tmp_path / "out.geojson"
    write_geojson(out, job, results, views)
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and collection["properties"]["coordinates"] == "wgs84"
    assert collection["properties"]["task"] == "detection" and collection["properties"]["images"] == [image]
    assert len(collection["features"]) == len(results[0].answer.detections)
    for feature in collection["features"]:  # on the map, inside the raster's footprint
        lon, lat = np.asarray(feature["geometry"]["coordinates"][0]).mean(0)
        assert west - 1e-6 <= lon <= east + 1e-6 and south - 1e-6 <= lat <= north + 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]  # no temporary file left


def test_the_runtime_api_page_runs_as_written(nano_artifacts, shared_data, tmp_path, monkeypatch):
    """docs/runtime-api.md's example, run in a folder holding what it names."""
    import re
    import shutil
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "runtime-api.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", page, re.S)
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "nano").symlink_to(nano_artifacts)
    shutil.copy(shared_data / "geotiff_samples" / "RGB.byte.tif", tmp_path / "scene.tif")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "runtime-api.md", "exec"), {})
    collection = json.loads((tmp_path / "scene.geojson").read_text())
    assert collection["properties"]["coordinates"] == "wgs84" and collection["properties"]["images"] == ["scene.tif"]
