"""The texts of one column of a .parquet file, read a record batch at a time so a file larger than memory streams.

    for text in parquet_texts(path, "text", skipped): ...

A row whose value is null or not a string is skipped and counted (`null_text`, `not_string_text`); a file that
cannot be opened or read as Parquet is counted as `unreadable_file` (corrupt data is skipped, never a crash). A file
without the column is the user's mistake, not corruption: one DataError line naming the file, the field and the
columns it has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from selfsup.data.errors import DataError

BATCH_ROWS = 1024  # rows held at once: documents are up to data.max_doc_chars each


def parquet_texts(path: Path, field: str, skipped: Counter) -> Iterator[str]:
    import pyarrow as pa  # only a run that reads Parquet pays for importing Arrow
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
    except (OSError, pa.ArrowException):
        skipped["unreadable_file"] += 1
        return
    if field not in columns:
        raise DataError(f"data.text_field '{field}': {path.name} has columns {', '.join(columns) or 'none'}; "
                        f"expected one of them")
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[field]):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str):
                    yield value
                else:
                    skipped[f"{'null' if value is None else 'not_string'}_{field}"] += 1
    except (OSError, pa.ArrowException):
        skipped["unreadable_file"] += 1  # a page that cannot be decoded ends the file, counted once
