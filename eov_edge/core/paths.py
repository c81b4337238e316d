"""Where data lives: settings, not constants scattered through the code.

``EOV_DATA_DIR``: the real remote-sensing data (default ``../shared/data`` next to the project).
``EOV_CALIB_DIR``: the calibration samples shipped with the project (default ``calib_data/``).
``EOV_HELDOUT``: the held-out examples the gate and the demo use by default (default: the pack
shipped in ``calib_data/heldout/``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # eov_edge/
PROJECT_ROOT = PACKAGE_ROOT.parent
ASSETS_DIR = PACKAGE_ROOT / "assets"
NANO_CHECKPOINT = ASSETS_DIR / "eov-nano"  # the shipped checkpoint


def data_dir() -> Path:
    """Root of the shared real-data folder; may not exist on a user's fresh clone."""
    return Path(os.environ.get("EOV_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def calib_dir() -> Path:
    """The calibration samples folder holding ``manifest.json``."""
    return Path(os.environ.get("EOV_CALIB_DIR", PROJECT_ROOT / "calib_data"))


def heldout_pack() -> Path:
    """The held-out pack shipped with the project (JSONL, docs/evaluation.md), or ``$EOV_HELDOUT``."""
    return Path(os.environ.get("EOV_HELDOUT", PROJECT_ROOT / "calib_data" / "heldout" / "heldout.jsonl"))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place: readers never
    see a half-written file, and a failure leaves the old file (or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """:func:`write_atomic` of ``data`` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=1))


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` only if the block succeeds.

    A failure (or Ctrl-C) removes it: readers never see a half-written artifacts folder.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private; artifacts are meant to be shared
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
