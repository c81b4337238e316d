"""Where data lives: settings, not constants scattered through the code.

``EOV_DATA_DIR``: the real remote-sensing data (default ``../shared/data`` next to the project).
``EOV_CALIB_DIR``: the calibration samples shipped with the project (default ``calib_data/``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Root of the shared real-data folder; may not exist on a user's fresh clone."""
    return Path(os.environ.get("EOV_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def calib_dir() -> Path:
    """The calibration samples folder holding ``manifest.json``."""
    return Path(os.environ.get("EOV_CALIB_DIR", PROJECT_ROOT / "calib_data"))
