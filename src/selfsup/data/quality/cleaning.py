"""One pass over a text corpus that writes what it keeps elsewhere and logs what it removes (dedup, filter).

    text_pass(files, root, dst, judge, log, counts, what, batch_size)

Documents stream through in batches of `batch_size`: `judge(docs)` gets a list of (text, file, line) and returns
one verdict per document, None to keep it or (reason, detail) to remove it, so a judge can work a batch at a time
(one index query, one forward pass) while only a batch is ever held in memory. Lines of .txt files are documents;
.jsonl lines are judged on their `text` and kept byte for byte, and a line without a usable `text` is kept as it
is (counted `kept_unparsed`: not ours to judge); blank lines and invalid UTF-8 are skipped and counted
(`skipped_*`). `line` is the line's number in its file. The input is never changed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from selfsup.data.errors import DataError
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.text import read_lines
from selfsup.progress import Progress

Doc = tuple[str, str, int]  # text, file relative to the input, line number
LINE_SUFFIXES = (".txt", ".jsonl")  # what a pass reads and copies a line at a time


def line_files(files: list[Path], path: str, tool: str) -> list[Path]:
    """The .txt and .jsonl files of `files`. A pass copies what it keeps line for line, which a Parquet file has
    no lines for: one in the input is refused, as skipping it would leave it out of the cleaned corpus unsaid."""
    parquet = [f for f in files if f.suffix == ".parquet"]
    if parquet:
        raise DataError(f"{tool} '{path}': {parquet[0].name} is Parquet, which {tool} does not read; expected .txt "
                        f"or .jsonl files (training reads .parquet as it is)")
    return [f for f in files if f.suffix in LINE_SUFFIXES]


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
              what: str, batch_size: int = 1024) -> None:
    # (file, line number, line, text or None to keep unjudged); line number 0 only opens the file's output
    pending: list[tuple[str, int, str, str | None]] = []
    n_docs = 0
    with Progress(what, total=sum(f.stat().st_size for f in files), unit="bytes") as bar, _Outputs(dst) as out:
        for f in files:
            rel = f.relative_to(root).as_posix()
            pending.append((rel, 0, "", None))
            skipped: Counter = Counter()
            for number, line in read_lines(f, skipped):
                text = _json_text(line) if f.suffix == ".jsonl" else line
                pending.append((rel, number, line, text))
                n_docs += text is not None
                if n_docs == batch_size:
                    bar.advance(_flush(pending, judge, out, log, counts))
                    pending, n_docs = [], 0
            for reason, n in skipped.items():
                counts[f"skipped_{reason}"] += n
        bar.advance(_flush(pending, judge, out, log, counts))


def _flush(pending: list, judge: Callable, out: _Outputs, log, counts: Counter) -> int:
    """Judge the pending documents, write them out in order; the bytes they held."""
    docs = [(text, rel, number) for rel, number, _, text in pending if text is not None]
    verdicts = iter(judge(docs) if docs else [])
    size = 0
    for rel, number, line, text in pending:
        if number == 0:
            out.open(rel)
            continue
        size += len(line.encode()) + 1
        if text is None:
            counts["kept_unparsed"] += 1
            out.write(line + "\n")
            continue
        counts["documents"] += 1
        verdict = next(verdicts)
        if verdict is None:
            counts["kept"] += 1
            out.write(line + "\n")
        else:
            reason, detail = verdict
            log.write(json.dumps({"file": rel, "line": number, "reason": reason, **detail}) + "\n")
            counts[f"removed_{reason}"] += 1
    return size


class _Outputs:
    """The kept lines of one input file at a time, written under the same relative path in `dst`."""

    def __init__(self, dst: Path):
        self.dst, self.file = dst, None

    def open(self, rel: str) -> None:
        self.close()
        (self.dst / rel).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.dst / rel, "w", encoding="utf-8")

    def write(self, line: str) -> None:
        self.file.write(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> _Outputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_text(line: str) -> str | None:
    record = json_line(line)
    text = record.get("text") if isinstance(record, dict) else None
    return text if isinstance(text, str) else None
