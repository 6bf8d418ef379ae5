"""Duplicate removal that never touches its input: the kept data is written to a new folder, every removal is
logged with its reason and what it duplicates, and a summary is printed and written.

Text (.txt: a document per line; .jsonl: a record per line, .parquet: a row, deduplicated on their `field`, default
`text`): exact copies by a hash of
the text with whitespace collapsed and case folded; near-duplicates by a similarity ≥ `near` to an earlier kept
document that depends on its length (data/quality/similarity.py): for 50 words and more, the estimated Jaccard
similarity of word 5-grams (MinHash, datasketch); for 5 to 49 words, the Jaccard similarity of character 5-grams,
or one word apart; under 5 words, exact copies only. Candidates come from MinHash LSH bands and, for short texts,
keys of the word sequence with a word left out.

Images: near-duplicates by perceptual hash (imagehash's pHash, 64 bits) within a Hamming distance of (1 − near) ·
64 of a kept image's. The first occurrence wins: files in sorted order, lines in file order.

Documents stream a batch at a time and the indexes live on disk (data/quality/dedup_index.py, a scratch folder in OUT
removed at the end), so memory does not grow with the corpus.

    OUT/<same relative paths>   the kept lines (byte for byte), the kept rows (same schema) or the kept image files
    OUT/removed.jsonl           {"file", "line" (from 1; null for an image) or "row" (.parquet, from 0), "reason":
                                "exact" | "near", "duplicate_of": {"file", "line" or "row"}}
    OUT/summary.json            counts read, kept and removed by reason, skipped lines by reason, settings
    OUT/.selfsup-logs.json      names the two logs, so no selfsup reader (filter, train) takes them for data
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from selfsup.data.errors import DataError
from selfsup.data.quality.cleaning import LOGS, Doc, check_log_names, check_paths, text_files, text_pass, where
from selfsup.data.quality.dedup_index import ImageIndex, TextIndex, band_keys
from selfsup.data.quality.similarity import char_grams, char_signature, deletion_keys, kind, short_similar
from selfsup.data.quality.similarity import word_shingles, words_of
from selfsup.data.read.image import IMAGE_SUFFIXES
from selfsup.data.read.listing import data_files, mark_logs
from selfsup.progress import track


def dedup(path: str, out: str, near: float = 0.8, num_perm: int = 128, batch_size: int = 1024,
          field: str = "text") -> dict:
    if not 0 < near <= 1:
        raise DataError(f"--near {near}: expected a similarity in (0, 1]")
    if num_perm < 8:
        raise DataError(f"--num-perm {num_perm}: expected at least 8 (MinHash estimates the similarity from them)")
    src, dst = check_paths(path, out)
    files = [src] if src.is_file() else data_files(src)  # a former pass's logs are not data
    texts = text_files(files, path, "dedup", field)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not texts and not images:
        raise DataError(f"'{path}' holds no text (.txt, .jsonl, .parquet) or image files")
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
            text_pass(texts, root, dst, judge, log, counts, "dedup", field, batch_size)
            judge.index.close()
        if images:
            _dedup_images(images, root, dst, near, Path(scratch), log, counts)
    summary = dict(input=str(src), out=str(dst), near=near, num_perm=num_perm, text_field=field, **dict(sorted(counts.items())))
    (dst / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


class TextJudge:
    """Judges a batch of documents against the index of all earlier batches, then against the batch's own earlier
    documents, and adds what it keeps to the index. A kept document is held as its signature (long) or its
    normalised text (short)."""

    def __init__(self, index_path: Path, rels: list[str], near: float, num_perm: int):
        from datasketch import MinHash

        # short texts' bands are numbered after long ones', so the two kinds never share a key
        (long_bands, long_rows), short = _banding(near, num_perm), _banding(max(near - 0.1, near / 2), num_perm)
        self.bands = {"long": (long_bands, long_rows, 0), "short": (*short, long_bands)}
        self.permutations = MinHash(num_perm=num_perm).permutations  # (2, num_perm) uint32
        self.index = TextIndex(index_path)
        self.rels, self.file_of = rels, {rel: i for i, rel in enumerate(rels)}
        self.near, self.num_perm = near, num_perm

    def __call__(self, docs: list[Doc]) -> list:
        self.grams: dict[str, np.ndarray] = {}  # char_grams of this batch's texts and candidates (they recur)
        norms = [_normalise(text) for text, _, _ in docs]
        digests = [hashlib.sha256(n.encode()).digest()[:16] for n in norms]
        first = self.index.exact(digests)  # digest -> (file, line) of its first occurrence before this batch
        words = [words_of(n) for n in norms]
        kinds = [kind(w) for w in words]
        sigs = self._signatures(norms, words, kinds)  # i -> (num_perm,) uint32
        keys = self._keys(sigs, words, kinds)  # i -> (keys,) int64
        candidates = self.index.candidates(np.concatenate(list(keys.values())) if keys else np.zeros(0, np.int64))
        earlier = self.index.documents(sorted({d for ids in candidates.values() for d in ids}), self.num_perm)
        batch_keys: dict[int, list[int]] = {}  # key -> this batch's kept documents (positions in `kept`)
        new_exact, kept, kept_keys, verdicts = [], [], [], []
        for i, (_, rel, line) in enumerate(docs):
            where = (self.file_of[rel], line)
            if digests[i] in first:
                verdicts.append(("exact", self._original(first[digests[i]])))
                continue
            first[digests[i]] = where
            new_exact.append((digests[i], *where))
            if kinds[i]:
                held, doc_keys = sigs[i] if kinds[i] == "long" else norms[i], keys[i].tolist()
                match = self._first_similar(held, sorted({d for k in doc_keys for d in candidates.get(k, ())}),
                                            earlier)
                if match is None:  # then this batch's kept documents, all later than the index's
                    match = self._first_similar(held, sorted({p for k in doc_keys for p in batch_keys.get(k, ())}),
                                                kept)
                if match is not None:
                    verdicts.append(("near", self._original(match)))
                    continue
                for k in doc_keys:
                    batch_keys.setdefault(k, []).append(len(kept))
                kept.append((held, where))
                kept_keys.append(keys[i])
            verdicts.append(None)
        self.index.add(new_exact, kept, kept_keys)
        return verdicts

    def _signatures(self, norms: list[str], words: list[list[str]], kinds: list) -> dict[int, np.ndarray]:
        """i -> (num_perm,) uint32 MinHash signature of each long or short document: word 5-grams through
        datasketch, character 5-grams hashed already."""
        from datasketch import MinHash

        longs = [i for i, k in enumerate(kinds) if k == "long"]
        sigs = dict(zip(longs, (m.hashvalues for m in MinHash.generator((word_shingles(words[i]) for i in longs),
                                                                        num_perm=self.num_perm))))
        sigs.update((i, char_signature(self._grams(norms[i]), self.permutations))
                    for i, k in enumerate(kinds) if k == "short")
        return sigs

    def _keys(self, sigs: dict[int, np.ndarray], words: list[list[str]], kinds: list) -> dict[int, np.ndarray]:
        """i -> (keys,) int64: the LSH band keys of its kind, then a short text's deletion keys."""
        keys = {}
        for k, (bands, rows, start) in self.bands.items():
            ids = [i for i in sigs if kinds[i] == k]
            if ids:
                keys.update(zip(ids, band_keys(np.stack([sigs[i] for i in ids]), bands, rows, start)))
        return {i: np.concatenate([row, deletion_keys(words[i])]) if kinds[i] == "short" else row
                for i, row in keys.items()}

    def _first_similar(self, held, ids: list[int], docs) -> tuple[int, int] | None:
        """The location of the first of `ids` that is a near-duplicate of `held` (a signature or a short text);
        docs[id] is (signature or text, location)."""
        for d in ids:
            other, where = docs[d]
            if type(other) is not type(held):  # a spurious band-key collision between the kinds
                continue
            if isinstance(held, str):
                if short_similar(held, other, self.near, self._grams):
                    return where
            elif np.count_nonzero(other == held) / self.num_perm >= self.near:
                return where
        return None

    def _grams(self, norm: str) -> np.ndarray:
        if norm not in self.grams:
            self.grams[norm] = char_grams(norm)
        return self.grams[norm]

    def _original(self, at: tuple[int, int]) -> dict:
        return {"duplicate_of": where(self.rels[at[0]], at[1])}


def _banding(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's LSH (bands, rows) for a similarity threshold: those that minimise false positives + false
    negatives. It finds no pair with two bands or more near 1 (0.99 at 128 permutations): then two bands, which make
    every pair of equal signatures a candidate."""
    from datasketch import MinHashLSH

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:
        return 2, num_perm // 2
    return lsh.b, lsh.r


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
