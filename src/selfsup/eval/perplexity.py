"""Perplexity of a causal LM: on held-out text (`selfsup eval --task perplexity`), and per document (`selfsup data
filter --ppl-model`).

Protocol of the held-out score: the file's documents are tokenized with the run's tokenizer, each followed by EOS,
packed into non-overlapping windows of model.context tokens (the same packing as training, no attention across
documents), and every token after the first is scored once. Perplexity = exp(total NLL / scored tokens). Per
document: [EOS] + its tokens up to the model's context, documents of similar length padded into one forward pass.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from tokenizers import Tokenizer

from selfsup.config import DataConfig
from selfsup.data.errors import DataError
from selfsup.data.read.text import read_documents, source_files
from selfsup.data.read.tokenizer import IGNORE, eos_id


@torch.no_grad()
def perplexity(objective, tok: Tokenizer, path: str, context: int, data: DataConfig, device: torch.device,
               batch_size: int = 16, progress=None) -> dict:
    """`data`: the run's data settings, so held-out text is read as its corpus was (suffixes, field, documents)."""
    skipped: Counter = Counter()
    docs = list(read_documents(source_files(path, data.extensions), skipped, data.max_doc_chars,
                               field=data.text_field, document=data.document))
    if not docs:
        raise DataError(f"'{path}' holds no usable documents (skipped: {dict(skipped) or 'none'})")
    eos = eos_id(tok)
    ids = np.fromiter((t for enc in tok.encode_batch(docs, add_special_tokens=False) for t in enc.ids + [eos]),
                      dtype=np.int64)
    n_windows = math.ceil((len(ids) - 1) / context)
    tokens = np.full((n_windows, context + 1), eos, dtype=np.int64)
    labels = np.full((n_windows, context + 1), IGNORE, dtype=np.int64)
    for w in range(n_windows):
        chunk = ids[w * context: w * context + context + 1]
        tokens[w, :len(chunk)] = chunk
        labels[w, :len(chunk)] = chunk
    nll, count = 0.0, 0
    batches = range(0, n_windows, batch_size)
    for start in (progress(batches) if progress else batches):
        batch = {"tokens": torch.from_numpy(tokens[start:start + batch_size]).to(device),
                 "labels": torch.from_numpy(labels[start:start + batch_size]).to(device)}
        out = objective(batch)
        nll += out.loss.item()
        count += int(out.count)
    loss = nll / count
    return dict(task="perplexity", data=path, documents=len(docs), skipped=dict(skipped), tokens=count,
                loss=loss, perplexity=math.exp(loss),
                protocol=f"documents + EOS packed into non-overlapping windows of {context} tokens, no attention "
                         "across documents, every token after the first scored once; ppl = exp(mean NLL)")


class Perplexity:
    """Per-document perplexity under a trained causal LM run, a batch of documents per call: documents sorted by
    length are padded (after their end, so causal attention never sees the padding, and padding is not scored) into
    forward passes of at most `tokens` tokens, each scoring its documents separately."""

    def __init__(self, run_dir: str, device: torch.device, tokens: int = 4096):
        from selfsup.rundir import open_run

        cfg, self.objective, self.tok = open_run(run_dir, device)
        if not cfg.causal:
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
