"""One pass over a text corpus that writes what it keeps elsewhere and logs what it removes (dedup, filter).

    text_pass(files, root, dst, judge, log, counts, what, field, batch_size)

Documents stream through in batches of `batch_size`: `judge(docs)` gets a list of (text, file, key) and returns
one verdict per document, None to keep it or (reason, detail) to remove it, so a judge can work a batch at a time
(one index query, one forward pass) while only a batch is ever held in memory. Lines of .txt files are documents;
.jsonl lines are judged on their `field` and kept byte for byte, and a line without a usable `field` is kept as it
is (counted `kept_unparsed`: not ours to judge); blank lines and invalid UTF-8 are skipped and counted
(`skipped_*`). The rows of a .parquet file are judged on their column `field`, read a record batch at a time, and
the kept rows written, every column, in order, to a Parquet file of the same schema; a row whose `field` is null or
not a string is kept as a .jsonl line without it is (`kept_unparsed`). `key` is the line's number in its file (from
1) or the row's index (from 0); `where(file, key)` names it in a log. The input is never changed, and each output
file appears whole or not at all.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from selfsup.data.errors import DataError
from selfsup.data.read.hf_datasets import SPLITS, is_datasets_folder
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.parquet import BATCH_ROWS, missing, open_parquet, parquet_schema, record_batches
from selfsup.data.read.text import read_lines
from selfsup.progress import Progress

Doc = tuple[str, str, int]  # text, file relative to the input, line number (.txt, .jsonl) or row index (.parquet)
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")  # what a pass reads and writes again, a line or a record batch at a time


def text_files(files: list[Path], path: str, tool: str, field: str) -> list[Path]:
    """The .txt, .jsonl and .parquet files of `files`, once every Parquet file's footer has the text column. A
    `datasets` folder (save_to_disk) is refused: its .arrow files would be left out of the cleaned copy unsaid, and
    a copy in its own format would carry the fingerprints and sizes of the data it no longer holds."""
    for f in files:
        if f.suffix == ".arrow" and is_datasets_folder(f.parent):
            folder = f.parent.parent if (f.parent.parent / SPLITS).is_file() else f.parent
            raise DataError(f"{tool} '{path}': {folder} is a datasets folder (save_to_disk), which {tool} does not "
                            f"read; expected .txt, .jsonl or .parquet files (write it as Parquet first: "
                            f"datasets.load_from_disk('{folder}').to_parquet('{folder.name}.parquet'), a DatasetDict "
                            f"split by split)")
    for f in files:
        if f.suffix == ".parquet" and (schema := parquet_schema(f)) is not None:  # an unreadable one is counted later
            if field not in schema.names:
                raise missing(f.name, schema.names, f"--text-field '{field}'", "one of them")
            if not _stringy(t := schema.field(field).type):
                raise DataError(f"--text-field '{field}': {f.name}'s column {field} holds {t}; expected a column of "
                                f"strings")
    return [f for f in files if f.suffix in TEXT_SUFFIXES]


def _stringy(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):  # pandas' categorical strings
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t)


def where(rel: str, key: int) -> dict:
    """A document's place, as removed.jsonl names it: its line number, or its row index in a Parquet file."""
    return {"file": rel, ("row" if rel.endswith(".parquet") else "line"): key}


def check_paths(path: str, out: str) -> tuple[Path, Path]:
    """(input, output folder), once they are known not to overlap either way (resolved, links followed): a pass
    reads its input while it writes, so an output inside the input would be read back as data, and an input
    inside the output (`--out .` beside corpus.txt) would be overwritten while it is read."""
    src, dst = Path(path).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise DataError(f"'{path}' does not exist; expected a data file or a folder of them")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"--out '{out}' is a file; expected a new folder")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise DataError(f"--out '{out}' is inside the input '{path}'; expected a new folder elsewhere")
    if d in s.parents:
        raise DataError(f"--out '{out}' holds the input '{path}', which writing there could overwrite while it is "
                        "read; expected a new folder elsewhere")
    return src, dst


LOGS = ["removed.jsonl", "summary.json"]  # what a pass writes at the top of its output, beside the kept data


def check_log_names(files: list[Path], root: Path, path: str, tool: str) -> None:
    """A kept file would land where the pass writes a log (and one would overwrite the other)."""
    taken = sorted({f.relative_to(root).as_posix() for f in files} & set(LOGS))
    if taken:
        raise DataError(f"'{path}' holds {', '.join(taken)} at its top, where {tool} writes its log; expected no "
                        f"{' or '.join(LOGS)} there (rename the file)")


