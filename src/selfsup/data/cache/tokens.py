"""A corpus as memory-mapped token shards: tokenized once and cached by content hash, or ahead of training by
`selfsup data tokenize` into a folder that data.path then names.

The cache key covers every source file's bytes, the data settings and the tokenizer, so a second run on the
same corpus starts at once and a changed file is never served stale. A shard folder, the cache's or the
command's (encode.py writes both), holds meta.json, tokenizer.json and the `.bin` shards; its meta records the
settings it was made with and the digest of the files it was made from, so a run reading the folder reads what a
run on the corpus would: the same batches, the same identity (train/identity.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from selfsup.config import BUILTIN_CORPUS, DataConfig
from selfsup.data.cache.decoding import build_once, default_workers
from selfsup.data.cache.encode import FORMAT, is_val, write_shards
from selfsup.data.errors import DataError
from selfsup.data.quality.cleaning import check_paths
from selfsup.data.read import tokenizer as toks
from selfsup.data.read.hf_datasets import STATE, dataset_files, is_datasets_folder
from selfsup.data.read.text import read_documents, source_files

SETTINGS = ("document", "extensions", "text_field", "val_fraction", "max_doc_chars")  # the data keys shards depend on


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
    if is_shard_folder(cfg.path):
        return open_shards(cfg, vocab_size, log)
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
    workers = default_workers(cfg.workers)
    log(f"tokenizing {len(files)} file(s) into {out} with {workers or 'no'} worker process(es)")
    build_once(out, lambda tmp: _build(cfg, vocab_size, files, tmp, log, given, content, workers))
    return _open(out, content)


def tokenize(cfg: DataConfig, vocab_size: int | None, out: Path, log=print) -> dict:
    """`selfsup data tokenize`: the shards of cfg.path written into `out` (a new or empty folder that overlaps
    nothing read), which a run then names as its data.path; their meta. A byte-level BPE of `vocab_size` tokens is
    trained on the training documents unless cfg.tokenizer names one."""
    given = toks.load(cfg.tokenizer, "--tokenizer") if cfg.tokenizer else None
    files = source_files(cfg.path, cfg.extensions)
    _check_out(cfg.path, files, out)
    content = _cache_key(cfg, vocab_size or 0, files)[1]
    workers = default_workers(cfg.workers)
    log(f"tokenizing {len(files)} file(s) of {cfg.path} into {out} with {workers or 'no'} worker process(es)")
    build_once(out, lambda tmp: _build(cfg, vocab_size, files, tmp, log, given, content, workers))
    return json.loads((out / "meta.json").read_text())


def is_shard_folder(path: str) -> bool:
    """A folder of token shards (selfsup data tokenize's, or a cache entry) rather than text to tokenize."""
    p = Path(path).expanduser()
    return (p / "meta.json").is_file() and (p / "tokenizer.json").is_file()


def open_shards(cfg: DataConfig, vocab_size: int, log=print) -> Corpus:
    """The shard folder data.path names, read in place (every machine may read the same one) once it is known to
    be what a run with these settings would have made: each refusal is one line naming what differs."""
    p, where = Path(cfg.path).expanduser(), f"data.path '{cfg.path}'"
    try:
        meta = json.loads((p / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: its meta.json could not be read ({e}); expected token shards written by "
                        "`selfsup data tokenize`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not {"settings", "content"} <= meta.keys():
        raise DataError(f"{where} holds a meta.json that is not that of token shards of this version (format "
                        f"{FORMAT}); expected a folder written by `selfsup data tokenize`")
    for key in SETTINGS:
        if getattr(cfg, key) != meta["settings"][key]:
            raise DataError(f"{where} was tokenized with data.{key}={_shown(meta['settings'][key])}, this run has "
                            f"data.{key}={_shown(getattr(cfg, key))}; expected the same (set data.{key}), or the "
                            "shards tokenized again")
    tok = toks.load(p / "tokenizer.json", f"{where}'s tokenizer")
    # data.tokenizer: set by the user, model.init or a continued run; the same tokenizer, however its file is laid out
    if cfg.tokenizer and toks.load(cfg.tokenizer, "data.tokenizer").to_str() != tok.to_str():
        raise DataError(f"data.tokenizer '{cfg.tokenizer}' is not the tokenizer {where} was made with "
                        f"({p / 'tokenizer.json'}); expected no data.tokenizer, that tokenizer, or the shards "
                        f"tokenized with --tokenizer {cfg.tokenizer}")
    if tok.get_vocab_size() > vocab_size:
        raise DataError(f"{where} was tokenized with {tok.get_vocab_size()} tokens but model.vocab_size is "
                        f"{vocab_size}; expected model.vocab_size >= {tok.get_vocab_size()}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, names in meta["shards"].items():
        held = sum((p / n).stat().st_size // itemsize if (p / n).is_file() else 0 for n in names)
        if held != meta["tokens"][split]:
            raise DataError(f"{where} holds {held:,} {split} tokens in {', '.join(names)}, its meta.json says "
                            f"{meta['tokens'][split]:,}; expected the folder whole, as `selfsup data tokenize` "
                            "wrote it (copied in full)")
    log(f"token shards: {p} ({sum(meta['tokens'].values()):,} tokens of {meta['path']})")
    return _open(p, meta["content"])


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def _check_out(path: str, files: list[Path], out: Path) -> None:
    """`out` a new or empty folder, neither inside what is read nor holding it: users' data is never written over."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out '{out}' {'is a file' if out.is_file() else 'is not empty'}; expected a new or "
                        "empty folder")
    if path != BUILTIN_CORPUS and not path.startswith("hf:"):
        check_paths(path, str(out))
    d = out.expanduser().resolve()
    if any(d in f.resolve().parents for f in files):
        raise DataError(f"--out '{out}' holds files of '{path}', which writing there could overwrite while they are "
                        "read; expected a new folder elsewhere")


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


def _build(cfg: DataConfig, vocab_size: int | None, files: list[Path], out: Path, log, tok: Tokenizer | None,
           content: str, workers: int) -> None:
    """Token shards of `files` in `out`, with `tok` (data.tokenizer) or a tokenizer trained on the training split."""
    if tok is None:
        log(f"training a byte-level BPE tokenizer ({vocab_size} tokens)")
        train_docs = (d for d in _documents(cfg, files, Counter()) if not is_val(d, cfg.val_fraction))
        tok = toks.train_bpe(train_docs, vocab_size)
    skipped: Counter = Counter()
    meta = write_shards(_documents(cfg, files, skipped), out, tok, cfg.val_fraction, workers)
    if meta["documents"]["val"] == 0:
        raise DataError(f"data.path '{cfg.path}': none of its {meta['documents']['train']} documents fell into the "
                        f"validation split; expected more documents or a larger data.val_fraction (now "
                        f"{cfg.val_fraction})")
    meta.update(path=cfg.path, files=len(files), skipped=dict(sorted(skipped.items())), content=content,
                settings={key: getattr(cfg, key) for key in SETTINGS})
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _open(out: Path, content: str) -> Corpus:
    meta = json.loads((out / "meta.json").read_text())
    tok = toks.load(out / "tokenizer.json")
    return Corpus(out, tok, [out / n for n in meta["shards"]["train"]], [out / n for n in meta["shards"]["val"]], meta,
                  content)
