"""`selfsup data filter`: documents kept or removed by rules the user states; each removal is logged with the
rule and the measured value (data/cleaning.py writes the kept data elsewhere; the input is never changed).

    length      --min-chars / --max-chars
    symbols     --max-symbol-ratio: share of non-space characters that are neither letters nor digits, by Unicode
                category (L*, N*), so it means the same in any script
    repetition  --max-repetition: share of the word 3-grams that repeat an earlier one in the same document (as
                Gopher's duplicate n-gram fraction, counted by n-grams)
    perplexity  --ppl-model RUN_DIR --max-ppl X: the document's perplexity under a causal LM trained by selfsup
                (e.g. gpt-clm on a sample of clean text), scored on [EOS] + its tokens up to the model's context;
                documents that pass the other rules are scored a batch at a time, padded to similar lengths
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

import torch

from selfsup.data.cleaning import Doc, check_paths, text_pass
from selfsup.data.text import TEXT_SUFFIXES, DataError
from selfsup.data.tokenizer import IGNORE


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
    """Per-document perplexity under a trained causal LM run, a batch of documents per call: documents sorted by
    length are padded (after their end, so causal attention never sees the padding, and padding is not scored) into
    forward passes of at most `tokens` tokens, each scoring its documents separately."""

    def __init__(self, run_dir: str, device: torch.device, tokens: int = 4096):
        from selfsup.data.tokenizer import eos_id
        from selfsup.rundir import open_run

        cfg, self.objective, self.tok = open_run(run_dir, device)
        if cfg.objective != "clm":
            raise DataError(f"--ppl-model '{run_dir}' trained '{cfg.objective}'; expected a causal LM run (gpt-clm)")
        self.eos, self.context, self.device, self.tokens = eos_id(self.tok), cfg.model.context, device, tokens

    def __call__(self, texts: list[str]) -> list[float]:
        """Each text scored on [EOS] + its tokens up to the model's context; 1.0 for a text with no token."""
        ids = [[self.eos] + enc.ids[:self.context] for enc in self.tok.encode_batch(texts, add_special_tokens=False)]
        order = sorted((i for i in range(len(ids)) if len(ids[i]) > 1), key=lambda i: len(ids[i]))  # scorable
        scores = [1.0] * len(ids)
        start = 0
        while start < len(order):
            end = start + 1  # the group grows while its padded size (rows × longest, the last) fits in `tokens`
            while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= self.tokens:
                end += 1
            group = order[start:end]
            for i, (nll, count) in zip(group, self._nll([ids[i] for i in group])):
                scores[i] = math.exp(min(nll / count, 50))
            start = end
        return scores

    @torch.no_grad()
    def _nll(self, docs: list[list[int]]) -> list[tuple[float, int]]:
        """(summed NLL, scored tokens) of each document, in one forward pass."""
        longest = max(len(d) for d in docs)
        tokens = torch.full((len(docs), longest), self.eos, dtype=torch.long)  # (B, L)
        labels = torch.full((len(docs), longest), IGNORE, dtype=torch.long)  # (B, L)
        for row, d in enumerate(docs):
            tokens[row, :len(d)] = labels[row, :len(d)] = torch.tensor(d)
        tokens, labels = tokens.to(self.device), labels.to(self.device)
        inputs, targets = tokens[:, :-1], labels[:, 1:]  # (B, L - 1) each: the shift CausalLM makes
        lm = self.objective
        doc_ids = torch.cumsum(inputs == lm.eos_id, dim=1) if lm.doc_mask else None  # (B, L - 1), as in training
        hidden = lm.model(inputs, doc_ids)  # (B, L - 1, D)
        valid = targets != IGNORE  # (B, L - 1)
        scored, wanted = hidden[valid], targets[valid]  # (N, D), (N,): scored tokens only
        nll = torch.cat([  # (N,): fp32 softmax, 1,024 rows of logits at a time to bound their memory
            torch.nn.functional.cross_entropy(lm.model.logits(scored[s:s + 1024]).float(), wanted[s:s + 1024],
                                              reduction="none") for s in range(0, len(wanted), 1024)])
        rows = torch.arange(len(docs), device=self.device)[:, None].expand_as(valid)[valid]  # (N,)
        per_doc = torch.zeros(len(docs), dtype=torch.float64, device=self.device).index_add_(0, rows, nll.double())
        return list(zip(per_doc.tolist(), valid.sum(1).tolist()))


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
        if ppl is not None:  # the model scores only what the cheap rules kept, a batch at a time
            passed = [i for i, v in enumerate(verdicts) if v is None]
            for i, p in zip(passed, ppl([docs[i][0] for i in passed])):
                if p > max_ppl:
                    verdicts[i] = "perplexity", {"value": round(p, 2)}
        return verdicts

    counts: Counter = Counter()
    dst.mkdir(parents=True, exist_ok=True)
    root = src if src.is_dir() else src.parent
    with open(dst / "removed.jsonl", "w", encoding="utf-8") as log:
        text_pass(files, root, dst, judge, log, counts, "filter")
    rules = dict(min_chars=min_chars, max_chars=max_chars, max_symbol_ratio=max_symbol_ratio,
                 max_repetition=max_repetition, ppl_model=ppl_model, max_ppl=max_ppl)
    summary = dict(input=str(src), out=str(dst), rules=rules, **dict(sorted(counts.items())))
    (dst / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
