"""Reading text documents: `.txt` (a document per line), `.jsonl` (a `text` field per line), folders of them
(recursively), or the built-in corpus. Bad documents are skipped and counted in `SkipCounts`, never a crash."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from selfsup.config import BUILTIN_CORPUS
from selfsup.data.builtin import stdlib_docs
from selfsup.data.errors import DataError
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.listing import data_files

TEXT_SUFFIXES = (".txt", ".jsonl")


def source_files(path: str) -> list[Path]:
    """The files behind a data path, sorted so every run reads them in the same order."""
    if path == BUILTIN_CORPUS:
        return stdlib_docs.source_files()
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix not in TEXT_SUFFIXES:
            raise DataError(f"data.path '{path}': expected a .txt or .jsonl file (or a folder of them), "
                            f"got a '{p.suffix or 'no suffix'}' file")
        return [p]
    if p.is_dir():
        files = [f for f in data_files(p) if f.suffix in TEXT_SUFFIXES]  # sorted; not a cleaning tool's logs
        if not files:
            raise DataError(f"data.path '{path}': the folder holds no .txt or .jsonl files")
        return files
    raise DataError(f"data.path '{path}' does not exist; expected a .txt/.jsonl file, a folder of them, "
                    f"or '{BUILTIN_CORPUS}'")


def read_documents(files: list[Path], skipped: Counter, max_chars: int, builtin: bool = False,
                   field: str = "text") -> Iterator[str]:
    """Yield documents from `files`; count what was skipped in `skipped` by reason."""
    for f in files:
        if builtin:
            yield from _keep(stdlib_docs.docstrings(f), skipped, max_chars)
            continue
        for _, text in read_lines(f, skipped):
            if f.suffix == ".jsonl":
                text = _json_text(text, field, skipped)
                if text is None:
                    continue
            yield from _keep([text], skipped, max_chars)


def read_lines(f: Path, skipped: Counter) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for the non-blank lines of a file, read a line at a time so a file larger than
    memory streams; an unreadable file, a line of whitespace and invalid UTF-8 are counted in `skipped`."""
    try:
        handle = open(f, "rb")
    except OSError:
        skipped["unreadable_file"] += 1
        return
    with handle:
        for number, line in enumerate(handle, 1):
            line = line.removesuffix(b"\n")
            if not line.strip():
                if line:  # a line of whitespace is an empty document; a bare newline separates nothing
                    skipped["empty"] += 1
                continue
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError:
                skipped["invalid_utf8"] += 1


def _json_text(line: str, field: str, skipped: Counter) -> str | None:
    record = json_line(line)
    if record is None:
        skipped["bad_json"] += 1
        return None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        skipped[f"no_{field}_field"] += 1
        return None
    return text


def _keep(texts, skipped: Counter, max_chars: int) -> Iterator[str]:
    for text in texts:
        text = text.strip()
        if not text:
            skipped["empty"] += 1
        elif len(text) > max_chars:
            skipped["too_long"] += 1
        else:
            yield text
