"""`selfsup data dedup`: exact and near-duplicate text, near-duplicate images; the input untouched, every
removal logged with what it duplicates."""

from __future__ import annotations

import json

import numpy as np
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


def test_filter_removes_by_each_rule_and_logs_the_value(run, tmp_path, monkeypatch, capsys):
    from selfsup.data.filters import repetition, symbol_ratio

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
    from selfsup.data.filters import Perplexity

    ppl = Perplexity(str(run), torch.device("cpu"))
    scores = [ppl(line) for line in src.read_text().splitlines()]
    assert scores[4] > scores[0]
    code, _, _ = run_main(monkeypatch, capsys, "data", "filter", src, "--out", tmp_path / "p", "--ppl-model", run,
                          "--max-ppl", str((scores[0] + scores[4]) / 2))
    removed = [json.loads(line) for line in (tmp_path / "p" / "removed.jsonl").read_text().splitlines()]
    assert 5 in [r["line"] for r in removed if r["reason"] == "perplexity"] and 1 not in [r["line"] for r in removed]
    code, _, err = run_main(monkeypatch, capsys, "data", "filter", src, "--out", tmp_path / "q", "--ppl-model", run)
    assert code == 2 and "--ppl-model and --max-ppl go together" in err and len(err.strip().splitlines()) == 1
