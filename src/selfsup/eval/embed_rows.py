"""The rows files `selfsup embed` writes beside its .npy, so embeddings join back to what they came from:

    emb.rows.jsonl     one line per .npy row, in row order: {"row": i, "file": ..., "key": ...} (+ "text" for texts)
    emb.skipped.jsonl  one line per item read but not embedded: {"file": ..., "key": ..., "skipped": reason}

`file` is the source file's path under the input (its own name when the input is a file); `key` where in it: a
.tar sample's key, a line number (a .txt line, a .jsonl line, from 1), a row index (.parquet, .npz, .arrow, from
0), or null for a whole file. The two are .parquet instead (same columns) when every source file is a .parquet.
Rows are written as they come, so memory holds a batch of names, never the set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BATCH = 65536  # rows per Parquet row group


def rows_paths(out: Path, parquet: bool) -> tuple[Path, Path]:
    """The rows and skipped files beside the .npy `out` (emb.npy -> emb.rows.jsonl, emb.skipped.jsonl)."""
    stem, suffix = out.with_suffix(""), ".parquet" if parquet else ".jsonl"
    return stem.with_name(stem.name + ".rows" + suffix), stem.with_name(stem.name + ".skipped" + suffix)


def write_rows(path: Path, rows: Iterable[tuple], texts: bool, parquet: bool) -> int:
    """(file, key) or, with `texts`, (file, key, text) per .npy row, in order; the number written."""
    columns = ["row", "file", "key"] + (["text"] if texts else [])
    return _write(path, ((i, *r) for i, r in enumerate(rows)), columns, parquet)


def write_skipped(path: Path, skipped: Iterable[tuple], parquet: bool) -> int:
    """(file, key, reason) per item skipped, in the order met; the number written."""
    return _write(path, skipped, ["file", "key", "skipped"], parquet)


def _write(path: Path, records: Iterable[tuple], columns: list[str], parquet: bool) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not parquet:
        n = 0
        with open(path, "w", encoding="utf-8") as f:
            for n, record in enumerate(records, 1):
                f.write(json.dumps(dict(zip(columns, record))) + "\n")
        return n
    import pyarrow as pa  # only a Parquet input pays for importing Arrow
    import pyarrow.parquet as pq

    types = dict(row=pa.int64(), file=pa.string(), key=pa.int64(), text=pa.string(), skipped=pa.string())
    schema = pa.schema([(c, types[c]) for c in columns])  # keys of Parquet sources are row indices
    n, batch = 0, []
    with pq.ParquetWriter(path, schema) as writer:
        for record in records:
            batch.append(record)
            if len(batch) == BATCH:
                writer.write_table(pa.Table.from_pylist([dict(zip(columns, r)) for r in batch], schema))
                n, batch = n + len(batch), []
        writer.write_table(pa.Table.from_pylist([dict(zip(columns, r)) for r in batch], schema))
    return n + len(batch)
