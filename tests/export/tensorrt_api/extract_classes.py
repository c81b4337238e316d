"""Extract, per class, the methods and properties TensorRT's Python bindings define, and every bound
enum's members with their values, from TensorRT's open-source tree at a release tag.

    python tests/export/tensorrt_api/extract_classes.py TENSORRT_REPO v10.3.0 v11.1   # writes tensorrt-api-<tag>.json

The bindings' sources (``python/src/**/*.cpp``) declare each class with ``py::class_<T>(m, "Name")``
followed by ``.def("method", ...)`` / ``.def_property("name", ...)``, and each enum with
``py::enum_<E>(m, "Name")`` and ``.value("MEMBER", E::kMEMBER)``; the members' numbers are the C++
enumerators' in ``include/NvInfer*.h`` (implicit values counted as the compiler does). The flat name
lists (``extract_names.py``, from the compiled wheels) say a name exists somewhere; these say where,
and what an enum member is worth, so the stand-in can refuse ``BuilderFlag.INT8`` on a version where
only ``DataType`` has ``INT8``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASS = re.compile(r'py::class_<\s*([\w:]+)[^;{(]*?[({]\s*m\s*,\s*"(\w+)"', re.S)
ENUM = re.compile(r'py::enum_<\s*([\w:]+)\s*>\s*\(\s*m\s*,\s*"(\w+)"', re.S)
MEMBER = re.compile(r'\.(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static)\(\s*"(\w+)"')
VALUE = re.compile(r'\.value\(\s*"(\w+)"\s*,\s*([\w:]+)')
CPP_ENUM = re.compile(r"enum\s+class\s+(\w+)\s*(?::\s*[\w:]+)?\s*\{(.*?)\};", re.S)


def git_show(repo: Path, tag: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def git_files(repo: Path, tag: str, folder: str, suffix: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", tag, folder], check=True,
                         capture_output=True, text=True).stdout
    return [p for p in out.split() if p.endswith(suffix)]


def cpp_enum_values(headers: list[str]) -> dict[str, dict[str, int]]:
    """enum name -> {enumerator: value}, for enumerators whose values are integers, shifts or implicit."""
    out: dict[str, dict[str, int]] = {}
    for text in headers:
        text = re.sub(r"//[^\n]*", "", text)
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        for name, body in CPP_ENUM.findall(text):
            values: dict[str, int] = {}
            following = 0
            for entry in (e.strip() for e in body.split(",")):
                if not entry:
                    continue
                key, _, expression = (part.strip() for part in entry.partition("="))
                key = key.split()[0]  # "kSTRONGLY_TYPED TRT_DEPRECATED_ENUM": the enumerator, not its attribute
                if expression:
                    expression = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expression)
                    if re.fullmatch(r"[\d\s<>()+\-|x]+", expression):
                        value = int(eval(expression, {"__builtins__": {}}))  # integer arithmetic only
                    elif expression in values:
                        value = values[expression]
                    else:
                        continue
                else:
                    value = following
                values[key] = value
                following = value + 1
            out.setdefault(name, values)
    return out


def extract(repo: Path, tag: str) -> dict:
    sources = [git_show(repo, tag, p) for p in git_files(repo, tag, "python/src", ".cpp")]
    headers = [git_show(repo, tag, p) for p in git_files(repo, tag, "include", ".h")]
    enum_values = cpp_enum_values(headers)
    classes: dict[str, set[str]] = {}
    enums: dict[str, dict[str, int | None]] = {}
    for text in sources:
        starts = sorted([(m.start(), "class", m) for m in CLASS.finditer(text)] +
                        [(m.start(), "enum", m) for m in ENUM.finditer(text)], key=lambda t: t[0])
        for index, (start, kind, match) in enumerate(starts):
            end = starts[index + 1][0] if index + 1 < len(starts) else len(text)
            segment = text[match.end():end]
            segment = segment[:_statement_end(segment)]
            if kind == "class":
                classes.setdefault(match.group(2), set()).update(MEMBER.findall(segment))
            else:
                cpp_enum = match.group(1).split("::")[-1]
                members = enums.setdefault(match.group(2), {})
                for python_name, cpp_name in VALUE.findall(segment):
                    members[python_name] = enum_values.get(cpp_enum, {}).get(cpp_name.split("::")[-1])
    return {"tag": tag, "classes": {k: sorted(v) for k, v in sorted(classes.items())},
            "enums": {k: dict(sorted(v.items(), key=lambda kv: (kv[1] is None, kv[1]))) for k, v in sorted(enums.items())}}


def _statement_end(segment: str) -> int:
    """Where the chained binding statement ends: the first ';' outside brackets and braces."""
    depth = 0
    in_string = False
    for i, char in enumerate(segment):
        if char == '"' and (i == 0 or segment[i - 1] != "\\"):
            in_string = not in_string
        elif in_string:
            continue
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == ";" and depth <= 0:
            return i
    return len(segment)


def main() -> None:
    repo = Path(sys.argv[1])
    for tag in sys.argv[2:]:
        data = extract(repo, tag)
        path = HERE / f"tensorrt-api-{tag.lstrip('v')}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"{tag}: {len(data['classes'])} classes, {len(data['enums'])} enums -> {path.name}")


if __name__ == "__main__":
    main()
