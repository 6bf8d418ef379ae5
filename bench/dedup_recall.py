"""Recall and precision of `selfsup data dedup` on injected near-duplicates, and its speed.

The data are made here from the docstrings of Python's standard library (`selfsup.data.builtin.stdlib_docs`):

    short   paragraphs of 8–20 words, whitespace collapsed, each distinct after dedup's normalisation
    long    a source file's docstrings joined in order and cut at docstring ends into pieces of 200+ words

Every one of them is an original: real, distinct text that shares a lot of boilerplate ("Return the ...",
codec and test-case templates), so an original removed is a false positive. After the originals, copies of a
random sample of them are injected, one kind at a time:

    exact      the same text
    one word   one word replaced by a word drawn from the corpus' own words
    reordered  short: the text cut at a comma or semicolon in its middle third (else at its middle word) and the
               two parts swapped; long: two of its sentences swapped

A copy is found when dedup removes it (it comes after its original, and the first occurrence wins). The table
gives injected, found and recall by kind and length (and how many of the copies missed had lost their original
as a near-duplicate of an earlier text, which the copy need not be close to), and the originals removed (false positives), how many of them
are one word from the text they were judged a copy of (indistinguishable from a one-word edit), and precision
(true removals / removals). Then the speed: the whole of dedup (read, judge, write) on a corpus of every
docstring paragraph and a one-word edit of each, documents per second (wall and CPU, median of --repeats).

    .venv/bin/python bench/dedup_recall.py                     # ~1 min on 1 core
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/dedup_recall.py   # the same on another checkout
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("exact", "one word", "reordered")


def paragraphs() -> list[list[str]]:
    """Each source file's docstring paragraphs, whitespace collapsed, in source order."""
    from selfsup.data.builtin.stdlib_docs import docstrings, source_files

    files = []
    for f in source_files():
        files.append([" ".join(p.split()) for d in docstrings(f) for p in d.split("\n\n") if p.strip()])
    return files


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()  # dedup's normalisation for exact copies


def originals(files: list[list[str]]) -> tuple[list[str], list[str]]:
    """Distinct short paragraphs (8–20 words) and long pieces (200+ words)."""
    seen, short, long_ = set(), [], []
    for paras in files:
        piece: list[str] = []
        for p in paras:
            if 8 <= len(p.split()) <= 20 and _norm(p) not in seen:
                seen.add(_norm(p))
                short.append(p)
            piece.append(p)
            if sum(len(q.split()) for q in piece) >= 200:
                text = " ".join(piece)
                if _norm(text) not in seen:
                    seen.add(_norm(text))
                    long_.append(text)
                piece = []
    return short, long_


def one_word(text: str, vocab: list[str], rng: random.Random) -> str:
    words = text.split()
    slots = [i for i, w in enumerate(words) if w.isalpha()] or list(range(len(words)))
    i = rng.choice(slots)
    words[i] = rng.choice([w for w in rng.sample(vocab, 4) if w.casefold() != words[i].casefold()])
    return " ".join(words)


def reordered(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) >= 200:  # two sentences swapped
        sentences = re.split(r"(?<=[.!?:])\s+", text)
        if len(sentences) >= 2:
            i, j = sorted(rng.sample(range(len(sentences)), 2))
            sentences[i], sentences[j] = sentences[j], sentences[i]
            return " ".join(sentences)
    third = len(words) // 3
    cuts = [i + 1 for i in range(third, len(words) - third) if words[i][-1] in ",;"]
    cut = rng.choice(cuts) if cuts else len(words) // 2
    return " ".join(words[cut:] + words[:cut])


def word_edits(a: str, b: str) -> int:
    a, b = re.findall(r"\w+", a.casefold()), re.findall(r"\w+", b.casefold())
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return row[-1]


def recall_corpus(short: list[str], long_: list[str], per_kind: int, seed: int) -> tuple[list[str], list[dict]]:
    """The originals (shuffled), then the injected copies (shuffled); what each line is."""
    rng = random.Random(seed)
    vocab = sorted({w for t in short for w in t.split() if w.isalpha()})
    lines = [(t, {"length": "short", "kind": "original"}) for t in short] + \
            [(t, {"length": "long", "kind": "original"}) for t in long_]
    rng.shuffle(lines)
    line_of = {t: n for n, (t, _) in enumerate(lines, 1)}
    copies = []
    for length, pool in (("short", short), ("long", long_)):
        for kind in KINDS:
            for source in rng.sample(pool, min(per_kind, len(pool))):
                text = source if kind == "exact" else one_word(source, vocab, rng) if kind == "one word" \
                    else reordered(source, rng)
                copies.append((text, {"length": length, "kind": kind, "source": line_of[source]}))
    rng.shuffle(copies)
    lines += copies
    return [t for t, _ in lines], [m for _, m in lines]


