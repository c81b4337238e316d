"""Pipeline: artifact checks, input errors, streaming, batching, multi-view answers."""

import json
import shutil

import numpy as np
import pytest

from eov_edge.core import manifest as mf
from eov_edge.core.errors import (
    BandMismatchError,
    NoValidPixelsError,
    PromptError,
    RasterReadError,
    ViewMismatchError,
)
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.pipeline import Pipeline, resolve_task

pytestmark = pytest.mark.slow


def write_tif(path, data, dtype="uint8", nodata=None, crs="EPSG:32633", transform=None):
    import rasterio
    from rasterio.transform import from_origin

    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                       nodata=nodata, crs=crs, transform=transform or from_origin(500000, 4000000, 10, 10)) as ds:
        ds.write(data.astype(dtype))
    return path


@pytest.fixture()
def artifacts_copy(nano_artifacts, tmp_path):
    return shutil.copytree(nano_artifacts, tmp_path / "copy")


def test_artifacts_from_before_a_band_set_was_added_still_load(artifacts_copy):
    """A newer runtime knows more band sets (they fill the same canvas slots); every band set the
    artifacts know must read the same here."""
    manifest_path = artifacts_copy / mf.MANIFEST_FILE
    data = json.loads(manifest_path.read_text())
    del data["band_table"]["band_sets"]["thermal_kelvin"]
    for spec in data["band_table"]["band_sets"].values():
        del spec["physical_unit"]  # a field this runtime added
    manifest_path.write_text(json.dumps(data))
    Pipeline.from_artifacts(artifacts_copy, verify_hashes=False).close()
    data["band_table"]["band_sets"]["rgb8"]["bands"][0]["scale"] *= 2
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(mf.ManifestError, match="band table"):
        Pipeline.from_artifacts(artifacts_copy, verify_hashes=False)


def test_changed_missing_or_foreign_artifacts_are_refused(artifacts_copy):
    manifest_path = artifacts_copy / mf.MANIFEST_FILE
    original = manifest_path.read_text()
    data = json.loads(original)
    data["band_table"]["slots"][0]["mean"] += 1.0
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(mf.ManifestError, match="band table"):
        Pipeline.from_artifacts(artifacts_copy)
    for older_or_newer in (mf.MANIFEST_FORMAT_VERSION - 1, mf.MANIFEST_FORMAT_VERSION + 1):
        data = json.loads(original)
        data["format_version"] = older_or_newer
        manifest_path.write_text(json.dumps(data))
        with pytest.raises(mf.ManifestError, match=f"manifest format {older_or_newer}, .*re-export"):
            Pipeline.from_artifacts(artifacts_copy)
    manifest_path.write_text(original)
    decoder = artifacts_copy / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:-10])
    with pytest.raises(mf.ManifestError, match="sha256"):
        Pipeline.from_artifacts(artifacts_copy)
    (artifacts_copy / "projector.onnx").unlink()
    with pytest.raises(mf.ManifestError, match="missing"):
        Pipeline.from_artifacts(artifacts_copy, verify_hashes=False)


def test_bad_rasters_get_clear_errors(pipeline, tmp_path):
    good = write_tif(tmp_path / "good.tif", np.full((3, 64, 64), 90))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(RasterReadError, match="truncated"):
        pipeline.read(truncated)
    five_bands = write_tif(tmp_path / "five.tif", np.ones((5, 64, 64)), dtype="uint16")
    with pytest.raises(BandMismatchError, match="match no known band set"):
        pipeline.read(five_bands)
    with pytest.raises(BandMismatchError, match="needs 3"):
        pipeline.read(five_bands, band_set="rgb8")
    empty = write_tif(tmp_path / "empty.tif", np.zeros((3, 64, 64)), nodata=0)
    with pytest.raises(NoValidPixelsError, match="nodata"):
        pipeline.read(empty)
    nan = write_tif(tmp_path / "nan.tif", np.full((3, 64, 64), np.nan), dtype="float32")
    with pytest.raises(NoValidPixelsError):
        pipeline.read(nan, band_set="rgb8")
    tiny = write_tif(tmp_path / "tiny.tif", np.full((3, 8, 8), 50))
    with pytest.raises(ViewMismatchError, match="smaller than one 16x16 patch"):
        pipeline.read(tiny)


def test_prompt_and_task_errors(pipeline, calib_samples):
    views = calib_samples["ucmerced_airplane00"].read(size=pipeline.spec.image_size)
    with pytest.raises(PromptError, match="exceed the context"):
        pipeline.answer(views, prompt="word " * 5000)
    with pytest.raises(PromptError, match="unknown task"):
        resolve_task("segment")
    with pytest.raises(ViewMismatchError, match="at least 2 views"):
        pipeline.answer(views[:1], task="change")
    assert resolve_task("detect").name == "detection"


def test_stream_batch_and_single_answers_agree(pipeline, calib_samples):
    singles = [s for s in calib_samples.values() if len(s.views) == 1][:3]
    views = [s.read(size=pipeline.spec.image_size)[0] for s in singles]
    generation = GenerationConfig(max_new_tokens=24)
    batched = pipeline.answer_each(views, task="caption", generation=generation)
    for view, answer in zip(views, batched):
        [alone] = pipeline.answer([view], task="caption", generation=generation)
        assert alone.token_ids == answer.token_ids
        assert "".join(pipeline.stream([view], task="caption", generation=generation)) == alone.text
        assert len(alone.token_probs) == len(alone.token_ids) and alone.task == "caption"


