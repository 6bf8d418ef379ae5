"""`selfsup data filter`: documents kept or removed by rules the user states; each removal is logged with the
rule and the measured value (data/cleaning.py writes the kept data elsewhere; the input is never changed).

    length      --min-chars / --max-chars
    symbols     --max-symbol-ratio: share of non-space characters that are neither letters nor digits, by Unicode
                category (L*, N*), so it means the same in any script
    repetition  --max-repetition: share of the word 3-grams that repeat an earlier one in the same document (as
                Gopher's duplicate n-gram fraction, counted by n-grams)
    perplexity  --ppl-model RUN_DIR --max-ppl X: the document's perplexity under a causal LM trained by selfsup
                (e.g. gpt-clm on a sample of clean text), scored on [EOS] + its tokens up to the model's context
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

import torch

from selfsup.data.cleaning import check_paths, text_pass
from selfsup.data.text import TEXT_SUFFIXES, DataError


def symbol_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(unicodedata.category(c)[0] not in "LN" for c in chars) / len(chars)


def repetition(text: str, n: int = 3) -> float:
    words = re.findall(r"\w+", text.casefold())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


class Perplexity:
    """Per-document perplexity under a trained causal LM run."""

    def __init__(self, run_dir: str, device: torch.device):
        from selfsup.data.tokenizer import eos_id
        from selfsup.rundir import open_run

        cfg, self.objective, self.tok = open_run(run_dir, device)
        if cfg.objective != "clm":
            raise DataError(f"--ppl-model '{run_dir}' trained '{cfg.objective}'; expected a causal LM run (gpt-clm)")
        self.eos, self.context, self.device = eos_id(self.tok), cfg.model.context, device

    @torch.no_grad()
    def __call__(self, text: str) -> float:
        ids = [self.eos] + self.tok.encode(text, add_special_tokens=False).ids[:self.context]
        if len(ids) < 2:
            return 1.0
        out = self.objective({"tokens": torch.tensor([ids], device=self.device)})
        return math.exp(min(out.loss.item() / int(out.count), 50))


def filter_corpus(path: str, out: str, min_chars: int = 0, max_chars: int | None = None,
                  max_symbol_ratio: float | None = None, max_repetition: float | None = None,
                  ppl_model: str | None = None, max_ppl: float | None = None, device: str = "cpu") -> dict:
    if (ppl_model is None) != (max_ppl is None):
        raise DataError("--ppl-model and --max-ppl go together: a causal LM run and the highest perplexity kept")
    src, dst = check_paths(path, out)
    files = [src] if src.is_file() else sorted((f for f in src.rglob("*") if f.is_file()), key=lambda f: f.parts)
    files = [f for f in files if f.suffix in TEXT_SUFFIXES]
    if not files:
        raise DataError(f"'{path}' holds no .txt or .jsonl files")
    ppl = Perplexity(ppl_model, torch.device(device)) if ppl_model else None

    def judge(text: str, rel: str, number: int):
        n = len(text)
        if n < min_chars:
            return "too_short", {"value": n}
        if max_chars is not None and n > max_chars:
            return "too_long", {"value": n}
        if max_symbol_ratio is not None and (r := symbol_ratio(text)) > max_symbol_ratio:
            return "symbols", {"value": round(r, 4)}
        if max_repetition is not None and (r := repetition(text)) > max_repetition:
            return "repetition", {"value": round(r, 4)}
        if ppl is not None and (p := ppl(text)) > max_ppl:
            return "perplexity", {"value": round(p, 2)}
        return None

    counts: Counter = Counter()
    dst.mkdir(parents=True, exist_ok=True)
    root = src if src.is_dir() else src.parent
    with open(dst / "removed.jsonl", "w", encoding="utf-8") as log:
        text_pass(files, root, dst, judge, log, counts)
    rules = dict(min_chars=min_chars, max_chars=max_chars, max_symbol_ratio=max_symbol_ratio,
                 max_repetition=max_repetition, ppl_model=ppl_model, max_ppl=max_ppl)
    summary = dict(input=str(src), out=str(dst), rules=rules, **dict(sorted(counts.items())))
    (dst / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
