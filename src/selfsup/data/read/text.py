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
from selfsup.data.skipped import skip
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
    for _, _, text in named_documents(files, None, skipped, max_chars, builtin, field, document):
        yield text


def named_documents(files: list[Path], root: Path | None, skipped: Counter, max_chars: int, builtin: bool = False,
                    field: str = "text", document: str = "line") -> Iterator[tuple[str, int | None, str]]:
    """(file, key, document) as read_documents reads them: `file` its path under `root` (its own name when `root` is
    None or not above it), `key` where in it: the line number (a .txt line or a paragraph's first line, a .jsonl
    line; from 1), the row index (.parquet, .arrow, a built-in module's docstrings; from 0), or None (a whole
    file). A `Skipped` (data/skipped.py) gets each skipped document by the same names."""
    check_text_field(files, field)
    check_arrow_field(files, field)
    for f in files:
        name = f.relative_to(root).as_posix() if root is not None and f.is_relative_to(root) and f != root else f.name
        if builtin and document == "file":  # a module's docstrings (stdlib_docs' order), one document
            docs = list(stdlib_docs.docstrings(f))
            texts = iter([(None, "\n\n".join(docs))] if docs else [])
        elif builtin:
            texts = enumerate(stdlib_docs.docstrings(f))
        elif f.suffix == ".parquet":
            texts = parquet_texts(f, field, skipped, name)
        elif f.suffix == ".arrow":  # only a datasets folder lists them (source_files)
            rows = arrow_rows(f, [field], skipped, f"data.text_field '{field}'", "one of them", name=name)
            texts = texts_of(rows, field, skipped, name)
        elif f.suffix == ".jsonl":
            texts = ((number, _json_text(line, field, skipped, name, number))
                     for number, line in read_lines(f, skipped, name))
            texts = ((number, t) for number, t in texts if t is not None)
        elif document == "file":
            texts = _whole_file(f, skipped, max_chars, name)
        elif document == "paragraph":
            texts = _paragraphs(f, skipped, max_chars, name)
        else:
            texts = read_lines(f, skipped, name)
        for key, text in _keep(texts, skipped, max_chars, name):
            yield name, key, text


def _whole_file(f: Path, skipped: Counter, max_chars: int, name: str) -> Iterator[tuple[None, str]]:
    """The file as one document; one far past max_chars is skipped without reading it (UTF-8: <= 4 bytes a char)."""
    try:
        if f.stat().st_size > 4 * max_chars:
            skip(skipped, "too_long", name)
            return
        data = f.read_bytes()
    except OSError:
        skip(skipped, "unreadable_file", name)
        return
    try:
        yield None, data.decode("utf-8")
    except UnicodeDecodeError:
        skip(skipped, "invalid_utf8", name)


def _paragraphs(f: Path, skipped: Counter, max_chars: int, name: str) -> Iterator[tuple[int, str]]:
    """(first line number, block) of the blocks of lines between blank lines, streamed; a block with an invalid
    UTF-8 line is skipped whole, and one past max_chars stops growing (it is counted too_long once, whatever its
    length)."""
    try:
        handle = open(f, "rb")
    except OSError:
        skip(skipped, "unreadable_file", name)
        return
    block: list[bytes] = []
    size, over, first = 0, False, 0
    with handle:
        for number, line in enumerate(chain(handle, [b""]), 1):  # a last empty line ends the last block
            if line.strip():
                first = first or number
                size += len(line)
                over = over or size > 4 * max_chars
                if not over:
                    block.append(line)
                continue
            if over:
                skip(skipped, "too_long", name, first)
            elif block:
                try:
                    yield first, b"".join(block).decode("utf-8")
                except UnicodeDecodeError:
                    skip(skipped, "invalid_utf8", name, first)
            block, size, over, first = [], 0, False, 0


def read_lines(f: Path, skipped: Counter, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) for the non-blank lines of a file, read a line at a time so a file larger than
    memory streams; an unreadable file, a line of whitespace and invalid UTF-8 are counted in `skipped` (and named
    `name`, default the file's own, with the line number)."""
    name = name or f.name
    try:
        handle = open(f, "rb")
    except OSError:
        skip(skipped, "unreadable_file", name)
        return
    with handle:
        for number, line in enumerate(handle, 1):
            line = line.removesuffix(b"\n")
            if not line.strip():
                if line:  # a line of whitespace is an empty document; a bare newline separates nothing
                    skip(skipped, "empty", name, number)
                continue
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError:
                skip(skipped, "invalid_utf8", name, number)


def _json_text(line: str, field: str, skipped: Counter, name: str, number: int) -> str | None:
    record = json_line(line)
    if record is None:
        skip(skipped, "bad_json", name, number)
        return None
    text = record.get(field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        skip(skipped, f"no_{field}_field", name, number)
        return None
    return text


def _keep(texts: Iterable[tuple[int | None, str]], skipped: Counter, max_chars: int,
          name: str) -> Iterator[tuple[int | None, str]]:
    for key, text in texts:
        text = text.strip()
        if not text:
            skip(skipped, "empty", name, key)
        elif len(text) > max_chars:
            skip(skipped, "too_long", name, key)
        else:
            yield key, text
