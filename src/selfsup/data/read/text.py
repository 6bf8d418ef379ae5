"""Reading text documents: plain text files (`.txt`, or any suffix named in data.extensions) split into documents
a line, a file or a paragraph at a time (data.document), `.jsonl` (a text field per line), `.parquet` (a text
column, read a record batch at a time), folders of them (recursively), a Hugging Face `datasets` folder written by
save_to_disk (its text column; a DatasetDict's train split), a Hugging Face Hub dataset (`hf:datasets/ORG/NAME`:
those files of its cached snapshot), or the built-in corpus. Bad documents are
skipped and counted by reason in `skipped`, never a crash."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from selfsup.config import BUILTIN_CORPUS
from selfsup.data.builtin import stdlib_docs
from selfsup.data.errors import DataError
from selfsup.data.read.hf_datasets import arrow_rows, check_arrow_field, dataset_files, is_datasets_folder
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.listing import data_files
from selfsup.data.read.parquet import check_text_field, parquet_texts, texts_of
from selfsup.hub import snapshot

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def source_files(path: str, extensions: Iterable[str] | None = None) -> list[Path]:
    """The files behind a data path whose suffix is one of `extensions` (default TEXT_SUFFIXES), sorted so every run
    reads them in the same order."""
    if path == BUILTIN_CORPUS:
        return stdlib_docs.source_files()
    suffixes = tuple(extensions or TEXT_SUFFIXES)
    named = "/".join(suffixes)
    p = Path(path).expanduser()
    if path.startswith("hf:"):  # its files of those suffixes, downloaded once; then read as the folder it is
        p = snapshot(path, [f"*{s}" for s in suffixes], "data.path", DataError, kind="dataset")
    if p.is_file():
        if p.suffix not in suffixes:
            hint = "" if extensions else f", or data.extensions={p.suffix or '.'} to read it as plain text"
            raise DataError(f"data.path '{path}': expected a {named} file (or a folder of them){hint}, "
                            f"got a '{p.suffix or 'no suffix'}' file")
        return [p]
    if is_datasets_folder(p):
        return dataset_files(p, f"data.path '{path}'")[1]
    if p.is_dir() or path.startswith("hf:"):  # online, a dataset without such files has no snapshot folder
        files = [f for f in data_files(p) if f.suffix in suffixes]  # sorted; not a cleaning tool's logs
        if not files:
            raise DataError(f"data.path '{path}': the folder holds no {named} files; expected some "
                            f"(data.extensions names which suffixes are read)")
        return files
    raise DataError(f"data.path '{path}' does not exist; expected a {named} file, a folder of them, "
                    f"or '{BUILTIN_CORPUS}'")


def read_documents(files: list[Path], skipped: Counter, max_chars: int, builtin: bool = False,
                   field: str = "text", document: str = "line") -> Iterator[str]:
    """Yield documents from `files`; count what was skipped in `skipped` by reason. `field` is the text of a .jsonl
    line, a .parquet or datasets .arrow row; `document` splits every other file: 'line', 'file' or 'paragraph'."""
    check_text_field(files, field)
    check_arrow_field(files, field)
    for f in files:
        if builtin:
            yield from _keep(stdlib_docs.docstrings(f), skipped, max_chars)
        elif f.suffix == ".parquet":
            yield from _keep(parquet_texts(f, field, skipped), skipped, max_chars)
        elif f.suffix == ".arrow":  # only a datasets folder lists them (source_files)
            rows = arrow_rows(f, [field], skipped, f"data.text_field '{field}'", "one of them")
            yield from _keep(texts_of(rows, field, skipped), skipped, max_chars)
        elif f.suffix == ".jsonl":
            texts = (_json_text(line, field, skipped) for _, line in read_lines(f, skipped))
            yield from _keep((t for t in texts if t is not None), skipped, max_chars)
        elif document == "file":
            yield from _keep(_whole_file(f, skipped, max_chars), skipped, max_chars)
        elif document == "paragraph":
            yield from _keep(_paragraphs(f, skipped, max_chars), skipped, max_chars)
        else:
            yield from _keep((line for _, line in read_lines(f, skipped)), skipped, max_chars)


def _whole_file(f: Path, skipped: Counter, max_chars: int) -> Iterator[str]:
    """The file as one document; one far past max_chars is skipped without reading it (UTF-8: <= 4 bytes a char)."""
    try:
        if f.stat().st_size > 4 * max_chars:
            skipped["too_long"] += 1
            return
        data = f.read_bytes()
    except OSError:
        skipped["unreadable_file"] += 1
        return
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError:
        skipped["invalid_utf8"] += 1


def _paragraphs(f: Path, skipped: Counter, max_chars: int) -> Iterator[str]:
    """Blocks of lines between blank lines, streamed; a block with an invalid UTF-8 line is skipped whole, and one
    past max_chars stops growing (it is counted too_long once, whatever its length)."""
    try:
        handle = open(f, "rb")
    except OSError:
        skipped["unreadable_file"] += 1
        return
    block: list[bytes] = []
    size, over = 0, False
    with handle:
        for line in chain(handle, [b""]):  # a last empty line ends the last block
            if line.strip():
                size += len(line)
                over = over or size > 4 * max_chars
                if not over:
                    block.append(line)
                continue
            if over:
                skipped["too_long"] += 1
            elif block:
                try:
                    yield b"".join(block).decode("utf-8")
                except UnicodeDecodeError:
                    skipped["invalid_utf8"] += 1
            block, size, over = [], 0, False


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
