"""Near-duplicate text of short documents (issue 14, item 17): `selfsup data dedup` compared word 5-gram shingles
at every length, and a line of 8–20 words copied with one word replaced shares almost none with its original (one
word of ten is in half of its 5-grams): such copies were found 17 times in 300. Short texts (5–49 words) are now
near-duplicates when their character 5-grams are ≥ near alike or they are one word apart; distinct lines that share
boilerplate but differ in two words or more are kept."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from selfsup.data.quality.dedup import dedup

EDITS = ("replaced", "inserted", "deleted", "swapped")


def _vocabulary(rng, n: int = 300) -> list[str]:
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    return sorted({"".join(rng.choice(letters[:20], int(rng.integers(3, 10)))) for _ in range(n)})


def _edited(words: list[str], edit: str, vocab: list[str], rng) -> list[str]:
    i = int(rng.integers(len(words) - 1))
    new = next(w for w in rng.permutation(vocab) if w not in words)
    if edit == "replaced":
        return words[:i] + [new] + words[i + 1:]
    if edit == "inserted":
        return words[:i] + [new] + words[i:]
    if edit == "deleted":
        return words[:i] + words[i + 1:]
    return words[:i] + [words[i + 1], words[i]] + words[i + 2:]


def _removed(tmp_path, lines: list[str], **options) -> dict[int, dict]:
    src = tmp_path / "corpus.txt"
    tmp_path.mkdir(exist_ok=True)
    src.write_text("\n".join(lines) + "\n")
    dedup(str(src), str(tmp_path / "clean"), **options)
    return {r["line"]: r for r in map(json.loads, (tmp_path / "clean" / "removed.jsonl").open())}


@pytest.mark.parametrize("edit", EDITS)
def test_one_word_edits_of_short_lines_are_found(edit, tmp_path):
    rng = np.random.default_rng(EDITS.index(edit))
    vocab = _vocabulary(rng)
    originals = [list(rng.choice(vocab, int(rng.integers(8, 21)), replace=False)) for _ in range(60)]
    copies = [_edited(words, edit, vocab, rng) for words in originals]
    lines = [" ".join(w).capitalize() + "." for w in originals + copies]
    removed = _removed(tmp_path, lines)  # the default settings: near 0.8
    found = [n for n in range(61, 121) if n in removed]
    assert len(found) >= 0.9 * 60, f"{len(found)} of 60 one-word edits ({edit}) found"
    assert all(removed[n] == {"file": "corpus.txt", "line": n, "reason": "near",
                              "duplicate_of": {"file": "corpus.txt", "line": n - 60}} for n in found)
    assert not any(n <= 60 for n in removed)  # the originals, distinct, are all kept


def test_distinct_short_lines_sharing_boilerplate_are_kept(tmp_path):
    """60 lines of one template (7 of its 12 words shared by all), any two differing in two slots or more."""
    fill = [["integer", "string", "mapping", "sequence", "socket", "buffer", "decimal", "thread"],
            ["first", "last", "largest", "smallest", "current", "default", "next", "previous"],
            ["header", "record", "column", "message", "frame", "token", "block", "entry"],
            ["parser", "reader", "writer", "encoder", "decoder", "server", "client", "handler"],
            ["closed", "empty", "full", "locked", "stale", "ready", "broken", "busy"]]
    # slot choices whose sum is 0 mod 8: two that differ in one slot only would differ in the sum
    choices = [c for c in itertools.product(range(8), repeat=5) if sum(c) % 8 == 0]
    rng = np.random.default_rng(0)
    lines = [f"Return the {fill[0][a]} of the {fill[1][b]} {fill[2][c]} when the {fill[3][d]} is {fill[4][e]}."
             for a, b, c, d, e in (choices[i] for i in rng.choice(len(choices), 60, replace=False))]
    assert len(set(lines)) == 60
    assert _removed(tmp_path, lines) == {}


def test_near_one_keeps_one_word_edits_and_very_short_lines_are_compared_exactly(tmp_path):
    """--near 1 (and 0.99) used to stop with datasketch's traceback 'The number of bands are too small (b < 2)'."""
    from selfsup.data.errors import DataError

    lines = ["Open the file and return a stream of its lines.", "Open the file and return a stream of its bytes.",
             "Return the first item.", "Return the last item.", "return  the FIRST item."]
    assert sorted(_removed(tmp_path / "strict", lines, near=1.0)) == [5]  # only the exact copy
    assert sorted(_removed(tmp_path / "0.99", lines, near=0.99)) == [5]
    removed = _removed(tmp_path / "default", lines)
    assert sorted(removed) == [2, 5] and removed[2]["reason"] == "near"  # 4 words: "first"/"last" is meaning
    with pytest.raises(DataError, match="--num-perm 4: expected at least 8"):
        _removed(tmp_path / "few", lines, num_perm=4)
