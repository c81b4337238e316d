"""What produced an artifact: the project's git commit and the library versions (stdlib only)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from eov_edge.core.paths import PROJECT_ROOT


def git_commit() -> str:
    """HEAD of the project, with ``-dirty`` when tracked files have uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what platform reports, or "unknown").
    Recorded beside trained weights: the same seed gives the same floats only on the same kind of
    CPU (the kernels' rounding follows the instruction set)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
