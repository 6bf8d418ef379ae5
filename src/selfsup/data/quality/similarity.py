"""When two texts are near-duplicates, for `selfsup data dedup` (data/quality/dedup.py): what each length is compared
on, and the MinHash signatures and keys that make the candidates. Texts are normalised (whitespace collapsed, case
folded); words are runs of letters and digits.

    long, 50+ words    the estimated Jaccard similarity of word 5-gram shingles is ≥ near (MinHash signatures,
                       datasketch); candidates share a band of LSH chosen for near
    short, 5–49 words  the Jaccard similarity of character 5-grams is ≥ near, or the two are one word apart (a word
                       replaced, inserted or deleted, or two neighbours swapped) and one word is at most 1 − near of
                       the longer's words; judged exactly on the kept text, which is smaller than a signature;
                       candidates share a band of LSH over character 5-grams chosen for near − 0.1 (a pair at 0.8 is
                       one 87% of the time, at 0.85 97.5%), or a deletion key (every one-word edit)
    under 5 words      exact copies only: a word or two apart is as often meaning as copying

Why short texts differ: a word replaced in a line of ten changes a fifth to a half of its shingles whichever they
are (for 8 words even word 1-grams fall to a Jaccard similarity of 7/9), so no Jaccard threshold finds one-word edits
of short lines without also merging long documents that differ in many places. Long and short are never compared.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import numpy as np

SHINGLE = 5  # words per shingle of a long text
CHARS = 5  # characters per shingle of a short one
SHORT, LONG = 5, 50  # words: fewer than SHORT, exact copies only; from LONG on, word shingles and signatures
_WORD = re.compile(r"\w+")
_CHAR_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                      0xFF51AFD7ED558CCD], dtype=np.uint64)  # odd 64-bit constants (golden ratio, xxHash, murmur)


def words_of(norm: str) -> list[str]:
    return _WORD.findall(norm)


def kind(words: list[str]) -> str | None:
    return "long" if len(words) >= LONG else "short" if len(words) >= SHORT else None


def word_shingles(words: list[str]) -> list[bytes]:
    """A long text's distinct word 5-grams, for datasketch's MinHash (SHA-1 of each)."""
    return list({" ".join(words[i:i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)})


def char_grams(norm: str) -> np.ndarray:
    """(n,) sorted distinct uint32 hashes of a short text's character 5-grams: the top 32 bits of a random linear
    combination of the 5 code points mod 2^64 (multiply-shift hashing), in numpy: a short text has ~8× as many
    character shingles as word ones, and a SHA-1 each in Python would cost the most of the pass."""
    points = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)  # (chars,)
    h = np.lib.stride_tricks.sliding_window_view(points, CHARS) @ _CHAR_MIX  # (chars - 4, 5) @ (5,) -> (chars - 4,)
    return np.unique((h >> np.uint64(32)).astype(np.uint32))


def char_signature(grams: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """(num_perm,) uint32: datasketch's MinHash of these hashed shingles (its default scheme, affine32: MurmurHash3's
    finaliser, then h · a + b mod 2^32, the minimum over shingles), without its per-document overhead.
    `permutations`: (2, num_perm) uint32, a MinHash's."""
    h = (grams ^ (grams >> np.uint32(16))) * np.uint32(0x85EBCA6B)
    h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
    h = h ^ (h >> np.uint32(16))  # (n,)
    return (h[:, None] * permutations[0] + permutations[1]).min(axis=0)  # (n, num_perm) -> (num_perm,)


def deletion_keys(words: list[str]) -> np.ndarray:
    """(≤ len(words) + 1,) int64: 64-bit hashes of the word sequence and of it with each word left out. Texts one word
    apart share one: a word replaced (both without it), inserted or deleted (one whole, the other without it), two
    neighbours swapped (both without the one that moved)."""
    joined = " ".join(words) + " "  # words are runs of \w: a space is never in one
    ends = np.cumsum([len(w) + 1 for w in words]).tolist()
    sequences = [joined] + [joined[:end - len(w) - 1] + joined[end:] for w, end in zip(words, ends)]
    return np.array(sorted({int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little", signed=True)
                            for s in sequences}), dtype=np.int64)


def short_similar(a: str, b: str, near: float, grams: Callable[[str], np.ndarray] = char_grams) -> bool:
    """Whether two short normalised texts are near-duplicates (the rule above). `grams`: char_grams or a cache of it."""
    ga, gb = grams(a), grams(b)
    shared = len(np.intersect1d(ga, gb, assume_unique=True))
    if shared >= near * (len(ga) + len(gb) - shared):
        return True
    wa, wb = words_of(a), words_of(b)
    return 1 <= (1 - near) * max(len(wa), len(wb)) + 1e-9 and one_word_apart(wa, wb)


def one_word_apart(a: list[str], b: list[str]) -> bool:
    """Whether at most one edit turns a into b: a word replaced, inserted or deleted, or two neighbours swapped."""
    start, shorter = 0, min(len(a), len(b))
    while start < shorter and a[start] == b[start]:
        start += 1
    end = 0
    while end < shorter - start and a[-1 - end] == b[-1 - end]:
        end += 1
    rest_a, rest_b = a[start:len(a) - end], b[start:len(b) - end]  # what differs, between the common ends
    return len(rest_a) <= 1 and len(rest_b) <= 1 or len(rest_a) == len(rest_b) == 2 and rest_a == rest_b[::-1]
