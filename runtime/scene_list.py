"""The scenes of a run from what a user types: raster files, folders (each raster inside, or one
scene stored one file per band), glob patterns, text lists of paths, comma-joined band files; each
with a name for its outputs, unique in the run.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from eov_edge.core.bands import band_name_from_filename
from eov_edge.core.errors import RasterReadError

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".png", ".img", ".vrt")
LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class SceneSpec:
    """One scene of a run: its output name (unique in the run) and its raster file(s)."""

    name: str
    paths: tuple[str, ...]  # one raster, or the band files of one scene

    @property
    def view_paths(self) -> str | list[str]:
        return view_paths(self.paths)


def view_paths(paths: tuple[str, ...]) -> str | list[str]:
    """What read_view takes: the one raster, or the list of band files."""
    return paths[0] if len(paths) == 1 else list(paths)


def expand_scenes(arguments: Sequence[str]) -> list[SceneSpec]:
    """Scenes from command-line arguments, in order: raster files; folders (each raster inside is a
    scene, and a folder of band files of one scene, B02.tif ..., is one scene); glob patterns;
    text files (.txt, .lst) of such arguments, one per line, relative to the list's folder, with
    ``#`` comments; band files joined with commas. A path that does not exist is still a scene:
    it is recorded as failed, not a reason to stop the others."""
    found: list[tuple[str, ...]] = []
    for argument in arguments:
        found += _expand(argument, Path.cwd())
    seen: set[tuple[str, ...]] = set()
    unique = [p for p in found if not (p in seen or seen.add(p))]
    return _named(unique)


def _expand(argument: str, base: Path) -> list[tuple[str, ...]]:
    if "," in argument:
        return [tuple(str(base / p) for p in argument.split(",") if p)]
    path = base / argument
    if path.is_dir():
        return _folder_scenes(path)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        out = []
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out += _expand(line, path.parent)
        return out
    if not path.exists() and glob.has_magic(argument):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise RasterReadError(f"{argument}: the pattern matches no file")
        return [s for m in matches for s in _expand(m, base)]
    return [(str(path),)]


def _folder_scenes(folder: Path) -> list[tuple[str, ...]]:
    if _is_band_folder(folder):
        return [tuple(str(p) for p in _rasters_in(folder))]
    scenes: list[tuple[str, ...]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in RASTER_SUFFIXES:
            scenes.append((str(entry),))
        elif entry.is_dir() and _is_band_folder(entry):
            scenes.append(tuple(str(p) for p in _rasters_in(entry)))
    return scenes


def _rasters_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def _is_band_folder(folder: Path) -> bool:
    """Every raster in it names a band, no band twice: one scene stored one file per band."""
    names = [band_name_from_filename(p.name) for p in _rasters_in(folder)]
    return len(names) > 1 and None not in names and len(set(names)) == len(names)


def _named(scenes: list[tuple[str, ...]]) -> list[SceneSpec]:
    def stem(paths: tuple[str, ...]) -> str:
        if len(paths) == 1:
            return Path(paths[0]).stem
        # band files: what their names share once the band is dropped (T33UUP_B02 -> T33UUP), else the folder
        prefix = os.path.commonprefix([_without_band(Path(p).stem) for p in paths]).rstrip("_-. ")
        return prefix or Path(paths[0]).parent.name

    stems = [stem(p) for p in scenes]
    specs = []
    for paths, name in zip(scenes, stems):
        if stems.count(name) > 1:  # same stem in two folders: keep both, told apart by their path
            name = f"{name}-{hashlib.sha256('|'.join(paths).encode()).hexdigest()[:8]}"
        specs.append(SceneSpec(name, paths))
    return specs


def _without_band(stem: str) -> str:
    head, sep, last = stem.replace("-", "_").rpartition("_")
    if band_name_from_filename(last) is not None:
        return head
    return "" if band_name_from_filename(stem) is not None else stem
