"""Docstrings of installed Python packages (numpy, scipy, ...) as a .jsonl corpus: a second real text domain on
every machine, for continual pretraining after the built-in stdlib docstrings. Read with `ast` from the source
files (nothing is imported); files in sorted order, so the same installed versions give the same file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from selfsup.data.builtin.stdlib_docs import docstrings
from selfsup.data.errors import DataError

_SKIP_DIRS = {"test", "tests", "testing", "__pycache__"}  # test suites are code about code, not the package's docs


def package_root(name: str) -> Path:
    """The folder of an installed package, found without importing it, or a folder given as a path. A bare name is
    looked up as an installed package first: a folder `numpy` in the working directory does not replace numpy."""
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if Path(name).is_dir():
        return Path(name)
    raise DataError(f"'{name}' is neither an installed package nor a folder; expected e.g. numpy or path/to/src")


def package_files(root: Path) -> list[Path]:
    """A package's source files in sorted order, its test suites left out."""
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts))


def write_docstrings(packages: list[str], out: Path, min_chars: int = 1) -> dict:
    """One {"text", "package"} line per docstring of at least `min_chars` characters; returns counts per package."""
    counts = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for name in packages:
            counts[name] = 0
            for path in package_files(package_root(name)):
                for doc in docstrings(path):
                    if len(doc) >= min_chars:
                        f.write(json.dumps({"text": doc, "package": name}) + "\n")
                        counts[name] += 1
    tmp.replace(out)
    return counts
