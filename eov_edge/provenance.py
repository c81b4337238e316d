"""What produced an artifact: the project's git commit and the library versions (stdlib only)."""

from __future__ import annotations

import subprocess

from eov_edge.paths import PROJECT_ROOT


def git_commit() -> str:
    """HEAD of the project, with ``-dirty`` when tracked files have uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
