"""Training examples streamed from the user's JSONL files, in the held-out format (docs/evaluation.md).

    source = JsonlExamples("train.jsonl", image_size=256)
    example = source.sample("detection", random.Random(0), modalities=("optical", "infrared"))

A training file may hold millions of records: it is scanned once for each line's byte offset, task
and declared modalities (8 bytes per record kept, not the records), and a sampled record is read
from its offset, checked as the held-out loader checks it, and its views read then. Lines that are
not JSON or name no known task are refused up front, all of them listed; a record whose files are
missing or unreadable is refused when first drawn, with its line. The first records of each task are
drawn once at start, so a file whose paths are all wrong fails before the first step.
"""

from __future__ import annotations

import json
import random
from array import array
from pathlib import Path

from eov_edge.core.errors import ConfigError, EOVError, HeldOutError
from eov_edge.core.tasks import TASKS, resolve_task
from eov_edge.evaluation.examples import Example
from eov_edge.evaluation.heldout import declared_modalities, example_from_record, resolve_heldout_path

CHECKED_AT_START = 2  # records of each task read fully before training starts


class JsonlExamples:
    """Examples of a JSONL file drawn at random by task (and modality), read on demand."""

    def __init__(self, path: str | Path, image_size: int) -> None:
        self.file = resolve_heldout_path(path)
        self.image_size = image_size
        # (task, declared modalities or None) -> offsets and line numbers of its records
        self._offsets: dict[tuple[str, frozenset | None], array] = {}
        self._lines: dict[tuple[str, frozenset | None], array] = {}
        problems: list[str] = []
        with open(self.file, "rb") as handle:
            number, offset = 0, 0
            for raw in handle:
                number += 1
                start, offset = offset, offset + len(raw)
                line = raw.decode("utf-8", errors="replace").strip()
                if not line or line.startswith("//"):
                    continue
                try:
                    record = json.loads(line)
                    task = resolve_task(str(record["task"])).name
                except (json.JSONDecodeError, TypeError, KeyError, EOVError) as err:
                    problems.append(f"line {number}: {_why(err)}")
                    continue
                key = (task, declared_modalities(record))
                self._offsets.setdefault(key, array("q")).append(start)
                self._lines.setdefault(key, array("q")).append(number)
        if problems:
            shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
            raise HeldOutError(f"{self.file}: {len(problems)} bad record(s), training did not start:\n  "
                               + "\n  ".join(shown))
        if not self._offsets:
            raise HeldOutError(f"{self.file}: no examples")
        self._handle = None
        for key, lines in self._lines.items():
            for i in range(min(CHECKED_AT_START, len(lines))):
                self._read(key, i)

    def __len__(self) -> int:
        return sum(len(o) for o in self._offsets.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (task, _), offsets in self._offsets.items():
            out[task] = out.get(task, 0) + len(offsets)
        return out

    def tasks_for(self, modalities: tuple[str, ...] | None) -> set[str]:
        """The tasks with examples whose views are all of ``modalities`` (or declare none)."""
        return {task for task, declared in self._offsets if _allowed(declared, modalities)}

    def sample(self, task: str, rng: random.Random, modalities: tuple[str, ...] | None = None) -> Example:
        """A random example of ``task`` (views of ``modalities`` only, where given), views read."""
        keys = [k for k in self._offsets if k[0] == task and _allowed(k[1], modalities)]
        if not keys:
            raise ConfigError(f"{self.file}: no {task} examples" + (f" of {'/'.join(modalities)} views" if modalities
                                                                    else "") + f"; it has {self.counts()}")
        index = rng.randrange(sum(len(self._offsets[k]) for k in keys))
        for key in keys:
            if index < len(self._offsets[key]):
                return self._read(key, index)
            index -= len(self._offsets[key])
        raise AssertionError("unreachable")

    def _read(self, key, index: int) -> Example:
        if self._handle is None:
            self._handle = open(self.file, "rb")
        self._handle.seek(self._offsets[key][index])
        line = self._handle.readline().decode("utf-8", errors="replace")
        example = example_from_record(json.loads(line), self.file, self.image_size, self._lines[key][index])
        try:
            views = example.read_views(self.image_size)
        except EOVError as err:
            raise HeldOutError(f"{self.file}: line {self._lines[key][index]}: {err}") from None
        return Example(example.task, views, example.instruction, example.answer, example.target, example.source,
                       aux=[None] * len(views), files=example.files)

    def __getstate__(self):  # a process pool gets the index, not the open file
        return dict(self.__dict__, _handle=None)


def _allowed(declared: frozenset | None, modalities: tuple[str, ...] | None) -> bool:
    return modalities is None or declared is None or declared <= set(modalities)


def _why(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"not JSON ({err.msg} at column {err.colno})"
    if isinstance(err, (KeyError, TypeError)):
        return "no \"task\" (one of " + ", ".join(TASKS) + ")"
    return str(err)
