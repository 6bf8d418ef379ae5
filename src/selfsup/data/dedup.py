"""Duplicate removal that never touches its input: the kept data is written to a new folder, every removal is
logged with its reason and what it duplicates, and a summary is printed and written.

Text (.txt: a document per line; .jsonl: a record per line, deduplicated on its `text`): exact copies by a hash of
the text with whitespace collapsed and case folded; near-duplicates by MinHash of word 5-gram shingles with
datasketch's LSH index (estimated Jaccard similarity ≥ `near`; texts under 5 words are compared exactly only).
Images: near-duplicates by perceptual hash (imagehash's pHash, 64 bits) within a Hamming distance of (1 − near) ·
64, found through bands of the hash (two hashes that close share at least one of distance + 1 bands, by
pigeonhole). The first occurrence wins: files in sorted order, lines in file order. Documents are read a file at a
time; the index holds only hashes.

    OUT/<same relative paths>   the kept lines (byte for byte) or the kept image files
    OUT/removed.jsonl           {"file", "line" or null, "reason": "exact" | "near", "duplicate_of": {"file", "line"}}
    OUT/summary.json            counts read, kept and removed by reason, settings
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

from selfsup.data.cleaning import check_paths, text_pass
from selfsup.data.images import IMAGE_SUFFIXES
from selfsup.data.text import TEXT_SUFFIXES, DataError

SHINGLE = 5  # words per shingle


def dedup(path: str, out: str, near: float = 0.8, num_perm: int = 128) -> dict:
    if not 0 < near <= 1:
        raise DataError(f"--near {near}: expected a similarity in (0, 1]")
    src, dst = check_paths(path, out)
    files = [src] if src.is_file() else sorted((f for f in src.rglob("*") if f.is_file()), key=lambda f: f.parts)
    texts = [f for f in files if f.suffix in TEXT_SUFFIXES]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not texts and not images:
        raise DataError(f"'{path}' holds no text (.txt, .jsonl) or image files")
    dst.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    root = src if src.is_dir() else src.parent
    with open(dst / "removed.jsonl", "w", encoding="utf-8") as log:
        if texts:
            _dedup_text(texts, root, dst, near, num_perm, log, counts)
        if images:
            _dedup_images(images, root, dst, near, log, counts)
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


def _dedup_text(files: list[Path], root: Path, dst: Path, near: float, num_perm: int, log, counts: Counter) -> None:
    from datasketch import MinHash, MinHashLSH

    exact: dict[bytes, tuple[str, int]] = {}
    lsh = MinHashLSH(threshold=near, num_perm=num_perm)
    where: dict[str, tuple[str, int]] = {}

    def judge(text: str, rel: str, number: int):
        norm = _normalise(text)
        digest = hashlib.sha256(norm.encode()).digest()[:16]
        if digest in exact:
            return "exact", _original(exact[digest])
        exact[digest] = (rel, number)
        shingles = _shingles(norm)
        if shingles:
            m = MinHash(num_perm=num_perm)
            m.update_batch(list(shingles))
            similar = lsh.query(m)
            if similar:
                return "near", _original(where[min(similar, key=lambda k: where[k])])
            where[f"{rel}#{number}"] = (rel, number)
            lsh.insert(f"{rel}#{number}", m)
        return None

    text_pass(files, root, dst, judge, log, counts)


def _dedup_images(files: list[Path], root: Path, dst: Path, near: float, log, counts: Counter) -> None:
    import imagehash
    from PIL import Image

    distance = int((1 - near) * 64)
    bands = distance + 1  # two hashes within `distance` bits agree on at least one of distance + 1 bands
    bits = [range(b * 64 // bands, (b + 1) * 64 // bands) for b in range(bands)]
    index: dict[tuple[int, int], list[int]] = {}
    kept_hashes: list[tuple[int, tuple[str, None]]] = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        counts["images"] += 1
        try:
            with Image.open(f) as img:
                h = int(str(imagehash.phash(img)), 16)
        except Exception:  # Pillow raises many kinds of exception on damaged files: kept, not judged
            counts["kept_unreadable"] += 1
            _copy(f, dst / rel)
            continue
        keys = [(b, sum(((h >> i) & 1) << j for j, i in enumerate(r))) for b, r in enumerate(bits)]
        candidates = {i for key in keys for i in index.get(key, ())}
        match = next((i for i in sorted(candidates) if bin(kept_hashes[i][0] ^ h).count("1") <= distance), None)
        if match is not None:
            log.write(json.dumps({"file": rel, "line": None, "reason": "near",
                                  **_original(kept_hashes[match][1])}) + "\n")
            counts["removed_near"] += 1
            continue
        for key in keys:
            index.setdefault(key, []).append(len(kept_hashes))
        kept_hashes.append((h, (rel, None)))
        _copy(f, dst / rel)
        counts["kept"] += 1


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _original(where: tuple[str, int | None]) -> dict:
    return {"duplicate_of": {"file": where[0], "line": where[1]}}
