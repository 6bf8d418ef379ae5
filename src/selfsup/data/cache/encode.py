"""Documents into flat token shards, on every core: what the token cache (tokens.py) and `selfsup data tokenize`
write.

Documents are split into train and validation by a hash of their text (stable under reordering; exact duplicates
land on the same side), each is followed by EOS, and a split's tokens are written as flat `.bin` shards of uint16
or uint32. This process reads documents while worker processes (data.workers) encode chunks of them: tokenizers'
own threads share out the documents of one call, but reading, splitting and turning encodings into arrays stay on
one thread, 15% of the CPU time (a ceiling of ~6.6 cores); with workers what stays here is 3% (BENCHMARKS.md).
Chunks are written in the order they were read, so the shards are the same bytes for any number of workers.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from selfsup.data.cache.decoding import in_order
from selfsup.data.read import tokenizer as toks
from selfsup.progress import Progress

FORMAT = 1  # bump when the shard layout changes
SHARD_TOKENS = 1 << 27  # 128 Mi tokens a shard
CHUNK_CHARS = 1 << 20  # characters of documents a task encodes (~0.3 s of a core): pickling and waiting stay small


def is_val(text: str, fraction: float) -> bool:
    return zlib.crc32(text.encode("utf-8")) % 1_000_000 < fraction * 1_000_000


def write_shards(docs: Iterable[str], out: Path, tok: Tokenizer, val_fraction: float, workers: int) -> dict:
    """Every document of `docs` tokenized into shards in `out`, beside its tokenizer.json: what meta.json records
    of them (documents, tokens and shards per split, dtype, unigram baseline). workers=0 encodes in this
    process."""
    tok.save(str(out / "tokenizer.json"))
    digest = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    eos = toks.eos_id(tok)
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    writers = {"train": _ShardWriter(out, "train", dtype), "val": _ShardWriter(out, "val", dtype)}
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)  # train token frequencies, for the unigram baseline
    documents = {"train": 0, "val": 0}
    args = (str(out / "tokenizer.json"), digest, val_fraction, eos, dtype)
    with _one_thread_each(workers), Progress("tokenizing", unit="documents") as progress:
        for chunk, (train, val, n_val) in in_order(_chunks(docs), _encode, args, workers):
            writers["train"].write(train)
            writers["val"].write(val)
            counts += np.bincount(train, minlength=len(counts))
            documents["train"] += len(chunk) - n_val
            documents["val"] += n_val
            progress.advance(len(chunk), tokens=f"{writers['train'].total + writers['val'].total:,} tokens")
    for w in writers.values():
        w.close()
    return dict(format=FORMAT, dtype=np.dtype(dtype).name, vocab=tok.get_vocab_size(), eos_id=eos,
                documents=documents, tokens={s: w.total for s, w in writers.items()},
                shards={s: w.names for s, w in writers.items()},
                unigram_ppl=_unigram_ppl(counts, [out / n for n in writers["val"].names], dtype))


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    """Runs of documents of about CHUNK_CHARS characters together."""
    chunk, size = [], 0
    for text in docs:
        chunk.append(text)
        size += len(text)
        if size >= CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode(docs: list[str], tokenizer: str, digest: str, val_fraction: float, eos: int,
            dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """(train ids, val ids, validation documents) of a chunk: each document's ids then EOS, in order."""
    ids: dict[bool, list[list[int]]] = {False: [], True: []}
    for text, enc in zip(docs, _tokenizer(tokenizer, digest).encode_batch(docs, add_special_tokens=False)):
        ids[is_val(text, val_fraction)].append(enc.ids + [eos])
    train, val = (np.array(list(chain.from_iterable(ids[v])), dtype=dtype) for v in (False, True))  # (tokens,)
    return train, val, len(ids[True])


@lru_cache(maxsize=1)
def _tokenizer(path: str, digest: str) -> Tokenizer:
    """A worker reads the tokenizer once, not once a chunk; `digest` (of the file) tells two builds apart."""
    return Tokenizer.from_file(path)


@contextmanager
def _one_thread_each(workers: int):
    """Worker processes encode one chunk each on one core: tokenizers' threads off in them (set before they
    fork, which also keeps tokenizers from warning about a fork after its threads ran, e.g. BPE training)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if workers:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if workers and before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        elif workers:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _unigram_ppl(counts: np.ndarray, val_shards: list[Path], dtype) -> float:
    """Perplexity of a unigram model of the training tokens (add-one smoothed) on the validation tokens:
    the floor a language model must beat to have learned anything beyond token frequencies."""
    logp = np.log((counts + 1) / (counts.sum() + len(counts)))
    nll, n = 0.0, 0
    for s in val_shards:
        ids = np.memmap(s, dtype=dtype, mode="r")
        nll -= float(logp[ids].sum())
        n += len(ids)
    return math.exp(nll / max(n, 1))


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype):
        self.out, self.split, self.dtype = out, split, dtype
        self.names: list[str] = []
        self.total = 0
        self._file = None
        self._in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        """Append `ids`, starting a new shard every SHARD_TOKENS tokens exactly: where shards end depends on the
        tokens alone, not on how they were chunked."""
        while len(ids):
            if self._file is None or self._in_shard == SHARD_TOKENS:
                self._open_next()
            part, ids = ids[:SHARD_TOKENS - self._in_shard], ids[SHARD_TOKENS - self._in_shard:]
            self._file.write(part.tobytes())
            self._in_shard += len(part)
            self.total += len(part)

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.names):05d}.bin"
        self.names.append(name)
        self._file = open(self.out / name, "wb")
        self._in_shard = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
