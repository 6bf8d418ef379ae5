"""One pass over a text corpus that writes what it keeps elsewhere and logs what it removes (dedup, filter).

    text_pass(files, root, dst, judge, log, counts)

`judge(text, rel, line)` returns None to keep a document or (reason, detail) to remove it. Lines of .txt files
are documents; .jsonl lines are judged on their `text` and kept byte for byte, and a line without a usable
`text` is kept as it is (counted `kept_unparsed`: not ours to judge). The input is never changed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from selfsup.data.text import DataError, read_lines


def check_paths(path: str, out: str) -> tuple[Path, Path]:
    src, dst = Path(path).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise DataError(f"'{path}' does not exist; expected a data file or a folder of them")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise DataError(f"--out '{out}' is inside the input '{path}'; expected a new folder elsewhere")
    return src, dst


def text_pass(files: list[Path], root: Path, dst: Path, judge: Callable, log, counts: Counter) -> None:
    for f in files:
        rel = f.relative_to(root).as_posix()
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        skipped: Counter = Counter()
        with open(dst / rel, "w", encoding="utf-8") as kept:
            for number, line in enumerate(read_lines(f, skipped), 1):
                text = _json_text(line) if f.suffix == ".jsonl" else line
                if text is None:
                    counts["kept_unparsed"] += 1
                    kept.write(line + "\n")
                    continue
                counts["documents"] += 1
                verdict = judge(text, rel, number)
                if verdict is None:
                    kept.write(line + "\n")
                    counts["kept"] += 1
                else:
                    reason, detail = verdict
                    log.write(json.dumps({"file": rel, "line": number, "reason": reason, **detail}) + "\n")
                    counts[f"removed_{reason}"] += 1
        for reason, n in skipped.items():
            counts[f"skipped_{reason}"] += n


def _json_text(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    text = record.get("text") if isinstance(record, dict) else None
    return text if isinstance(text, str) else None