def text_pass(files: list[Path], root: Path, dst: Path, judge: Callable[[list[Doc]], list], log, counts: Counter,
              what: str, field: str = "text", batch_size: int = 1024) -> None:
    # (file, key, a line or a record batch, its texts (None: kept unjudged), bytes of the input); key None only
    # opens the file's output, with the Parquet schema it is written in (None: lines)
    pending: list[tuple] = []
    n_docs = 0
    with Progress(what, total=sum(f.stat().st_size for f in files), unit="bytes") as bar, _Outputs(dst) as out:
        for f in files:
            rel = f.relative_to(root).as_posix()
            skipped: Counter = Counter()
            if f.suffix != ".parquet":
                pending.append((rel, None, None, [], 0))
                chunks = _line_chunks(f, field, skipped)
            elif (parquet := open_parquet(f, skipped, rel)) is not None:
                pending.append((rel, None, parquet.schema_arrow, [], 0))
                chunks = _row_chunks(parquet, field, skipped, rel, batch_size, f.stat().st_size)
            else:  # counted unreadable; no output, as it has no schema to copy
                chunks = ()
            for key, content, texts, size in chunks:
                pending.append((rel, key, content, texts, size))
                n_docs += sum(t is not None for t in texts)
                if n_docs >= batch_size:
                    bar.advance(_flush(pending, judge, out, log, counts))
                    pending, n_docs = [], 0
            for reason, n in skipped.items():
                counts[f"skipped_{reason}"] += n
        bar.advance(_flush(pending, judge, out, log, counts))


def _line_chunks(f: Path, field: str, skipped: Counter) -> Iterator[tuple[int, str, list, int]]:
    for number, line in read_lines(f, skipped):
        yield number, line, [_json_text(line, field) if f.suffix == ".jsonl" else line], len(line.encode()) + 1


def _row_chunks(parquet, field: str, skipped: Counter, rel: str, rows: int,
                size: int) -> Iterator[tuple[int, object, list, int]]:
    """(first row's index, record batch of every column, its texts, its share of the file's bytes)."""
    start, total = 0, max(parquet.metadata.num_rows, 1)
    for batch in record_batches(parquet.iter_batches(batch_size=rows), skipped, rel):
        texts = [t if isinstance(t, str) else None for t in batch.column(field).to_pylist()]
        yield start, batch, texts, size * batch.num_rows // total
        start += batch.num_rows


def _flush(pending: list, judge: Callable, out: _Outputs, log, counts: Counter) -> int:
    """Judge the pending documents, write them out in order; the bytes they held."""
    docs = [(text, rel, key + i) for rel, key, _, texts, _ in pending for i, text in enumerate(texts)
            if text is not None]
    verdicts = iter(judge(docs) if docs else [])
    size = 0
    for rel, key, content, texts, n in pending:
        if key is None:
            out.open(rel, content)
            continue
        size += n
        keep = []
        for i, text in enumerate(texts):
            if text is None:
                counts["kept_unparsed"] += 1
                keep.append(True)
                continue
            counts["documents"] += 1
            verdict = next(verdicts)
            if verdict is None:
                counts["kept"] += 1
            else:
                reason, detail = verdict
                log.write(json.dumps({**where(rel, key + i), "reason": reason, **detail}) + "\n")
                counts[f"removed_{reason}"] += 1
            keep.append(verdict is None)
        out.write(content, keep)
    return size


class _Outputs:
    """The kept data of one input file at a time, under the same relative path in `dst`: lines, or a Parquet file of
    the input's schema. Each is written beside its place and renamed there once whole, so a pass that stops never
    leaves half a file to be read as data (Parquet without its footer, or lines cut short)."""

    def __init__(self, dst: Path):
        self.dst, self.path, self.tmp, self.file, self.writer = dst, None, None, None, None
        self.batches, self.rows = [], 0  # kept record batches not yet written: one row group of ~BATCH_ROWS

    def open(self, rel: str, schema) -> None:
        self.close()
        self.path = self.dst / rel
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        if schema is None:
            self.file = open(self.tmp, "w", encoding="utf-8")
        else:
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(self.tmp, schema)

    def write(self, content, keep: list[bool]) -> None:
        """A line (keep: one flag) or a record batch's kept rows, in order."""
        if self.writer is None:
            if keep[0]:
                self.file.write(content + "\n")
            return
        import pyarrow as pa

        self.batches.append(content.filter(pa.array(keep, pa.bool_())))
        self.rows += self.batches[-1].num_rows
        if self.rows >= BATCH_ROWS:  # a row group a write: a batch of a few kept rows each would make tiny ones
            self._write_batches()

    def _write_batches(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_batches(self.batches))
        self.batches, self.rows = [], 0

    def close(self, whole: bool = True) -> None:
        if self.writer is not None:
            if whole:
                self._write_batches()
            self.writer.close()
        if self.file is not None:
            self.file.close()
        if self.tmp is not None:
            if whole:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)
        self.path, self.tmp, self.file, self.writer, self.batches, self.rows = None, None, None, None, [], 0

    def __enter__(self) -> _Outputs:
        return self

    def __exit__(self, error, *exc) -> None:
        self.close(whole=error is None)


def _json_text(line: str, field: str) -> str | None:
    record = json_line(line)
    text = record.get(field) if isinstance(record, dict) else None
    return text if isinstance(text, str) else None
