"""Tokenizing a corpus once into memory-mapped token shards, cached by content hash.

The cache key covers every source file's bytes, the data settings and the tokenizer, so a second run on the
same corpus starts at once and a changed file is never served stale. Documents are split into train and
validation by a hash of their text (stable under reordering; exact duplicates land on the same side), each
document is followed by EOS, and a split's tokens are written as flat `.bin` shards of uint16 or uint32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from selfsup.config import BUILTIN_CORPUS, DataConfig
from selfsup.data.errors import DataError
from selfsup.data.read import tokenizer as toks
from selfsup.data.read.hf_datasets import STATE, dataset_files, is_datasets_folder
from selfsup.data.read.text import read_documents, source_files
from selfsup.progress import Progress

FORMAT = 1  # bump when the shard layout changes
SHARD_TOKENS = 1 << 27  # 128 Mi tokens a shard
ENCODE_CHUNK = 2048  # documents encoded per call (tokenizers parallelises inside a call)


@dataclass
class Corpus:
    dir: Path
    tokenizer: Tokenizer
    train: list[Path]
    val: list[Path]
    meta: dict  # documents, skipped, tokens per split, unigram baseline, dtype
    content: str  # a digest of the files' names and bytes alone (_cache_key), as a run's identity compares them

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])


def default_cache() -> Path:
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


def cache_root(cache_dir: str | None) -> Path:
    """Where caches go: data.cache_dir when set, else SELFSUP_CACHE or ~/.cache/selfsup."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache()


def prepare(cfg: DataConfig, vocab_size: int, log=print) -> Corpus:
    given = toks.load(cfg.tokenizer, "data.tokenizer") if cfg.tokenizer else None  # a bad one fails before any work
    if given is not None and given.get_vocab_size() > vocab_size:
        raise DataError(f"data.tokenizer has {given.get_vocab_size()} tokens but model.vocab_size is {vocab_size}; "
                        f"expected model.vocab_size >= {given.get_vocab_size()}")
    files = source_files(cfg.path, cfg.extensions)
    if cfg.path != BUILTIN_CORPUS and is_datasets_folder(folder := Path(cfg.path).expanduser()):
        split = dataset_files(folder, f"data.path '{cfg.path}'")[0]
        log(f"data.path '{cfg.path}': a datasets folder, reading {f'its {split!r} split' if split else 'its rows'} "
            f"(column {cfg.text_field!r}, {len(files)} .arrow file(s))")
    root = cache_root(cfg.cache_dir)
    key, content = _cache_key(cfg, vocab_size, files)
    out = root / "tokens" / key
    if (out / "meta.json").is_file():
        log(f"token cache hit: {out}")
        return _open(out, content)
    log(f"tokenizing {len(files)} file(s) into {out}")
    tmp = out.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build(cfg, vocab_size, files, tmp, log, given)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)  # atomic: a killed run leaves no half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(out, content)


def is_val(text: str, fraction: float) -> bool:
    return zlib.crc32(text.encode("utf-8")) % 1_000_000 < fraction * 1_000_000


def _cache_key(cfg: DataConfig, vocab_size: int, files: list[Path]) -> tuple[str, str]:
    """(key, content): the key covers the settings, the tokenizer and every file's name and bytes; the content the
    files alone, as a run's identity compares them."""
    h, content = hashlib.sha256(), hashlib.sha256()
    settings = dict(format=FORMAT, builtin=cfg.path == BUILTIN_CORPUS, val_fraction=cfg.val_fraction,
                    max_doc_chars=cfg.max_doc_chars, vocab_size=vocab_size, document=cfg.document,
                    text_field=cfg.text_field)  # data.extensions changes which files are hashed
    h.update(json.dumps(settings, sort_keys=True).encode())
    if cfg.tokenizer:
        h.update(Path(cfg.tokenizer).expanduser().read_bytes())
    for f in _hashed(files):
        for hasher in (h, content):
            hasher.update(f.name.encode())
        with open(f, "rb") as handle:  # a chunk at a time: a corpus file may be larger than memory
            while chunk := handle.read(1 << 20):
                h.update(chunk)
                content.update(chunk)
    return h.hexdigest()[:24], content.hexdigest()[:24]


