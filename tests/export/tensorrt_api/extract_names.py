"""Extract the names TensorRT's and cuda-python's Python bindings register, from their wheels.

    python tests/export/tensorrt_api/extract_names.py      # rewrites the *.txt lists beside this file

The bindings wheels cannot be imported without the GPU libraries (1+ GB), but a compiled pybind11 or
Cython module keeps every name it registers as a NUL-terminated string, and the linker may store a
name as the tail of a longer one ("INT8" inside "UINT8"): a name counts as registered when it is one
of these strings or the tail of one. The package's ``__init__.py`` adds its Python-level names
(``nptype``, ``__version__``). ``tests/export/test_tensorrt_api.py`` checks the code against them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (distribution, version, compiled module inside the wheel (a glob), Python package __init__ or None)
WHEELS = (
    ("tensorrt-cu12-bindings", "10.3.0", "tensorrt_bindings/tensorrt.so", "tensorrt_bindings/__init__.py"),
    ("tensorrt-cu12-bindings", "11.4.0.106", "tensorrt_bindings/tensorrt.so", "tensorrt_bindings/__init__.py"),
    ("cuda-bindings", "12.8.0", "cuda/bindings/runtime.cpython-311-*.so", None),
)
IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]+")


def names_in_binary(data: bytes) -> set[str]:
    """Identifier-shaped strings, less the linker's own (C++ mangled symbols, versioned libc names)
    and anything longer than a Python API name gets."""
    return {s.decode() for s in data.split(b"\0") if IDENTIFIER.fullmatch(s) and len(s) <= 64
            and not s.startswith((b"_Z", b"GLIBC", b"GCC_", b"CXXABI", b"_GLOBAL"))}


def names_in_init(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def list_file(distribution: str, version: str) -> Path:
    return HERE / f"{distribution}-{version}.txt"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for distribution, version, module, init in WHEELS:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", "--platform",
                            "manylinux_2_28_x86_64", f"{distribution}=={version}", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob(f"{distribution.replace('-', '_')}-{version}-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                members = archive.namelist()
                binary = next(m for m in members if Path(m).match(module))
                names = names_in_binary(archive.read(binary))
                if init:
                    names |= names_in_init(archive.read(init).decode())
            list_file(distribution, version).write_text("\n".join(sorted(names)) + "\n")
            print(f"{distribution} {version}: {len(names)} names")


if __name__ == "__main__":
    main()
