"""The built-in corpus: docstrings of Python's standard library, read from the running interpreter's source
files with `ast` (nothing is imported, so no module runs). Present on every machine, real English prose mixed
with code, a few MB: enough to see a small language model learn."""

from __future__ import annotations

import ast
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


def source_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts))


def docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one source file, cleaned by `inspect` rules, in ast.walk's
    breadth-first order: the module's, then its classes' and functions', then their methods'."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