def _hashed(files: list[Path]) -> list[Path]:
    """`files` and, after a datasets folder's .arrow files, its state.json (which names them and their order)."""
    states = dict.fromkeys(f.parent / STATE for f in files if f.suffix == ".arrow" and (f.parent / STATE).is_file())
    return [*files, *states]


def _documents(cfg: DataConfig, files: list[Path], skipped: Counter):
    return read_documents(files, skipped, cfg.max_doc_chars, builtin=cfg.path == BUILTIN_CORPUS,
                          field=cfg.text_field, document=cfg.document)


def _build(cfg: DataConfig, vocab_size: int, files: list[Path], out: Path, log, tok: Tokenizer | None) -> None:
    """Token shards of `files` in `out`, with `tok` (data.tokenizer) or a tokenizer trained on the training split."""
    if tok is None:
        log(f"training a byte-level BPE tokenizer ({vocab_size} tokens)")
        train_docs = (d for d in _documents(cfg, files, Counter()) if not is_val(d, cfg.val_fraction))
        tok = toks.train_bpe(train_docs, vocab_size)
    tok.save(str(out / "tokenizer.json"))
    eos = toks.eos_id(tok)
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32

    skipped: Counter = Counter()
    writers = {"train": _ShardWriter(out, "train", dtype), "val": _ShardWriter(out, "val", dtype)}
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)  # train token frequencies, for the unigram baseline
    docs = {"train": 0, "val": 0}
    batch: list[str] = []

    def flush():
        chunk = {"train": [], "val": []}
        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False)):
            split = "val" if is_val(text, cfg.val_fraction) else "train"
            chunk[split] += enc.ids
            chunk[split].append(eos)
            docs[split] += 1
        for split, ids in chunk.items():
            ids = np.array(ids, dtype=dtype)
            writers[split].write(ids)
            if split == "train":
                counts[:] += np.bincount(ids, minlength=len(counts))
        batch.clear()

    with Progress("tokenizing", unit="documents") as progress:
        for text in _documents(cfg, files, skipped):
            batch.append(text)
            if len(batch) == ENCODE_CHUNK:
                flush()
                progress.advance(ENCODE_CHUNK)
        progress.advance(len(batch))
        flush()
    for w in writers.values():
        w.close()
    n_train, n_val = writers["train"].total, writers["val"].total
    if docs["val"] == 0:
        raise DataError(f"data.path '{cfg.path}': none of its {docs['train']} documents fell into the validation "
                        f"split; expected more documents or a larger data.val_fraction (now {cfg.val_fraction})")
    meta = dict(format=FORMAT, path=cfg.path, files=len(files), dtype=np.dtype(dtype).name,
                vocab=tok.get_vocab_size(), eos_id=eos, documents=docs, skipped=dict(sorted(skipped.items())),
                tokens={"train": n_train, "val": n_val},
                shards={"train": writers["train"].names, "val": writers["val"].names},
                unigram_ppl=_unigram_ppl(counts, [out / n for n in writers["val"].names], dtype))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


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
        if not len(ids):
            return
        if self._file is None or self._in_shard >= SHARD_TOKENS:
            self._open_next()
        self._file.write(ids.tobytes())
        self._in_shard += len(ids)
        self.total += len(ids)

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


def _open(out: Path, content: str) -> Corpus:
    meta = json.loads((out / "meta.json").read_text())
    tok = toks.load(out / "tokenizer.json")
    return Corpus(out, tok, [out / n for n in meta["shards"]["train"]], [out / n for n in meta["shards"]["val"]], meta,
                  content)
