"""Replacing a small file whole: written beside it, then renamed over it, so a reader (a browser, a resumed run)
or a process killed meanwhile sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
