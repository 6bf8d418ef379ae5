"""Decoding media once, in worker processes, into arrays streamed to disk: what the image, audio, video and pair
caches share.

    for chunk, result in decoded(items, decode_chunk, args, workers, "decoding images"): ...

`decode_chunk(items, *args)` runs in a worker on up to CHUNK items and returns anything picklable (typically the
rows that decoded, stacked, and a skip reason or None per item). Results come back in input order; at most two
chunks per worker are in flight, so memory stays bounded however large the set. Progress (items done, of how many
when `items` has a length) goes to stderr under the name `what`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tarfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from selfsup.data.skipped import skip
from selfsup.progress import Progress

CHUNK = 64  # items per worker task: amortises pickling, yet keeps the workers evenly loaded
NPY_HEADER = 128  # bytes reserved for a .npy header, so rows stream to disk before their count is known


class Skip(Exception):
    """An input that cannot be used; `reason` is what the summary counts it under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decoded(items: Iterable, decode_chunk: Callable, args: tuple, workers: int,
            what: str) -> Iterator[tuple[list, object]]:
    """(chunk of items, decode_chunk(chunk, *args)) in input order; workers=0 decodes in this process."""
    with Progress(what, len(items) if hasattr(items, "__len__") else None, "items") as progress:
        items = iter(items)
        for chunk, result in in_order(iter(lambda: list(islice(items, CHUNK)), []), decode_chunk, args, workers):
            yield chunk, result
            progress.advance(len(chunk))


def in_order(chunks: Iterable[list], decode_chunk: Callable, args: tuple,
             workers: int) -> Iterator[tuple[list, object]]:
    """(chunk, decode_chunk(chunk, *args)) for chunks of the caller's making, in their order, at most two a worker
    in flight; workers=0 decodes in this process."""
    if workers == 0:
        for chunk in chunks:
            yield chunk, decode_chunk(chunk, *args)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(decode_chunk, chunk, *args)))
            if len(pending) >= 2 * workers:
                chunk, future = pending.popleft()
                yield chunk, future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, future.result()


def tar_samples(f: Path, rel: str, wanted: tuple[str, ...], skipped: Counter,
                max_bytes: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per webdataset sample of a .tar: as in webdataset, a sample is a run of
    consecutive members sharing a key (the member path up to the first dot of its basename); only members whose
    extension (lower case, no dot) is in `wanted` are read. A damaged archive counts as 'corrupt tar'; a sample
    with a wanted member over `max_bytes` is skipped unread as 'file too large' (members are read into memory).
    `rel`: the shard's name in what is skipped (data/skipped.py)."""
    key, sample, too_large = None, {}, False
    try:
        with tarfile.open(f) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{folder}/{stem}" if folder else stem
                if k != key:
                    if key is not None and not too_large:
                        yield key, sample
                    key, sample, too_large = k, {}, False
                if ext.lower() in wanted and not too_large:
                    if member.size > max_bytes:
                        skip(skipped, "file too large", rel, k)
                        too_large, sample = True, {}
                    else:
                        sample[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError):
        skip(skipped, "corrupt tar", rel)
        return
    if key is not None and not too_large:
        yield key, sample


def build_cache(out: Path, what: str, files: int, workers: int | None, build: Callable[[Path, int], None],
                log, needs: tuple[str, ...] = ()) -> None:
    """A cache folder made once: a hit when `out` holds meta.json and the files `needs` names (what a cache of the
    same key built by an older version may lack), else build(folder, workers) via build_once."""
    if (out / "meta.json").is_file() and all((out / name).is_file() for name in needs):
        log(f"{what} cache hit: {out}")
        return
    workers = default_workers(workers)
    log(f"decoding {what} from {files} file(s) into {out} with {workers or 'no'} worker process(es)")
    build_once(out, lambda tmp: build(tmp, workers))


def build_once(out: Path, build: Callable[[Path], None]) -> None:
    """build(folder) into a temporary sibling of `out`, then renamed to `out`: a killed run leaves no half-written
    cache, and a finished one is complete or absent."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def digest(f: Path) -> bytes:
    """sha256 of a file's bytes, streamed (shards may not fit in memory); an unreadable file gets a marker, so a
    later readable version gets a new cache key (decoding counts it meanwhile)."""
    try:
        with open(f, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").digest()
    except OSError:
        return b"unreadable"


def default_workers(workers: int | None) -> int:
    return min(os.cpu_count() or 1, 8) if workers is None else workers


class NpyWriter:
    """Appends rows to a .npy file whose row count is only known at the end: the header is padded to a fixed
    NPY_HEADER bytes, so closing rewrites it in place instead of copying the data."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype):
        self.row_shape, self.dtype, self.rows = row_shape, np.dtype(dtype), 0
        self._file = open(path, "wb")
        self._file.write(self._header())

    def write(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.rows += len(rows)

    def close(self) -> None:
        if not self._file.closed:
            self._file.seek(0)
            self._file.write(self._header())
            self._file.close()

    def _header(self) -> bytes:
        d = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)})
        body = d.ljust(NPY_HEADER - 11) + "\n"  # 6 magic + 2 version + 2 length bytes, then the dict
        return np.lib.format.magic(1, 0) + struct.pack("<H", len(body)) + body.encode("latin1")
