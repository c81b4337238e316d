"""Held-out examples a person writes by hand: one JSONL file, a record per line (docs/evaluation.md).

    {"task": "detection", "views": ["frames/0001.png"], "objects": [{"label": "car", "box": [12, 40, 58, 71]}]}
    {"task": "classification", "views": [{"file": "s2/patch.tif", "band_set": "sentinel2_l2a"}], "answer": "water"}
    {"task": "change", "views": ["before.tif", "after.tif"], "changed": true, "boxes": [{"box": [5, 5, 20, 20]}]}

Views are paths relative to the file (a raster, a list of band files, or an object with ``file`` /
``files`` and ``band_set``, ``bands``, ``nodata``, ``modality``); boxes are ``[x1, y1, x2, y2]`` in
pixels of the first view, or in its CRS with ``"coords": "crs"``. :func:`load_heldout` checks
every record (files present and readable, task known, reference complete, boxes inside the image)
(and every view read once at a few pixels: band count and band set, nodata, corrupt data), and
refuses the file with each bad line's number before any model runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eov_edge.core import slis
from eov_edge.core.errors import EOVError, HeldOutError
from eov_edge.core.raster import RasterGrid, View, raster_grid, read_view
from eov_edge.core.tasks import DEFAULT_QUESTIONS, DIRECTIONS, TASKS, resolve_task
from eov_edge.evaluation.examples import Example, ExampleSet

HELDOUT_FILE = "heldout.jsonl"  # the file looked for in a folder given instead of a file
MODALITIES = ("optical", "sar", "infrared", "multispectral")
# fields every record may have; per-task reference fields in REFERENCE_FIELDS
COMMON_FIELDS = {"id", "task", "views", "image", "prompt", "band_set", "bands", "nodata", "coords", "source",
                 "licence", "note"}
REFERENCE_FIELDS = {
    "classification": {"answer"},
    "multilabel": {"labels", "answer"},
    "caption": {"captions", "answer"},
    "vqa": {"answer"},
    "grounding": {"box", "label"},
    "detection": {"objects"},
    "change": {"changed", "boxes"},
    "temporal": {"direction", "track", "label"},
    "cross_modal": {"answer"},
}
VIEW_FIELDS = {"file", "files", "band_set", "bands", "nodata", "modality"}
CHECK_SIZE = 8  # every view is read once at this size while the file is checked
BOX_TOLERANCE_PX = 0.5  # a box may reach half a pixel past the image edge (rounding of exported boxes)


@dataclass(frozen=True)
class ViewSpec:
    """One view of a record: its files and how to read them."""

    files: tuple[Path, ...]
    band_set: str | None = None
    bands: tuple[str, ...] | None = None
    nodata: float | None = None
    modality: str | None = None

    def read(self, size: int | None) -> View:
        view = read_view([str(f) for f in self.files], band_set=self.band_set, size=size, nodata=self.nodata,
                         bands=list(self.bands) if self.bands else None)
        return replace(view, modality=self.modality) if self.modality else view


def resolve_heldout_path(path: str | Path) -> Path:
    """The JSONL file itself, or ``heldout.jsonl`` (or the one ``.jsonl``) in a folder."""
    path = Path(path)
    if path.is_dir():
        if (path / HELDOUT_FILE).is_file():
            return path / HELDOUT_FILE
        found = sorted(path.glob("*.jsonl"))
        if len(found) == 1:
            return found[0]
        raise HeldOutError(f"{path}: a folder of held-out examples holds {HELDOUT_FILE} or exactly one .jsonl file "
                           f"(found {len(found)})")
    if not path.is_file():
        raise HeldOutError(f"{path}: no such held-out file; give a .jsonl file (docs/evaluation.md) or a folder with one")
    return path


def load_heldout(path: str | Path, image_size: int, per_task: int | None = None,
                 tasks: tuple[str, ...] | None = None) -> ExampleSet:
    """Every record of a held-out JSONL file as examples for a model of ``image_size`` (references in
    canvas pixels; views read when answered). Checks the whole file first and raises
    :class:`HeldOutError` listing every bad line. ``per_task``: at most the first that many of each
    task; ``tasks``: only these task kinds."""
    file = resolve_heldout_path(path)
    raw = file.read_bytes()
    problems: list[str] = []
    examples: list[Example] = []
    wanted = {resolve_task(t).name for t in tasks} if tasks else None
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not JSON ({err.msg} at column {err.colno})")
            continue
        try:
            example = _example(record, file.parent, image_size, number)
        except _RecordError as err:
            problems.append(f"line {number}: {err}")
            continue
        if wanted is None or example.task in wanted:
            examples.append(example)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise HeldOutError(f"{file}: {len(problems)} bad record(s), nothing was run:\n  " + "\n  ".join(shown))
    if not examples:
        raise HeldOutError(f"{file}: no examples" + (f" of the tasks {sorted(wanted)}" if wanted else ""))
    digest = hashlib.sha256(raw).hexdigest()
    example_set = ExampleSet(examples, examples, str(file), {"file": str(file), "sha256": digest})
    return example_set.limited(per_task)


class _RecordError(Exception):
    """What is wrong with one record (the loader adds the line number)."""


def example_from_record(record: Any, file: Path, image_size: int, number: int) -> Example:
    """One record (line ``number`` of ``file``) as an example, checked as :func:`load_heldout`
    checks every line; :class:`HeldOutError` names the file and line. For readers that stream a
    large file a record at a time (training)."""
    try:
        return _example(record, file.parent, image_size, number)
    except _RecordError as err:
        raise HeldOutError(f"{file}: line {number}: {err}") from None


def declared_modalities(record: dict) -> frozenset[str] | None:
    """The modalities a record's views declare (``modality``, or their band set's), without reading
    a file; None when a view declares neither (known only once read)."""
    from eov_edge.core.bands import BAND_SETS

    items = record.get("views", [record.get("image")])
    found = set()
    for item in items if isinstance(items, list) else []:
        options = item if isinstance(item, dict) else {}
        band_set = options.get("band_set", record.get("band_set"))
        modality = options.get("modality") or (BAND_SETS[band_set].modality if band_set in BAND_SETS else None)
        if modality is None:
            return None
        found.add(modality)
    return frozenset(found) or None


def _example(record: Any, base: Path, size: int, number: int) -> Example:
    if not isinstance(record, dict):
        raise _RecordError("a record is a JSON object {...}")
    if "task" not in record:
        raise _RecordError("no \"task\" (one of " + ", ".join(TASKS) + ")")
    try:
        task = resolve_task(str(record["task"])).name
    except EOVError as err:
        raise _RecordError(str(err)) from None
    unknown = set(record) - COMMON_FIELDS - REFERENCE_FIELDS[task]
    if unknown:
        raise _RecordError(f"unknown field(s) {sorted(unknown)} for a {task} record; it takes "
                           f"{sorted(REFERENCE_FIELDS[task])} as its reference (docs/evaluation.md)")
    views = _view_specs(record, base)
    if len(views) < TASKS[task].min_views:
        raise _RecordError(f"a {task} record needs at least {TASKS[task].min_views} views, it has {len(views)}")
    grids = []
    for index, view in enumerate(views):
        for f in view.files:
            if not f.is_file():
                raise _RecordError(f"view {index}: file {f} not found (paths are relative to the JSONL file)")
        try:
            grids.append(raster_grid([str(f) for f in view.files]))
            view.read(CHECK_SIZE)  # band count and set, nodata, a corrupt block: refused now, not mid-gate
        except EOVError as err:
            raise _RecordError(f"view {index}: {err}") from None
    coords = record.get("coords", "pixel")
    if coords not in ("pixel", "crs"):
        raise _RecordError(f"\"coords\" is \"pixel\" (the first view's pixels) or \"crs\" (its map coordinates), "
                           f"not {coords!r}")
    if coords == "crs" and grids[0].transform is None:
        raise _RecordError(f"\"coords\": \"crs\" but the first view ({views[0].files[0].name}) is not georeferenced")
    prompt = record.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise _RecordError("\"prompt\" is a non-empty string (leave it out for the task's default question)")
    reference = _Reference(task, grids[0], coords, size, len(views))
    answer, target = reference.read(record)
    files = tuple(str(f) for v in views for f in v.files)
    source = str(record.get("source") or record.get("id") or f"{files[0]}#{number}")

    def loader(image_size: int, _views=tuple(views)) -> list[View]:
        return [v.read(image_size) for v in _views]

    return Example(task, [], prompt or DEFAULT_QUESTIONS[task], answer, target, source, loader=loader, files=files)


def _view_specs(record: dict, base: Path) -> list[ViewSpec]:
    if ("views" in record) == ("image" in record):
        raise _RecordError("give \"views\": [...] (or \"image\": \"file\" for one view), not both or neither")
    items = record["views"] if "views" in record else [record["image"]]
    if not isinstance(items, list) or not items:
        raise _RecordError("\"views\" is a non-empty list of files, band-file lists or view objects")
    defaults = {k: record[k] for k in ("band_set", "bands", "nodata") if k in record}
    specs = []
    for index, item in enumerate(items):
        options = dict(defaults)
        if isinstance(item, str):
            files = [item]
        elif isinstance(item, list) and item and all(isinstance(f, str) for f in item):
            files = item
        elif isinstance(item, dict):
            unknown = set(item) - VIEW_FIELDS
            if unknown:
                raise _RecordError(f"view {index}: unknown field(s) {sorted(unknown)}; a view takes {sorted(VIEW_FIELDS)}")
            if ("file" in item) == ("files" in item):
                raise _RecordError(f"view {index}: give \"file\" or \"files\"")
            files = [item["file"]] if "file" in item else item["files"]
            if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                raise _RecordError(f"view {index}: \"files\" is a non-empty list of paths")
            options.update({k: item[k] for k in ("band_set", "bands", "nodata", "modality") if k in item})
        else:
            raise _RecordError(f"view {index}: a path, a list of band files, or an object with \"file\"/\"files\"")
        bands = options.get("bands")
        if isinstance(bands, str):
            bands = [b.strip() for b in bands.split(",") if b.strip()]
        modality = options.get("modality")
        if modality is not None and modality not in MODALITIES:
            raise _RecordError(f"view {index}: modality {modality!r} is one of {', '.join(MODALITIES)}")
        nodata = options.get("nodata")
        if nodata is not None and not isinstance(nodata, (int, float)):
            raise _RecordError(f"view {index}: \"nodata\" is a number")
        specs.append(ViewSpec(tuple(base / f for f in files), options.get("band_set"),
                              tuple(bands) if bands else None, nodata, modality))
    return specs


class _Reference:
    """Reads a record's reference answer into (answer text, metric target in canvas pixels)."""

    def __init__(self, task: str, grid: RasterGrid, coords: str, size: int, views: int) -> None:
        self.task, self.grid, self.coords, self.size, self.views = task, grid, coords, size, views

    def read(self, record: dict) -> tuple[str, dict]:
        return getattr(self, f"_{self.task}")(record)

    # -- fields --------------------------------------------------------------------------------
    def _text(self, record: dict, key: str = "answer") -> str:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise _RecordError(f"a {self.task} record needs a non-empty \"{key}\"")
        return str(value).strip()

    def _texts(self, record: dict, key: str) -> list[str]:
        if key in record:
            values = record[key]
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
                raise _RecordError(f"\"{key}\" is a non-empty list of non-empty strings")
            return [v.strip() for v in values]
        return [self._text(record)]

    def box(self, value: Any, where: str) -> tuple[float, float, float, float]:
        """[x1, y1, x2, y2] of the record -> canvas pixels, checked against the first view."""
        if (not isinstance(value, list) or len(value) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise _RecordError(f"{where}: a box is [x1, y1, x2, y2], four finite numbers")
        x1, y1, x2, y2 = (float(v) for v in value)
        if self.coords == "crs":
            (x1, y1), (x2, y2) = self._to_pixels(x1, y1), self._to_pixels(x2, y2)
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)  # north-up: y flips
        if not (x2 > x1 and y2 > y1):
            raise _RecordError(f"{where}: box {value} is empty (x2 > x1 and y2 > y1 in pixels)")
        width, height, tol = self.grid.width, self.grid.height, BOX_TOLERANCE_PX
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            unit = "map coordinates, in pixels" if self.coords == "crs" else "pixels"
            raise _RecordError(f"{where}: box {value} ({unit}: {x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) lies outside "
                               f"the first view's {width}x{height} pixels")
        sx, sy = self.size / width, self.size / height
        clip = lambda v, hi: min(max(v, 0.0), float(hi))  # noqa: E731
        return (clip(x1, width) * sx, clip(y1, height) * sy, clip(x2, width) * sx, clip(y2, height) * sy)

    def _to_pixels(self, x: float, y: float) -> tuple[float, float]:
        from affine import Affine

        inverse = ~Affine(*self.grid.transform)
        col, row = inverse @ (x, y)
        return float(col), float(row)

    def labelled_boxes(self, items: Any, key: str, label_required: bool) -> list[tuple[str, tuple]]:
        if not isinstance(items, list):
            raise _RecordError(f"\"{key}\" is a list of {{\"label\": ..., \"box\": [x1, y1, x2, y2]}} ([] for none)")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "box" not in item or set(item) - {"label", "box"}:
                raise _RecordError(f"\"{key}\"[{i}]: an object {{\"label\": ..., \"box\": [x1, y1, x2, y2]}}")
            label = item.get("label", "")
            if not isinstance(label, str) or (label_required and not label.strip()):
                raise _RecordError(f"\"{key}\"[{i}]: \"label\" is a non-empty string")
            out.append((label.strip(), self.box(item["box"], f"\"{key}\"[{i}]")))
        return out

    def shape(self, box, label: str | None = None, view: int | None = None) -> slis.SpatialObject:
        return slis.SpatialObject.from_pixels("box", [box[:2], box[2:]], self.size, self.size, label=label or None,
                                              view=view)

    # -- tasks ---------------------------------------------------------------------------------
    def _classification(self, record):
        label = self._text(record)
        return label, {"label": label}

    def _cross_modal(self, record):
        letter = self._text(record)
        return letter, {"answer": letter}

    def _multilabel(self, record):
        if "labels" in record:
            labels = self._texts(record, "labels")
        else:
            labels = [x.strip() for x in self._text(record).split(";") if x.strip()]
        return "; ".join(labels), {"labels": labels}

    def _caption(self, record):
        captions = self._texts(record, "captions")
        return captions[0], {"references": captions}

    def _vqa(self, record):
        answer = self._text(record)
        kind = "count" if answer.isdigit() else "presence" if answer.lower() in ("yes", "no") else "open"
        return answer, {"kind": kind}

    def _grounding(self, record):
        if "box" not in record:
            raise _RecordError("a grounding record needs \"box\": [x1, y1, x2, y2]")
        box = self.box(record["box"], "\"box\"")
        label = record.get("label") or ""
        return slis.serialize([self.shape(box)]), {"box": box, "class": label}

    def _detection(self, record):
        if "objects" not in record:
            raise _RecordError("a detection record needs \"objects\": [{\"label\": ..., \"box\": [...]}] ([] for none)")
        objects = self.labelled_boxes(record["objects"], "objects", label_required=True)
        ordered = sorted(objects, key=lambda lb: (round(lb[1][1] / 16), lb[1][0]))  # as the model was taught
        answer = slis.serialize([self.shape(b, label) for label, b in ordered]) if ordered else "none"
        return answer, {"objects": ordered}

    def _change(self, record):
        changed = record.get("changed")
        if not isinstance(changed, bool):
            raise _RecordError("a change record needs \"changed\": true or false")
        boxes = self.labelled_boxes(record.get("boxes", []), "boxes", label_required=False)
        if boxes and not changed:
            raise _RecordError("\"boxes\" of changes given but \"changed\" is false")
        answer = "yes " + slis.serialize([self.shape(b, label, view=1) for label, b in boxes]) if boxes else (
            "yes" if changed else "no")
        return answer, {"changed": changed, "boxes": boxes}

    def _temporal(self, record):
        if ("direction" in record) == ("track" in record):
            raise _RecordError("a temporal record needs \"direction\" (a compass direction) or \"track\" (one box per "
                               "view), not both")
        label = record.get("label") or ""
        if "direction" in record:
            direction = self._text(record, "direction").lower()
            if direction not in DIRECTIONS:
                raise _RecordError(f"\"direction\" is one of {', '.join(DIRECTIONS)}, not {direction!r}")
            return direction, {"kind": "direction", "direction": direction, "boxes": []}
        track = record["track"]
        if not isinstance(track, list) or len(track) != self.views:
            raise _RecordError(f"\"track\" is a list of boxes [x1, y1, x2, y2], one per view in order "
                               f"({self.views} views)")
        boxes = [(label, self.box(b, f"\"track\"[{t}]")) for t, b in enumerate(track)]
        answer = slis.serialize([self.shape(b, view=t) for t, (_, b) in enumerate(boxes)])
        return answer, {"kind": "track", "direction": None, "boxes": boxes}


__all__ = ["HELDOUT_FILE", "ViewSpec", "load_heldout", "resolve_heldout_path"]
