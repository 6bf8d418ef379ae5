"""The indexes behind `selfsup data dedup`, on disk (stdlib sqlite3 and a memory-mapped file), so a corpus whose
index outgrows memory still deduplicates: memory holds sqlite's page cache (bounded) and one batch, whatever the
corpus size.

    TextIndex   exact: first location of each normalised-text hash
                docs:  kept documents' locations and MinHash signatures (long) or normalised texts (short), ids in
                       reading order
                bands: (key, doc) for every LSH band of every kept document, and a short one's deletion keys
    ImageIndex  kept images' perceptual hashes (a flat file, memory-mapped) and files (sqlite)

The indexes are scratch files of one run: no journal, no fsync. Text queries and inserts go a batch at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

_PARAMS = 30_000  # bound parameters per statement (sqlite allows 32,766)
_CACHE_KIB = 65_536  # sqlite page cache per index: the part of the index held in memory
_SCAN = 1 << 20  # image hashes compared at a time
_PENDING = 4096  # image hashes held in memory before they are written


def _connect(path: Path, schema: str) -> sqlite3.Connection:
    # a query's text has one ? per key, so each batch's is new, and one of 30,000 holds megabytes: the default cache of
    # 128 statements held 400 MB at 100,000 short documents
    db = sqlite3.connect(path, cached_statements=4)
    db.executescript(f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-{_CACHE_KIB};"
                     f"PRAGMA temp_store=FILE; {schema}")
    return db


def _chunks(items: Sequence, size: int = _PARAMS) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def band_keys(sigs: np.ndarray, bands: int, rows: int, start: int = 0) -> np.ndarray:
    """(N, num_perm) uint32 MinHash signatures -> (N, bands) int64 keys: a 64-bit hash of each band's `rows`
    values and of the band's number (numbered from `start`). Two documents share a key when they share a band (as
    datasketch's MinHashLSH buckets them); a spurious 64-bit collision only adds a candidate, which verification
    rejects."""
    n = sigs.shape[0]
    x = sigs[:, :bands * rows].reshape(n, bands, rows).astype(np.uint64)  # (N, bands, rows)
    numbers = np.arange(start, start + bands, dtype=np.uint64)
    h = np.broadcast_to(numbers + np.uint64(0xCBF29CE484222325), (n, bands)).copy()
    for r in range(rows):  # FNV-1a over 32-bit words, then splitmix64's finaliser
        h = (h ^ x[:, :, r]) * np.uint64(0x100000001B3)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (h ^ (h >> np.uint64(31))).view(np.int64)  # (N, bands)


class TextIndex:
    def __init__(self, path: Path):
        self.db = _connect(path, """
            CREATE TABLE exact (digest BLOB PRIMARY KEY, file INTEGER, line INTEGER) WITHOUT ROWID;
            CREATE TABLE docs (id INTEGER PRIMARY KEY, file INTEGER, line INTEGER, sig BLOB, text TEXT);
            CREATE TABLE bands (key INTEGER, doc INTEGER, PRIMARY KEY (key, doc)) WITHOUT ROWID;""")
        self.n_docs = 0

    def exact(self, digests: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """The first (file, line) of each digest already indexed."""
        found = {}
        unique = list(set(digests))
        for part in _chunks(unique):
            rows = self.db.execute(f"SELECT digest, file, line FROM exact WHERE digest IN ({_marks(len(part))})", part)
            found.update((d, (f, n)) for d, f, n in rows)
        return found

    def candidates(self, keys: np.ndarray) -> dict[int, list[int]]:
        """Band key -> ids of the indexed documents that have it, ascending."""
        found: dict[int, list[int]] = {}
        unique = np.unique(keys).tolist()
        for part in _chunks(unique):
            rows = self.db.execute(f"SELECT key, doc FROM bands WHERE key IN ({_marks(len(part))}) ORDER BY doc",
                                   part)
            for key, doc in rows:
                found.setdefault(key, []).append(doc)
        return found

    def documents(self, ids: list[int], num_perm: int) -> dict[int, tuple[np.ndarray | str, tuple[int, int]]]:
        """id -> (signature (num_perm,) uint32 or text, (file, line))."""
        found = {}
        for part in _chunks(ids):
            rows = self.db.execute(f"SELECT id, sig, text, file, line FROM docs WHERE id IN ({_marks(len(part))})",
                                   part)
            found.update((i, (text if sig is None else np.frombuffer(sig, dtype=np.uint32, count=num_perm), (f, n)))
                         for i, sig, text, f, n in rows)
        return found

    def add(self, exact: list[tuple[bytes, int, int]], docs: list[tuple[np.ndarray | str, tuple[int, int]]],
            keys: list[np.ndarray]) -> None:
        """Record first locations of new digests, and kept documents (a signature or a text; ids from n_docs on)
        with their keys."""
        self.db.executemany("INSERT INTO exact VALUES (?, ?, ?)", exact)
        ids = range(self.n_docs, self.n_docs + len(docs))
        self.db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)",
                            ((i, f, n, None, held) if isinstance(held, str) else (i, f, n, held.tobytes(), None)
                             for i, (held, (f, n)) in zip(ids, docs)))
        self.db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?)",
                            ((key, i) for i, row in zip(ids, keys) for key in row.tolist()))
        self.db.commit()
        self.n_docs += len(docs)

    def close(self) -> None:
        self.db.close()


class ImageIndex:
    """Kept images' 64-bit hashes in a flat file read memory-mapped, searched by a vectorised scan a chunk at a time
    (~1 ns a comparison): at pHash thresholds a third of all images share a band of the hash with any other, so a
    banded index would fetch nearly as many candidates as the scan compares. Names of kept images in sqlite."""

    def __init__(self, folder: Path):
        self.db = _connect(folder / "images.sqlite", "CREATE TABLE images (id INTEGER PRIMARY KEY, file TEXT);")
        self.path = folder / "hashes.u64"
        self.written = np.zeros(0, dtype=np.uint64)  # the hashes in the file, memory-mapped
        self.pending, self.n_pending = np.zeros(_PENDING, dtype=np.uint64), 0  # the hashes not yet written

    def first_within(self, h: int, distance: int) -> str | None:
        """The first kept image whose hash is within `distance` bits of `h`."""
        parts = [(start, self.written[start:start + _SCAN]) for start in range(0, len(self.written), _SCAN)]
        parts.append((len(self.written), self.pending[:self.n_pending]))
        for start, part in parts:
            close = np.flatnonzero(np.bitwise_count(part ^ np.uint64(h)) <= distance)
            if len(close):
                return self.db.execute("SELECT file FROM images WHERE id = ?", (start + int(close[0]),)).fetchone()[0]
        return None

    def add(self, h: int, file: str) -> None:
        self.db.execute("INSERT INTO images VALUES (?, ?)", (len(self.written) + self.n_pending, file))
        self.pending[self.n_pending] = h
        self.n_pending += 1
        if self.n_pending == _PENDING:
            with open(self.path, "ab") as f:
                f.write(self.pending.tobytes())
            self.written = np.memmap(self.path, dtype=np.uint64, mode="r")
            self.n_pending = 0
            self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()