def test_many_questions_about_one_scene_encode_once_and_answer_as_alone(pipeline, calib_samples):
    """Every task a sample's views allow, and a free prompt, asked together: the views go through the
    encoder once, and every answer is token for token the one the question gets alone."""
    from eov_edge.core.tasks import TASKS

    generation = GenerationConfig(max_new_tokens=24)
    for sample in calib_samples.values():
        views = sample.read(size=pipeline.spec.image_size)
        questions = [(task, None) for task, spec in TASKS.items() if spec.min_views <= len(views)]
        questions.append((None, "How many vehicles are in the image?"))
        pipeline.prefix_cache.clear()  # the session's pipeline: other tests may have asked about these views
        calls = len(pipeline.runners[mf.ENCODER].timings)
        together = pipeline.answer_questions(views, questions, generation)
        assert len(pipeline.runners[mf.ENCODER].timings) - calls == 1
        for (task, prompt), answer in zip(questions, together):
            [alone] = pipeline.answer(views, task=task, prompt=prompt, generation=generation)
            assert answer.token_ids == alone.token_ids, (sample.id, task, prompt)
            assert answer.task == alone.task
    with pytest.raises(PromptError, match="at least one"):
        pipeline.answer_questions(views, [])


def test_a_batch_over_the_engines_limit_runs_in_pieces(pipeline, calib_samples):
    """TensorRT engines take at most their profiles' batch: larger batches run in pieces, with the
    answers of one call (the limit set by hand here, as engines.json sets it on the device)."""
    singles = [s for s in calib_samples.values() if len(s.views) == 1][:3]
    views = [s.read(size=pipeline.spec.image_size)[0] for s in singles]
    generation = GenerationConfig(max_new_tokens=16)
    whole = pipeline.answer_each(views, task="classification", generation=generation)
    calls = len(pipeline.runners[mf.ENCODER].timings)
    pipeline.max_batch = 2
    try:
        pieces = pipeline.answer_each(views, task="classification", generation=generation)
    finally:
        pipeline.max_batch = None
    assert [a.token_ids for a in pieces] == [a.token_ids for a in whole]
    assert len(pipeline.runners[mf.ENCODER].timings) - calls == 2  # two pieces: 2 + 1 samples


def test_multi_view_sample_and_stats(pipeline, calib_samples):
    sample = calib_samples["ssl4eo_s2a_0000200"]  # two dates of one Sentinel-2 place
    views = sample.read(size=pipeline.spec.image_size)
    [answer] = pipeline.answer(views, task="change", generation=GenerationConfig(max_new_tokens=24))
    assert answer.text and not answer.problems
    stats = pipeline.stats()
    assert stats["graphs"]["decoder"]["calls"] > 0 and stats["peak_rss_mb"] > 0 and stats["kv_cache_mb"] > 0


def test_warmup_creates_every_session(nano_artifacts):
    pipe = Pipeline.from_artifacts(nano_artifacts, verify_hashes=False)
    assert not any(r.active for r in pipe.runners.values())
    pipe.warmup()
    assert all(r.active for r in pipe.runners.values())
    pipe.close()
    assert not any(r.active for r in pipe.runners.values())


def test_an_answer_cut_inside_a_shape_is_cut_not_malformed(nano_artifacts, calib_samples):
    """A detection stopped by the token budget inside its first box: no malformed shape reported,
    the cut said; the same answer with its task's budget ends by itself."""
    from eov_edge.core.tasks import TASKS, answer_token_budget

    frame = calib_samples["hit_uav_0_100_30_0_03306"]
    with Pipeline.from_artifacts(nano_artifacts) as pipe:
        views = [pipe.read(list(frame.views[0]), band_set=frame.band_set)]
        full = pipe.answer(views, task="detection",
                           generation=GenerationConfig(max_new_tokens=answer_token_budget([TASKS["detection"]])))[0]
        assert not full.cut_at_budget and not full.problems and "<box>" in full.text
        # stop two tokens after the first <box>: inside it
        opened = full.text.index("<box>")
        prefix_ids = next(n for n in range(1, len(full.token_ids) + 1)
                          if "<box>" in pipe.tokenizer.decode(full.token_ids[:n]) and
                          len(pipe.tokenizer.decode(full.token_ids[:n])) > opened)
        cut = pipe.answer(views, task="detection", generation=GenerationConfig(max_new_tokens=prefix_ids + 2))[0]
    assert cut.cut_at_budget and cut.token_ids == full.token_ids[:prefix_ids + 2]
    assert cut.problems == [] and cut.to_dict()["cut_at_token_budget"] is True
    assert len(cut.detections) < len(full.detections)
    # shown: up to the last whole shape, nothing of the cut box or its label (cut inside the first: nothing)
    assert cut.whole_text() == "" and "<box>" in cut.text and full.whole_text() == full.text
