"""Check the import layers (setup.cfg's ``[importlinter]`` contracts) with ``lint-imports``.

The top-level folders map into ``eov_edge`` through ``package_dir``; import-linter reads a package
from one folder, so the package is first assembled as it installs (the same mapping, read from
setup.cfg) in a temporary folder, and ``lint-imports`` runs there. ``python -m tests.layers`` is
what ``make test`` runs; ``tests/test_layers.py`` also proves that a back-edge breaks it.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """``eov_edge.X`` -> source folder, from setup.cfg's ``package_dir``."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        mapping[name] = ROOT / folder
    return mapping


def assemble(dest: Path) -> Path:
    """Copy the sources into ``dest/eov_edge`` laid out as installed; returns ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "assets", "*.pyc")
    for name, folder in sorted(package_dirs().items(), key=lambda item: item[0].count(".")):
        target = dest.joinpath(*name.split("."))
        shutil.copytree(folder, target, ignore=ignore, dirs_exist_ok=True)
    return dest


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` on an assembled tree with the project's contracts."""
    executable = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([str(executable), str(ROOT / "setup.cfg"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="eov-layers-") as tmp:
        result = lint_imports(assemble(Path(tmp)))
    sys.stdout.write(result.stdout[result.stdout.find("Contracts"):] if "Contracts" in result.stdout else result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