def measure_recall(texts: list[str], meta: list[dict], near: float) -> dict:
    from selfsup.data.quality.dedup import dedup

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "corpus.txt").write_text("\n".join(texts) + "\n")
        dedup(str(Path(tmp) / "corpus.txt"), str(Path(tmp) / "out"), near)
        removed = {r["line"]: r for r in map(json.loads, (Path(tmp) / "out" / "removed.jsonl").open())}
    rows = {}
    for length in ("short", "long"):
        for kind in KINDS:
            lines = [n for n, m in enumerate(meta, 1) if (m["length"], m["kind"]) == (length, kind)]
            missed = [n for n in lines if n not in removed]
            rows[f"{length} {kind}"] = dict(injected=len(lines), found=len(lines) - len(missed),
                                            missed_original_removed=sum(meta[n - 1]["source"] in removed
                                                                        for n in missed))
        originals_ = [n for n, m in enumerate(meta, 1) if (m["length"], m["kind"]) == (length, "original")]
        false = [n for n in originals_ if n in removed]
        true = sum(r["found"] for k, r in rows.items() if k.startswith(length))
        rows[f"{length} originals"] = dict(
            originals=len(originals_), false_positives=len(false),
            one_word_apart=sum(word_edits(texts[n - 1], texts[removed[n]["duplicate_of"]["line"] - 1]) <= 1
                               for n in false),
            precision=true / (true + len(false)) if true + len(false) else 1.0)
    return rows


def measure_speed(files: list[list[str]], near: float, repeats: int, seed: int) -> dict:
    """Every docstring paragraph, then a one-word edit of each: dedup's documents per second."""
    from selfsup.data.quality.dedup import dedup

    rng = random.Random(seed)
    paras = [p for ps in files for p in ps]
    vocab = sorted({w for t in paras for w in t.split() if w.isalpha()})
    texts = paras + [one_word(p, vocab, rng) for p in paras]
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "corpus.txt").write_text("\n".join(texts) + "\n")
        for r in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            summary = dedup(str(Path(tmp) / "corpus.txt"), str(Path(tmp) / f"out{r}"), near)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    n = summary["documents"]
    return dict(documents=n, words=sum(len(t.split()) for t in texts), removed_exact=summary.get("removed_exact", 0),
                removed_near=summary.get("removed_near", 0), wall_s=statistics.median(walls),
                cpu_s=statistics.median(cpus), docs_per_s_wall=n / statistics.median(walls),
                docs_per_s_cpu=n / statistics.median(cpus))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--near", type=float, default=0.8, help="dedup's --near")
    ap.add_argument("--per-kind", type=int, default=300, help="copies injected per kind and length")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the speed corpus")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import selfsup

    files = paragraphs()
    short, long_ = originals(files)
    texts, meta = recall_corpus(short, long_, args.per_kind, args.seed)
    rows = measure_recall(texts, meta, args.near)
    print(f"selfsup from {Path(selfsup.__file__).parent}; near {args.near}; {len(short):,} short originals "
          f"(8–20 words), {len(long_):,} long (200+ words)")
    print(f"| {'kind':<10} | {'length':<6} | injected | found | recall | missed, original removed |")
    print(f"|{'-' * 12}|{'-' * 8}|---------:|------:|-------:|-------------------------:|")
    for key, r in rows.items():
        if "injected" in r:
            length, kind = key.split(" ", 1)
            print(f"| {kind:<10} | {length:<6} | {r['injected']:>8,} | {r['found']:>5,} | "
                  f"{r['found'] / r['injected']:>6.1%} | {r['missed_original_removed']:>24,} |")
    print(f"\n| {'length':<6} | originals | removed (false positives) | share | of which one word apart | "
          f"precision |")
    print(f"|{'-' * 8}|----------:|-------------------------:|------:|-----------------------:|----------:|")
    for length in ("short", "long"):
        r = rows[f"{length} originals"]
        print(f"| {length:<6} | {r['originals']:>9,} | {r['false_positives']:>24,} | "
              f"{r['false_positives'] / r['originals']:>5.1%} | {r['one_word_apart']:>22,} | {r['precision']:>9.1%} |")
    speed = measure_speed(files, args.near, args.repeats, args.seed)
    print(f"\nspeed: {speed['documents']:,} documents ({speed['words']:,} words; removed {speed['removed_exact']:,} "
          f"exact, {speed['removed_near']:,} near): {speed['wall_s']:.2f} s wall, {speed['cpu_s']:.2f} s CPU, "
          f"{speed['docs_per_s_wall']:,.0f} docs/s wall, {speed['docs_per_s_cpu']:,.0f} docs/s CPU "
          f"(median of {args.repeats})")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "dedup_recall.json").write_text(json.dumps(dict(args=vars(args), source=str(Path(selfsup.__file__).parent),
                                                           recall=rows, speed=speed), indent=1))


if __name__ == "__main__":
    sys.exit(main())
