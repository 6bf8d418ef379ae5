"""`selfsup data dedup`: exact and near-duplicate text, near-duplicate images; the input untouched, every
removal logged with what it duplicates."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_cli import run  # noqa: F401  (a small trained GPT run)
from tests.test_vision import run_main

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega").split()


def _doc(seed: int, n: int = 60) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n))


def test_text_exact_and_near_duplicates_are_removed_and_logged(tmp_path, monkeypatch, capsys):
    a, b = _doc(1), _doc(2)
    near_a = a.rsplit(" ", 1)[0] + " different"  # one word of 60 changed: Jaccard of 5-grams ~0.9
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text(f"{a}\n{b}\n  {a.upper()}  \n")  # line 3: a again, other case and spacing
    (src / "sub" / "two.jsonl").write_text(json.dumps({"text": near_a, "id": 7}) + "\n" + "not json\n"
                                           + json.dumps({"text": _doc(3)}) + "\n")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    code, text, _ = run_main(monkeypatch, capsys, "data", "dedup", src, "--out", tmp_path / "clean", "--near", "0.8")
    assert code in (0, None), text
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # the input is never changed
    out = tmp_path / "clean"
    assert (out / "one.txt").read_text().splitlines() == [a, b]
    kept = (out / "sub" / "two.jsonl").read_text().splitlines()
    assert kept[0] == "not json" and json.loads(kept[1])["text"] == _doc(3)  # unparsed lines kept as they are
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert removed == [
        {"file": "one.txt", "line": 3, "reason": "exact", "duplicate_of": {"file": "one.txt", "line": 1}},
        {"file": "sub/two.jsonl", "line": 1, "reason": "near", "duplicate_of": {"file": "one.txt", "line": 1}},
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["documents"], summary["kept"], summary["removed_exact"], summary["removed_near"]) == (5, 3, 1, 1)
    assert "removed near" in text


def test_near_duplicate_images_by_perceptual_hash(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    base = (rng.random((32, 32)) * 255).astype(np.uint8)
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(base).save(src / "a.png")
    Image.fromarray(np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)).save(src / "b.png")  # brighter copy
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(src / "c.png")
    (src / "d.png").write_bytes(b"not an image")
    code, text, _ = run_main(monkeypatch, capsys, "data", "dedup", src, "--out", tmp_path / "clean")
    assert code in (0, None), text
    assert sorted(p.name for p in (tmp_path / "clean").glob("*.png")) == ["a.png", "c.png", "d.png"]
    removed = [json.loads(line) for line in (tmp_path / "clean" / "removed.jsonl").read_text().splitlines()]
    assert removed == [{"file": "b.png", "line": None, "reason": "near",
                        "duplicate_of": {"file": "a.png", "line": None}}]
    assert json.loads((tmp_path / "clean" / "summary.json").read_text())["kept_unreadable"] == 1


def test_dedup_refuses_an_output_inside_its_input(tmp_path, monkeypatch, capsys):
    (tmp_path / "c.txt").write_text("one\n")
    code, _, err = run_main(monkeypatch, capsys, "data", "dedup", tmp_path, "--out", tmp_path / "clean")
    assert code == 2 and "inside the input" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("tool", ["dedup", "filter"])
@pytest.mark.parametrize("case", ["file beside", "folder above", "the input's folder", "a link to it", "a file"])
def test_cleaning_never_writes_over_its_input(tool, case, tmp_path, monkeypatch, capsys):
    """`data dedup corpus.txt --out .` used to truncate corpus.txt while reading it (6,000 lines -> 1,026, exit 0)."""
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    text = "".join(f"line number {i} of a corpus that must survive\n" for i in range(300))
    corpus.write_text(text)
    source, out = corpus, corpus.parent
    if case == "folder above":
        out = tmp_path
    elif case == "the input's folder":
        source = corpus.parent
    elif case == "a link to it":
        (tmp_path / "link").symlink_to(corpus.parent)
        out = tmp_path / "link"
    elif case == "a file":
        out = tmp_path / "data" / "corpus.txt"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "data", tool, source, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("holds the input" in err or "inside the input" in err or "is a file" in err), err
    assert corpus.read_text() == text and sorted(p.name for p in corpus.parent.iterdir()) == ["corpus.txt"]


def test_filter_removes_by_each_rule_and_logs_the_value(run, tmp_path, monkeypatch, capsys):
    from selfsup.data.quality.filters import repetition, symbol_ratio

    assert symbol_ratio("ab!!") == 0.5 and symbol_ratio("日本語です") == 0.0 and symbol_ratio("   ") == 0.0
    assert repetition("a b c a b c") == 0.25 and repetition("one two") == 0.0
    good = "Return the number of items in the container, or zero when it is empty."
    src = tmp_path / "c.txt"
    src.write_text("\n".join([good, "short", "#$%^&*()!@#$%^&*()_+{}|:<>?" * 3, "spam spam spam " * 20,
                              "Жзщ ъыь эюя ЁЂЃ ЄЅІ ЇЈЉ ЊЋЌ ЎЏА БВГ ДЕЖ ЗИЙ"]) + "\n")
    code, text, _ = run_main(monkeypatch, capsys, "data", "filter", src, "--out", tmp_path / "f", "--min-chars",
                             "20", "--max-symbol-ratio", "0.3", "--max-repetition", "0.5")
    assert code in (0, None), text
    removed = [json.loads(line) for line in (tmp_path / "f" / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in removed] == [(2, "too_short"), (3, "symbols"), (4, "repetition")]
    assert removed[0]["value"] == 5
    # perplexity under the test suite's small GPT (English docstrings): text in a script it never saw scores worst
    from selfsup.eval.perplexity import Perplexity

    ppl = Perplexity(str(run), torch.device("cpu"))
    scores = ppl(src.read_text().splitlines())
    assert scores[4] > scores[0]
    code, _, _ = run_main(monkeypatch, capsys, "data", "filter", src, "--out", tmp_path / "p", "--ppl-model", run,
                          "--max-ppl", str((scores[0] + scores[4]) / 2))
    removed = [json.loads(line) for line in (tmp_path / "p" / "removed.jsonl").read_text().splitlines()]
    assert 5 in [r["line"] for r in removed if r["reason"] == "perplexity"] and 1 not in [r["line"] for r in removed]
    code, _, err = run_main(monkeypatch, capsys, "data", "filter", src, "--out", tmp_path / "q", "--ppl-model", run)
    assert code == 2 and "--ppl-model and --max-ppl go together" in err and len(err.strip().splitlines()) == 1


def _mutated(doc: str, changes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = doc.split()
    for i in rng.choice(len(words), changes, replace=False):
        words[i] = "changed"
    return " ".join(words)


def _short_similar(a: str, b: str, near: float) -> bool:
    """Short documents' rule, written out plainly: Jaccard similarity of the sets of character 5-grams ≥ near, or one
    word edit apart (optimal string alignment over the words) when one word is at most 1 − near of the longer."""
    ca, cb = ({t[i:i + 5] for i in range(len(t) - 4)} for t in (a, b))
    if len(ca & cb) / len(ca | cb) >= near:
        return True
    wa, wb = re.findall(r"\w+", a), re.findall(r"\w+", b)
    d = np.zeros((len(wa) + 1, len(wb) + 1), int)
    d[:, 0], d[0, :] = range(len(wa) + 1), range(len(wb) + 1)
    for i in range(1, len(wa) + 1):
        for j in range(1, len(wb) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (wa[i - 1] != wb[j - 1]))
            if i > 1 and j > 1 and wa[i - 1] == wb[j - 2] and wa[i - 2] == wb[j - 1]:
                d[i, j] = min(d[i, j], d[i - 2, j - 2] + 1)
    return d[-1, -1] <= 1 and 1 / max(len(wa), len(wb)) <= 1 - near + 1e-9


def _reference(docs: list[tuple[str, int, str]], near: float) -> list[dict]:
    """The behaviour dedup must have, in memory with datasketch's own index: first occurrence wins; a document is a
    near duplicate of the first kept document of its kind, among its candidates, that is similar. Long (50+ words):
    candidates share a band of LSH for near; similar, estimated Jaccard similarity of word 5-grams ≥ near. Short
    (5–49 words): candidates share a band of LSH for near − 0.1 over character 5-grams, or the word sequence with at
    most one word left out; similar, _short_similar. Under 5 words, exact copies only."""
    from datasketch import MinHash, MinHashLSH

    from selfsup.data.quality.dedup import _normalise
    from selfsup.data.quality.similarity import char_grams

    exact, removed = {}, []
    kept = {"long": [], "short": []}  # (MinHash or normalised text, location, word sequences with a word left out)
    lsh = {k: MinHashLSH(threshold=t, num_perm=128) for k, t in (("long", near), ("short", near - 0.1))}
    rejected = Counter()  # documents whose candidates all failed the similarity check: the data must have some
    for rel, line, text in docs:
        norm = _normalise(text)
        if norm in exact:
            removed.append({"file": rel, "line": line, "reason": "exact", "duplicate_of": exact[norm]})
            continue
        exact[norm] = {"file": rel, "line": line}
        words = re.findall(r"\w+", norm)
        if len(words) < 5:
            continue
        kind = "long" if len(words) >= 50 else "short"
        left_out = set()
        if kind == "long":
            m = MinHash(num_perm=128)
            m.update_batch(list({" ".join(words[i:i + 5]).encode() for i in range(len(words) - 4)}))
            held = m
            similar = lambda other: other.jaccard(m) >= near  # noqa: E731
        else:
            m = MinHash(num_perm=128, hashfunc=int)  # the shingles' hashes are the values
            m.update_batch(char_grams(norm).tolist())
            held = norm
            similar = lambda other: _short_similar(other, norm, near)  # noqa: E731
            left_out = {tuple(words)} | {tuple(words[:i] + words[i + 1:]) for i in range(len(words))}
        candidates = set(lsh[kind].query(m)) | {k for k, (_, _, o) in enumerate(kept[kind]) if o & left_out}
        match = next((k for k in sorted(candidates) if similar(kept[kind][k][0])), None)
        if match is not None:
            removed.append({"file": rel, "line": line, "reason": "near", "duplicate_of": kept[kind][match][1]})
            continue
        rejected[kind] += bool(candidates)
        lsh[kind].insert(len(kept[kind]), m)
        kept[kind].append((held, {"file": rel, "line": line}, left_out))
    assert rejected["long"] > 0 and rejected["short"] > 0
    return removed


def _variant(base: str, rng) -> str:
    """A copy of base a few words away: replaced by 'changed', or one word inserted, deleted, or swapped with its
    neighbour (the edits short documents' rule counts as one)."""
    kind, words = rng.integers(4), base.split()
    i = int(rng.integers(len(words) - 1))
    if kind == 0:
        return _mutated(base, int(rng.integers(1, 9)), int(rng.integers(1 << 30)))
    if kind == 1:
        return " ".join(words[:i] + ["inserted"] + words[i:])
    if kind == 2:
        return " ".join(words[:i] + words[i + 1:])
    return " ".join(words[:i] + [words[i + 1], words[i]] + words[i + 2:])


def test_text_dedup_equals_the_in_memory_reference_at_any_batch_size(tmp_path):
    from selfsup.data.quality.dedup import dedup

    bases = [_doc(seed, 60 if seed % 2 else 20) for seed in range(40)]  # long and short documents
    docs = []  # clusters of variants a few words away: similarities either side of the threshold
    for seed in range(400):
        rng = np.random.default_rng(1000 + seed)
        kind = rng.integers(4)
        base = bases[rng.integers(len(bases))]
        docs.append(base if kind == 0 else _variant(base, rng) if kind < 3
                    else " ".join(rng.choice(WORDS, int(rng.integers(1, 6)))))  # under 5 words: exact only
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("\n".join(docs[:250]) + "\n")
    (src / "b.txt").write_text("\n".join(d.upper() for d in docs[250:]) + "\n")
    located = [("a.txt", i + 1, d) for i, d in enumerate(docs[:250])] + \
              [("b.txt", i + 1, d) for i, d in enumerate(docs[250:])]
    expected = _reference(located, 0.8)
    for batch_size in (7, 1000):  # duplicates within a batch and across batches
        dedup(str(src), str(tmp_path / f"out{batch_size}"), 0.8, batch_size=batch_size)
        removed = [json.loads(line) for line in (tmp_path / f"out{batch_size}" / "removed.jsonl").open()]
        assert removed == expected
    assert {r["reason"] for r in expected} == {"exact", "near"}
    assert not list(tmp_path.glob("out*/.dedup-index-*"))  # the scratch index is gone


def test_short_documents_signature_is_datasketchs_minhash():
    """Short documents' signatures are computed without datasketch's per-document overhead: the same values."""
    from datasketch import MinHash

    from selfsup.data.quality.similarity import char_grams, char_signature

    for text in ("return the number of items in the container.", "日本語のテキストも同じ – ünïcödé", "a b c d e"):
        m = MinHash(num_perm=128, hashfunc=int)
        m.update_batch(char_grams(text).tolist())
        assert np.array_equal(char_signature(char_grams(text), MinHash(num_perm=128).permutations), m.hashvalues)


def test_dedup_memory_does_not_grow_with_the_corpus(tmp_path):
    import tracemalloc

    from selfsup.data.quality.dedup import dedup

    def peak(n: int) -> int:
        src = tmp_path / f"c{n}.txt"
        src.write_text("\n".join(_doc(seed, 12) for seed in range(n)) + "\n")
        tracemalloc.start()
        summary = dedup(str(src), str(tmp_path / f"out{n}"), batch_size=200)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert summary["documents"] == n and summary["kept"] > 0.9 * n
        return top

    peak(50)  # imports and one-off tables first, so they are counted in neither size
    small, large = peak(1000), peak(5000)
    # an in-memory index grows by kilobytes a document (~10 MB here); a batch at a time does not grow
    assert large < small + 1_000_000, (small, large)


def test_corrupt_lines_are_skipped_counted_and_lines_numbered_as_in_the_file(tmp_path, monkeypatch, capsys):
    a = _doc(5)
    src = tmp_path / "c.txt"
    src.write_bytes(f"{a}\n".encode() + b"\xff\xfe broken utf-8\n" + b"   \n\n" + f"{a}\n".encode())
    code, text, _ = run_main(monkeypatch, capsys, "data", "dedup", src, "--out", tmp_path / "clean")
    assert code in (0, None), text
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert (summary["documents"], summary["skipped_invalid_utf8"], summary["skipped_empty"]) == (2, 1, 1)
    removed = [json.loads(line) for line in (tmp_path / "clean" / "removed.jsonl").open()]
    assert [(r["line"], r["duplicate_of"]["line"]) for r in removed] == [(5, 1)]
    assert "skipped invalid utf8" in text


def test_batched_perplexity_equals_one_document_at_a_time(run):
    from selfsup.data.read.tokenizer import eos_id
    from selfsup.eval.perplexity import Perplexity

    ppl = Perplexity(str(run), torch.device("cpu"), tokens=48)  # several padded groups of different lengths
    texts = ["Return the number of items.", "x", _doc(7, 200), "Open a file and return a stream.",
             "Жзщ ъыь эюя", "The quick brown fox jumps over the lazy dog again and again.", ""]
    eos = eos_id(ppl.tok)
    one_at_a_time = []
    for text in texts:
        ids = [eos] + ppl.tok.encode(text, add_special_tokens=False).ids[:ppl.context]
        with torch.no_grad():
            out = ppl.objective({"tokens": torch.tensor([ids])}) if len(ids) > 1 else None
        one_at_a_time.append(float(np.exp(out.loss.item() / int(out.count))) if out else 1.0)
    assert len(ppl.tok.encode(texts[2], add_special_tokens=False).ids) > ppl.context  # truncated as before
    assert np.allclose(ppl(texts), one_at_a_time, rtol=1e-5, atol=0)
    assert ppl([""]) == [1.0] and ppl([]) == []  # nothing to score: a batch of none


def test_image_dedup_equals_a_search_over_every_kept_hash(tmp_path, monkeypatch):
    import imagehash

    from selfsup.data.quality import dedup_index
    from selfsup.data.quality.dedup import dedup

    monkeypatch.setattr(dedup_index, "_PENDING", 8)  # hashes written to the file and memory-mapped many times,
    monkeypatch.setattr(dedup_index, "_SCAN", 16)  # and scanned in several chunks

    rng = np.random.default_rng(1)
    bases = [(rng.random((24, 24)) * 255) for _ in range(12)]
    src = tmp_path / "images"
    src.mkdir()
    for i in range(60):  # copies with more or less noise: hashes a few to many bits from their base
        noisy = bases[rng.integers(len(bases))] + rng.normal(0, rng.choice([2, 20, 60]), (24, 24))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(src / f"{i:02d}.png")
    distance, kept, expected = int((1 - 0.8) * 64), [], []
    for f in sorted(src.iterdir()):
        with Image.open(f) as img:
            h = int(str(imagehash.phash(img)), 16)
        match = next((name for k, name in kept if bin(k ^ h).count("1") <= distance), None)
        if match is None:
            kept.append((h, f.name))
        else:
            expected.append({"file": f.name, "line": None, "reason": "near",
                             "duplicate_of": {"file": match, "line": None}})
    dedup(str(src), str(tmp_path / "clean"))
    assert [json.loads(line) for line in (tmp_path / "clean" / "removed.jsonl").open()] == expected
    assert 10 < len(expected) < 50  # both outcomes are exercised


def test_a_tool_never_reads_a_former_passs_logs_as_data(tmp_path, monkeypatch, capsys):
    """README's chain, dedup then filter (and training on the result): dedup's removed.jsonl and summary.json used to
    be read as 40,358 'unparsed' rows and the filter wrote its own log over their copy. A user's own file of the
    same name, in a folder no tool wrote, is still data; one where a tool would write its log is refused."""
    from selfsup.data.read.text import source_files

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [f"document {i} says {_doc(i, 10)}" for i in range(200)]  # lines one word apart would be near-duplicates
    (corpus / "a.txt").write_text("\n".join(lines + lines[:40]) + "\n")  # 40 exact duplicates
    clean, filtered = tmp_path / "clean", tmp_path / "filtered"
    code, _, err = run_main(monkeypatch, capsys, "data", "dedup", corpus, "--out", clean)
    assert code in (0, None), err
    assert json.loads((clean / "summary.json").read_text())["kept"] == 200
    assert [f.name for f in source_files(str(clean))] == ["a.txt"]  # what training on clean/ reads
    code, _, err = run_main(monkeypatch, capsys, "data", "filter", clean, "--out", filtered, "--min-chars", "60")
    assert code in (0, None), err
    summary = json.loads((filtered / "summary.json").read_text())
    assert summary["documents"] == 200 and not summary.get("kept_unparsed") and not summary.get("skipped_unparsed")
    removed = [json.loads(line) for line in (filtered / "removed.jsonl").read_text().splitlines()]
    assert len(removed) == 200 - summary["kept"] and all(r["file"] == "a.txt" for r in removed)
    assert [f.name for f in source_files(str(filtered))] == ["a.txt"]

    (corpus / "removed.jsonl").write_text(json.dumps({"text": "a user's own file that happens to be named so"}) + "\n")
    assert sorted(f.name for f in source_files(str(corpus))) == ["a.txt", "removed.jsonl"]
    for tool in ("dedup", "filter"):
        code, _, err = run_main(monkeypatch, capsys, "data", tool, corpus, "--out", tmp_path / f"again-{tool}")
        assert code == 2 and "removed.jsonl at its top" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / f"again-{tool}").exists()  # nothing written before the input is known to be valid
