"""Rows of a .parquet file, read a record batch at a time so a file larger than memory streams: the texts of one
column for training, the columns a labeled set needs, or whole record batches (the cleaning tools: data/quality).

    for index, text in parquet_texts(path, "text", skipped): ...
    for row in parquet_rows(path, ["text", "label"], skipped, what, expected): ...    # dicts
    schema = parquet_schema(path)     # from the footer; None when the file cannot be read as Parquet
    for batch in record_batches(open_parquet(path, skipped, name).iter_batches(), skipped, name): ...   # all columns

A row whose text is null or not a string is skipped and counted (`null_text`, `not_string_text`); a file that
cannot be opened or read as Parquet is counted as `unreadable_file` (corrupt data is skipped, never a crash). A file
without a column is the user's mistake, not corruption: one DataError line naming the file, the field and the
columns it has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from selfsup.data.errors import DataError
from selfsup.data.skipped import skip

BATCH_ROWS = 1024  # rows held at once: documents are up to data.max_doc_chars each
READ_BUFFER = 1 << 20  # bytes read from the file at a time


def parquet_texts(path: Path, field: str, skipped: Counter, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(row index, string) of column `field`; null and non-string values are counted as `null_<field>`,
    `not_string_<field>`. `name`: the file's in what is skipped (data/skipped.py; default its own)."""
    name = name or path.name
    yield from texts_of(parquet_rows(path, [field], skipped, f"data.text_field '{field}'", "one of them", name=name),
                        field, skipped, name)


def texts_of(rows: Iterator[dict], field: str, skipped: Counter, name: str) -> Iterator[tuple[int, str]]:
    """(row index, string value of `field`) in `rows`; null and non-string ones counted and named `name` and the
    index (shared with datasets folders)."""
    for index, row in enumerate(rows):
        value = row[field]
        if isinstance(value, str):
            yield index, value
        else:
            skip(skipped, f"{'null' if value is None else 'not_string'}_{field}", name, index)


def check_text_field(files: list[Path], field: str) -> None:
    """Every readable .parquet file of `files` has column `field`: one line at once, from the footers alone, rather
    than at the 50th file of a folder after reading 49."""
    for f in files:
        if f.suffix == ".parquet" and (schema := parquet_schema(f)) is not None and field not in schema.names:
            raise missing(f.name, schema.names, f"data.text_field '{field}'", "one of them")


def parquet_rows(path: Path, columns: list[str], skipped: Counter, what: str, expected: str,
                 batch: int = BATCH_ROWS, name: str | None = None) -> Iterator[dict]:
    """Rows of `columns` as dicts, `batch` at a time. A file lacking one of them is one line: "{what}: {file} has
    columns ...; expected {expected}". `name`: the file's in what is skipped (default its own)."""
    parquet = open_parquet(path, skipped, name or path.name)
    if parquet is None:
        return
    names = parquet.schema_arrow.names
    if any(c not in names for c in columns):
        raise missing(path.name, names, what, expected)
    yield from batch_rows(parquet.iter_batches(batch_size=batch, columns=columns), skipped, name or path.name)


def open_parquet(path: Path, skipped: Counter, name: str):
    """A pyarrow ParquetFile that reads a batch at a time within a small buffer; None, counted `unreadable_file` and
    named `name`, when the file cannot be opened as Parquet."""
    import pyarrow as pa  # only a run that reads Parquet pays for importing Arrow
    import pyarrow.parquet as pq

    try:
        # pre_buffer=False with a read buffer: pyarrow's default pre-buffers column chunks far ahead (a 266 MB file
        # peaked at 270 MB of Arrow memory; this way at 7 MB)
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
        parquet.schema_arrow  # converted here: a schema Arrow cannot read is an unreadable file too
    except (OSError, pa.ArrowException):
        skip(skipped, "unreadable_file", name)
        return None
    return parquet


def batch_rows(batches, skipped: Counter, name: str) -> Iterator[dict]:
    """The rows of Arrow record batches as dicts, a batch at a time (see record_batches)."""
    for batch in record_batches(batches, skipped, name):
        yield from batch.to_pylist()


def record_batches(batches, skipped: Counter, name: str) -> Iterator:
    """Arrow record batches as they decode; a batch that cannot be decoded ends the file, counted once as
    `unreadable_file` and named `name` (the file). The one reader of record batches, for Parquet and datasets' Arrow
    files."""
    import pyarrow as pa

    try:
        yield from batches
    except (OSError, pa.ArrowException):
        skip(skipped, "unreadable_file", name)


def parquet_schema(path: Path):
    """The Arrow schema in a file's footer; None when it cannot be read as Parquet (its rows count it later)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return None


def missing(name: str, names: list[str], what: str, expected: str) -> DataError:
    """`name`: the file, or a datasets folder, as the line shows it."""
    return DataError(f"{what}: {name} has columns {', '.join(names) or 'none'}; expected {expected}")
