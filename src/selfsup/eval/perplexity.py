"""Perplexity of a causal LM on held-out text.

Protocol: the file's documents are tokenized with the run's tokenizer, each followed by EOS, packed into
non-overlapping windows of model.context tokens (the same packing as training, no attention across documents),
and every token after the first is scored once. Perplexity = exp(total NLL / scored tokens).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from tokenizers import Tokenizer

from selfsup.data.text import DataError, read_documents, source_files
from selfsup.data.tokenizer import eos_id
from selfsup.data.tokenizer import IGNORE


@torch.no_grad()
def perplexity(objective, tok: Tokenizer, path: str, context: int, max_doc_chars: int, device: torch.device,
               batch_size: int = 16, progress=None) -> dict:
    skipped: Counter = Counter()
    docs = list(read_documents(source_files(path), skipped, max_doc_chars))
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
