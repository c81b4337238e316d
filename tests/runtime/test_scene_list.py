"""The scenes of a run from files, folders, globs, lists and band files, with unique names."""

import pytest

from eov_edge.core.errors import RasterReadError
from eov_edge.runtime.scene_list import expand_scenes


def test_scene_list_from_files_folders_globs_and_lists(tmp_path, monkeypatch):
    for name in ("a.tif", "b.TIF", "notes.md", "other/a.tif", "s2/T33_B02.tif", "s2/T33_B03.tif", "s2/T33_B04.tif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "pass.txt").write_text("# one pass\n../other/a.tif\n\n../s2  # band files\n")
    monkeypatch.chdir(tmp_path)

    folder = expand_scenes(["."])  # rasters and band folders inside, sorted; not notes.md nor other/
    assert [(s.name, len(s.paths)) for s in folder] == [("a", 1), ("b", 1), ("T33", 3)]
    listed = expand_scenes(["a.tif", "lists/pass.txt", "a.tif"])  # a repeated scene runs once
    assert [len(s.paths) for s in listed] == [1, 1, 3]
    assert listed[0].name != listed[1].name and all(s.name.startswith("a-") for s in listed[:2])
    assert listed[1].paths == (str(tmp_path / "lists" / ".." / "other" / "a.tif"),)
    assert [s.name for s in expand_scenes(["s2/*_B0[23].tif"])] == ["T33_B02", "T33_B03"]
    joined = expand_scenes(["s2/T33_B02.tif,s2/T33_B04.tif"])
    assert [(s.name, len(s.paths)) for s in joined] == [("T33", 2)]
    assert expand_scenes(["missing.tif"])[0].name == "missing"  # recorded failed by the run, not refused here
    with pytest.raises(RasterReadError, match="matches no file"):
        expand_scenes(["nothing-*.tif"])
