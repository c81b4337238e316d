"""Training examples streamed from a JSONL file in the held-out format."""

import json
import random
import shutil

import pytest

from eov_edge.core.errors import ConfigError, HeldOutError
from eov_edge.core.paths import heldout_pack
from eov_edge.training.data.jsonl import JsonlExamples


@pytest.fixture()
def pack_copy(tmp_path):
    """The shipped pack's records in a folder of our own (its views beside it)."""
    shutil.copytree(heldout_pack().parent, tmp_path / "pack")
    return tmp_path / "pack" / "heldout.jsonl"


def test_draws_any_task_by_offset_and_reads_its_views():
    source = JsonlExamples(heldout_pack(), image_size=64)
    assert len(source) == 288 and set(source.counts().values()) == {32}
    rng = random.Random(0)
    example = source.sample("detection", rng)
    assert example.task == "detection" and example.answer and example.views
    assert example.views[0].canvas.shape == (16, 64, 64) and example.aux == [None] * len(example.views)
    again = source.sample("detection", random.Random(0))
    assert again.source == example.source  # a seeded draw is the same record


def test_modalities_choose_the_records_whose_views_declare_them():
    source = JsonlExamples(heldout_pack(), image_size=32)
    assert "cross_modal" not in source.tasks_for(("optical", "infrared"))  # SAR + optical pairs
    assert "cross_modal" in source.tasks_for(("sar", "multispectral", "optical"))
    for seed in range(10):
        example = source.sample("classification", random.Random(seed), modalities=("multispectral",))
        assert all(v.modality == "multispectral" for v in example.views)
    with pytest.raises(ConfigError, match="no cross_modal examples of optical/infrared views"):
        source.sample("cross_modal", random.Random(0), modalities=("optical", "infrared"))


def test_bad_lines_are_all_listed_before_training(pack_copy):
    lines = pack_copy.read_text().splitlines()
    lines[3] = lines[3][:40]
    lines[7] = json.dumps({"task": "segmentation", "views": ["x.png"]})
    pack_copy.write_text("\n".join(lines) + "\n")
    with pytest.raises(HeldOutError, match=r"2 bad record\(s\), training did not start:\n  line 4: not JSON.*\n  line 8: "):
        JsonlExamples(pack_copy, 32)


def test_a_record_whose_file_is_gone_is_named_by_its_line(pack_copy):
    first = json.loads(pack_copy.read_text().splitlines()[0])
    (pack_copy.parent / first["views"][0]["file"]).unlink()
    with pytest.raises(HeldOutError, match="heldout.jsonl: line 1: view 0: file .* not found"):
        JsonlExamples(pack_copy, 32)  # the first records of each task are drawn at start
