"""Duplicate removal that never touches its input: the kept data is written to a new folder, every removal is
logged with its reason and what it duplicates, and a summary is printed and written.

Text (.txt: a document per line; .jsonl: a record per line, deduplicated on its `text`): exact copies by a hash of
the text with whitespace collapsed and case folded; near-duplicates by MinHash (datasketch) of word 5-gram
shingles: documents that share a band of datasketch's MinHashLSH banding for `near` (its (bands, rows) that
minimise false positives + false negatives) are candidates, and a candidate is a duplicate when the estimated
Jaccard similarity of the two signatures is ≥ `near` (texts under 5 words are compared exactly only).
Images: near-duplicates by perceptual hash (imagehash's pHash, 64 bits) within a Hamming distance of (1 − near) ·
64 of a kept image's. The first occurrence wins: files in sorted order, lines in file order.

Documents stream a batch at a time and the indexes live on disk (data/quality/dedup_index.py, a scratch folder in OUT
removed at the end), so memory does not grow with the corpus.

    OUT/<same relative paths>   the kept lines (byte for byte) or the kept image files
    OUT/removed.jsonl           {"file", "line" or null, "reason": "exact" | "near", "duplicate_of": {"file", "line"}}
    OUT/summary.json            counts read, kept and removed by reason, skipped lines by reason, settings
    OUT/.selfsup-logs.json      names the two logs, so no selfsup reader (filter, train) takes them for data
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from selfsup.data.errors import DataError
from selfsup.data.quality.cleaning import LOGS, Doc, check_log_names, check_paths, text_pass
from selfsup.data.quality.dedup_index import ImageIndex, TextIndex, band_keys
from selfsup.data.read.image import IMAGE_SUFFIXES
from selfsup.data.read.listing import data_files, mark_logs
from selfsup.data.read.text import TEXT_SUFFIXES
from selfsup.progress import track

SHINGLE = 5  # words per shingle


def dedup(path: str, out: str, near: float = 0.8, num_perm: int = 128, batch_size: int = 1024) -> dict:
    if not 0 < near <= 1:
        raise DataError(f"--near {near}: expected a similarity in (0, 1]")
    src, dst = check_paths(path, out)
    files = [src] if src.is_file() else data_files(src)  # a former pass's logs are not data
    texts = [f for f in files if f.suffix in TEXT_SUFFIXES]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not texts and not images:
        raise DataError(f"'{path}' holds no text (.txt, .jsonl) or image files")
    root = src if src.is_dir() else src.parent
    check_log_names(texts + images, root, path, "dedup")  # what it copies
    dst.mkdir(parents=True, exist_ok=True)
    mark_logs(dst, LOGS)  # before they exist: never read as data
    counts: Counter = Counter()
    with open(dst / "removed.jsonl", "w", encoding="utf-8") as log, \
            tempfile.TemporaryDirectory(prefix=".dedup-index-", dir=dst) as scratch:
        if texts:
            judge = TextJudge(Path(scratch) / "text.sqlite", [f.relative_to(root).as_posix() for f in texts], near,
                              num_perm)
            text_pass(texts, root, dst, judge, log, counts, "dedup", batch_size)
            judge.index.close()
        if images:
            _dedup_images(images, root, dst, near, Path(scratch), log, counts)
    summary = dict(input=str(src), out=str(dst), near=near, num_perm=num_perm, **dict(sorted(counts.items())))
    (dst / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _shingles(text: str) -> set[bytes]:
    """Word 5-grams; none for a text of fewer than 5 words, whose near-duplicates are not told from chance (a
    symbol or two): such texts are deduplicated exactly only."""
    words = re.findall(r"\w+", text)
    return {" ".join(words[i:i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)}


class TextJudge:
    """Judges a batch of documents against the index of all earlier batches, then against the batch's own earlier
    documents, and adds what it keeps to the index."""

    def __init__(self, index_path: Path, rels: list[str], near: float, num_perm: int):
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=near, num_perm=num_perm)  # only for its choice of (bands, rows) for `near`
        self.bands, self.rows = lsh.b, lsh.r
        self.index = TextIndex(index_path)
        self.rels, self.file_of = rels, {rel: i for i, rel in enumerate(rels)}
        self.near, self.num_perm = near, num_perm

    def __call__(self, docs: list[Doc]) -> list:
        from datasketch import MinHash

        norms = [_normalise(text) for text, _, _ in docs]
        digests = [hashlib.sha256(n.encode()).digest()[:16] for n in norms]
        first = self.index.exact(digests)  # digest -> (file, line) of its first occurrence before this batch
        shingles = [_shingles(n) for n in norms]
        hashed = [i for i, s in enumerate(shingles) if s]
        minhashes = MinHash.generator((list(shingles[i]) for i in hashed), num_perm=self.num_perm)
        sigs = np.stack([m.hashvalues for m in minhashes]) if hashed else np.zeros((0, self.num_perm), np.uint32)
        keys = band_keys(sigs, self.bands, self.rows)  # (len(hashed), bands)
        row_of = dict(zip(hashed, range(len(hashed))))
        candidates = self.index.candidates(keys)  # band key -> earlier kept documents' ids
        earlier = self.index.documents(sorted({d for ids in candidates.values() for d in ids}), self.num_perm)
        batch_keys: dict[int, list[int]] = {}  # band key -> this batch's kept documents (positions in `kept`)
        new_exact, kept, kept_keys, verdicts = [], [], [], []
        for i, (_, rel, line) in enumerate(docs):
            where = (self.file_of[rel], line)
            if digests[i] in first:
                verdicts.append(("exact", self._original(first[digests[i]])))
                continue
            first[digests[i]] = where
            new_exact.append((digests[i], *where))
            if i in row_of:
                sig, doc_keys = sigs[row_of[i]], keys[row_of[i]].tolist()
                match = self._first_similar(sig, sorted({d for k in doc_keys for d in candidates.get(k, ())}), earlier)
                if match is None:  # then this batch's kept documents, all later than the index's
                    match = self._first_similar(sig, sorted({p for k in doc_keys for p in batch_keys.get(k, ())}), kept)
                if match is not None:
                    verdicts.append(("near", self._original(match)))
                    continue
                for k in doc_keys:
                    batch_keys.setdefault(k, []).append(len(kept))
                kept.append((sig, where))
                kept_keys.append(keys[row_of[i]])
            verdicts.append(None)
        self.index.add(new_exact, kept, kept_keys)
        return verdicts

    def _first_similar(self, sig: np.ndarray, ids: list[int], docs) -> tuple[int, int] | None:
        """The location of the first of `ids` whose signature's estimated Jaccard similarity to `sig` is ≥ near;
        docs[id] is (signature, location)."""
        for d in ids:
            other, where = docs[d]
            if np.count_nonzero(other == sig) / self.num_perm >= self.near:
                return where
        return None

    def _original(self, where: tuple[int, int]) -> dict:
        return {"duplicate_of": {"file": self.rels[where[0]], "line": where[1]}}


def _dedup_images(files: list[Path], root: Path, dst: Path, near: float, folder: Path, log, counts: Counter) -> None:
    import imagehash
    from PIL import Image

    distance = int((1 - near) * 64)
    index = ImageIndex(folder)
    for f in track(files, "dedup images", "images"):
        rel = f.relative_to(root).as_posix()
        counts["images"] += 1
        try:
            with Image.open(f) as img:
                h = int(str(imagehash.phash(img)), 16)
        except Exception:  # Pillow raises many kinds of exception on damaged files: kept, not judged
            counts["kept_unreadable"] += 1
            _copy(f, dst / rel)
            continue
        match = index.first_within(h, distance)
        if match is not None:
            log.write(json.dumps({"file": rel, "line": None, "reason": "near",
                                  "duplicate_of": {"file": match, "line": None}}) + "\n")
            counts["removed_near"] += 1
            continue
        index.add(h, rel)
        _copy(f, dst / rel)
        counts["kept"] += 1
    index.close()


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
