"""Which files under a data folder are data: every regular file, in path order, except the logs a selfsup data
tool (dedup, filter) wrote beside the data it kept. The tool names them in a marker file there (LOGS_MARKER), so
`dedup corpus/ --out clean/`, then `filter clean/ --out filtered/` or `train ... data.path=clean/`, never reads
dedup's removed.jsonl as documents, whatever a user's own files are called."""

from __future__ import annotations

import json
from pathlib import Path

LOGS_MARKER = ".selfsup-logs.json"


def data_files(folder: Path) -> list[Path]:
    """The files under `folder` (recursively), sorted by path, without any tool's logs or their markers."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    logs = set()
    for marker in (f for f in files if f.name == LOGS_MARKER):
        logs.add(marker)
        try:
            names = json.loads(marker.read_text(encoding="utf-8"))["logs"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a marker that cannot be read hides nothing
        logs |= {marker.parent / str(name) for name in names}
    return sorted((f for f in files if f not in logs), key=lambda f: f.parts)


def mark_logs(folder: Path, names: list[str]) -> None:
    """Record that `names` (in `folder`) are a tool's logs, not data."""
    (folder / LOGS_MARKER).write_text(json.dumps({"logs": names}) + "\n", encoding="utf-8")
