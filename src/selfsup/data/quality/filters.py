"""`selfsup data filter`: documents kept or removed by rules the user states; each removal is logged with the
rule and the measured value (data/quality/cleaning.py writes the kept data elsewhere; the input is never changed).

    length      --min-chars / --max-chars
    symbols     --max-symbol-ratio: share of non-space characters that are neither letters nor digits, by Unicode
                category (L*, N*), so it means the same in any script
    repetition  --max-repetition: share of the word 3-grams that repeat an earlier one in the same document (as
                Gopher's duplicate n-gram fraction, counted by n-grams)
    perplexity  --ppl-model RUN_DIR --max-ppl X: the document's perplexity under a causal LM trained by selfsup
                (e.g. gpt-clm on a sample of clean text); the caller passes the scorer (eval/perplexity.py's
                Perplexity), which gets the documents that pass the other rules a batch at a time
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable

from selfsup.data.errors import DataError
from selfsup.data.quality.cleaning import LOGS, Doc, check_log_names, check_paths, text_files, text_pass
from selfsup.data.read.listing import data_files, mark_logs


def symbol_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(unicodedata.category(c)[0] not in "LN" for c in chars) / len(chars)


def repetition(text: str, n: int = 3) -> float:
    words = re.findall(r"\w+", text.casefold())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def filter_corpus(path: str, out: str, min_chars: int = 0, max_chars: int | None = None,
                  max_symbol_ratio: float | None = None, max_repetition: float | None = None,
                  perplexity: Callable[[], Callable[[list[str]], list[float]]] | None = None,
                  max_ppl: float | None = None,
                  ppl_model: str | None = None, field: str = "text") -> dict:
    """`perplexity` (with `max_ppl`) makes the scorer of a batch of documents, one value each, once the paths are
    known to be right (opening a model takes seconds); documents above `max_ppl` are removed. `ppl_model` names
    the scorer's run in summary.json. `field`: the text of a .jsonl line or a .parquet row."""
    src, dst = check_paths(path, out)
    files = [src] if src.is_file() else data_files(src)  # a former pass's logs are not data
    files = text_files(files, path, "filter", field)
    if not files:
        raise DataError(f"'{path}' holds no .txt, .jsonl or .parquet files")
    root = src if src.is_dir() else src.parent
    check_log_names(files, root, path, "filter")
    score = perplexity() if perplexity is not None else None

    def rules(text: str):
        n = len(text)
        if n < min_chars:
            return "too_short", {"value": n}
        if max_chars is not None and n > max_chars:
            return "too_long", {"value": n}
        if max_symbol_ratio is not None and (r := symbol_ratio(text)) > max_symbol_ratio:
            return "symbols", {"value": round(r, 4)}
        if max_repetition is not None and (r := repetition(text)) > max_repetition:
            return "repetition", {"value": round(r, 4)}
        return None

    def judge(docs: list[Doc]) -> list:
        verdicts = [rules(text) for text, _, _ in docs]
        if score is not None:  # the model scores only what the cheap rules kept, a batch at a time
            passed = [i for i, v in enumerate(verdicts) if v is None]
            for i, p in zip(passed, score([docs[i][0] for i in passed])):
                if p > max_ppl:
                    verdicts[i] = "perplexity", {"value": round(p, 2)}
        return verdicts

    counts: Counter = Counter()
    dst.mkdir(parents=True, exist_ok=True)
    mark_logs(dst, LOGS)  # before they exist: never read as data
    with open(dst / "removed.jsonl", "w", encoding="utf-8") as log:
        text_pass(files, root, dst, judge, log, counts, "filter", field)
    stated = dict(min_chars=min_chars, max_chars=max_chars, max_symbol_ratio=max_symbol_ratio,
                 max_repetition=max_repetition, ppl_model=ppl_model, max_ppl=max_ppl)
    summary = dict(input=str(src), out=str(dst), text_field=field, rules=stated, **dict(sorted(counts.items())))
    (dst / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
