"""The shipped calibration samples: complete, intact, licensed for shipping, readable."""

import pytest

from eov_edge.core.calib import SAMPLE_MODALITIES, load_calib_samples

PERMISSIVE = ("MIT", "public domain", "CDLA-Permissive", "CC BY 4.0")


def test_every_modality_is_covered_and_files_match_their_hashes(calib_root):
    samples = load_calib_samples(calib_root, verify=True)
    assert {s.modality for s in samples} == set(SAMPLE_MODALITIES)
    for sample in samples:
        assert sample.licence.startswith(PERMISSIVE), sample.licence
        if sample.modality in ("temporal", "video"):
            assert len(sample.views) >= 2


@pytest.mark.parametrize("size", [64, 224])
def test_every_sample_reads_onto_the_canvas(calib_samples, size):
    for sample in calib_samples.values():
        for view in sample.read(size=size):
            assert view.canvas.shape == (16, size, size)
            assert view.valid.mean() > 0.99


def test_tampered_sample_is_detected(tmp_path, calib_root):
    import shutil

    copy = tmp_path / "calib"
    shutil.copytree(calib_root, copy)
    victim = next(copy.glob("optical/*/*.jpg"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(OSError, match="differs from the manifest"):
        load_calib_samples(copy, verify=True)
