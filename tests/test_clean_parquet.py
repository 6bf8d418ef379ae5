"""`selfsup data dedup|filter` on .parquet (issue 15, part 4): rows judged on a text column read a record batch at a
time, the kept rows written in the input's schema and order, every removal logged by its 0-based row index."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_vision import run_main

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega").split()


def _doc(seed: int, n: int = 60) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, n))


A, B, C = _doc(1), _doc(2), _doc(3)
NEAR_A = A.rsplit(" ", 1)[0] + " different"  # one word of 60 changed: Jaccard of word 5-grams ~0.9
SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("tags", pa.list_(pa.string())),
                    ("score", pa.float32())], metadata={b"origin": b"a test"})


def _table(texts: list) -> pa.Table:
    n = len(texts)
    return pa.table({"id": list(range(100, 100 + n)), "text": texts, "tags": [[f"t{i}"] * (i % 3) for i in range(n)],
                     "score": [i / 2 for i in range(n)]}, schema=SCHEMA)


def _removed(out) -> list[dict]:
    return [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("batch_size", [1, 3, 1024])
def test_dedup_keeps_the_schema_the_other_columns_and_the_order(tmp_path, batch_size):
    from selfsup.data.quality.dedup import dedup

    texts = [A, B, f"  {A.upper()} ", None, NEAR_A, C, B, None, "short one", "short one"]
    table = _table(texts)
    src = tmp_path / "corpus"
    src.mkdir()
    pq.write_table(table, src / "docs.parquet", row_group_size=4)  # row groups across the record batches
    table = pq.read_table(src / "docs.parquet")  # as Arrow reads it back (a list's item is named `element`)
    summary = dedup(str(src), str(tmp_path / "clean"), batch_size=batch_size)
    kept = pq.read_table(tmp_path / "clean" / "docs.parquet")
    assert kept.schema.equals(table.schema, check_metadata=True) and kept.schema.metadata[b"origin"] == b"a test"
    assert kept.equals(table.take([0, 1, 3, 5, 7, 8]))  # null texts kept unjudged, every column, in order
    removed = _removed(tmp_path / "clean")
    assert removed == [
        {"file": "docs.parquet", "row": 2, "reason": "exact", "duplicate_of": {"file": "docs.parquet", "row": 0}},
        {"file": "docs.parquet", "row": 4, "reason": "near", "duplicate_of": {"file": "docs.parquet", "row": 0}},
        {"file": "docs.parquet", "row": 6, "reason": "exact", "duplicate_of": {"file": "docs.parquet", "row": 1}},
        {"file": "docs.parquet", "row": 9, "reason": "exact", "duplicate_of": {"file": "docs.parquet", "row": 8}},
    ]
    def norm(row: int) -> str:  # the text of an input row as dedup compares it
        return " ".join(table["text"][row].as_py().split()).casefold()

    for r in removed:  # 0-based row indices of the input: each points at the row that was judged, and its original
        original = r["duplicate_of"]["row"]
        assert norm(r["row"]) == norm(original) if r["reason"] == "exact" else table["text"][r["row"]].as_py() == NEAR_A
    assert (summary["documents"], summary["kept"], summary["kept_unparsed"]) == (8, 4, 2)
    assert [p.name for p in (tmp_path / "clean").iterdir() if p.name.endswith(".tmp")] == []


def test_filter_min_chars_on_parquet_logs_each_rows_length(tmp_path, monkeypatch, capsys):
    texts = ["a long enough document of words", "tiny", "", "another document that is long", "ok?", None]
    table = _table(texts)
    pq.write_table(table, tmp_path / "t.parquet")
    out = tmp_path / "filtered"
    code, text, err = run_main(monkeypatch, capsys, "data", "filter", tmp_path / "t.parquet", "--out", out,
                               "--min-chars", "10")
    assert code in (0, None), err
    assert pq.read_table(out / "t.parquet").equals(table.take([0, 3, 5]))
    removed = _removed(out)
    assert [(r["row"], r["reason"], r["value"]) for r in removed] == [(1, "too_short", 4), (2, "too_short", 0),
                                                                        (4, "too_short", 3)]
    assert all(len(texts[r["row"]]) == r["value"] for r in removed)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["documents"], summary["kept"], summary["kept_unparsed"], summary["text_field"]) == (5, 2, 1, "text")
    assert "removed too short" in text


def test_a_mixed_folder_and_another_text_field(tmp_path, monkeypatch, capsys):
    """.txt, .jsonl and .parquet in one pass: duplicates found across them, each written in its own format; the
    field names the text of both the .jsonl lines and the Parquet rows."""
    from selfsup.data.read.text import read_documents, source_files

    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text(f"{A}\n{B}\n")
    (src / "b.jsonl").write_text(json.dumps({"body": NEAR_A, "n": 1}) + "\n" + json.dumps({"text": C}) + "\n"
                                 + json.dumps({"body": C}) + "\n")
    table = pa.table({"body": [C, B, "only here", C], "n": [1, 2, 3, 4]})
    pq.write_table(table, src / "sub" / "c.parquet")
    out = tmp_path / "clean"
    code, text, err = run_main(monkeypatch, capsys, "data", "dedup", src, "--out", out, "--text-field", "body")
    assert code in (0, None), err
    assert (out / "a.txt").read_text() == f"{A}\n{B}\n"
    assert (out / "b.jsonl").read_text().splitlines() == [json.dumps({"text": C}), json.dumps({"body": C})]
    assert pq.read_table(out / "sub" / "c.parquet").equals(table.take([2]))
    assert _removed(out) == [
        {"file": "b.jsonl", "line": 1, "reason": "near", "duplicate_of": {"file": "a.txt", "line": 1}},
        {"file": "sub/c.parquet", "row": 0, "reason": "exact", "duplicate_of": {"file": "b.jsonl", "line": 3}},
        {"file": "sub/c.parquet", "row": 1, "reason": "exact", "duplicate_of": {"file": "a.txt", "line": 2}},
        {"file": "sub/c.parquet", "row": 3, "reason": "exact", "duplicate_of": {"file": "b.jsonl", "line": 3}},
    ]
    # what training reads of the output: the logs are not data, the kept rows are
    files = source_files(str(out))
    assert [f.relative_to(out).as_posix() for f in files] == ["a.txt", "b.jsonl", "sub/c.parquet"]
    assert list(read_documents(files, Counter(), 10_000, field="body")) == [
        A, B, C, "only here"]


def test_a_large_parquet_streams_into_few_row_groups(tmp_path):
    """Record batches of a few kept rows each are gathered into row groups, not written one tiny group each."""
    from selfsup.data.quality.filters import filter_corpus

    n = 5000
    texts = [f"row {i} " + ("long enough " * 3 if i % 50 == 0 else "") for i in range(n)]
    pq.write_table(_table(texts), tmp_path / "big.parquet", row_group_size=700)
    filter_corpus(str(tmp_path / "big.parquet"), str(tmp_path / "out"), min_chars=20)
    out = pq.ParquetFile(tmp_path / "out" / "big.parquet")
    assert out.metadata.num_rows == 100 and out.metadata.num_row_groups == 1
    assert out.read()["id"].to_pylist() == list(range(100, 100 + n, 50))


def test_one_line_errors_and_nothing_written(tmp_path, monkeypatch, capsys):
    import datasets

    pq.write_table(pa.table({"body": ["x"], "n": [1]}), tmp_path / "nofield.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(str(tmp_path / "dd"))
    capsys.readouterr()  # datasets' progress bar
    cases = [(tmp_path / "nofield.parquet", "--text-field 'text': nofield.parquet has columns body, n; expected one "
                                            "of them"),
             (tmp_path / "ints.parquet", "--text-field 'text': ints.parquet's column text holds int64; expected a "
                                         "column of strings"),
             (tmp_path / "dd", "is a datasets folder (save_to_disk), which filter does not read"),
             (tmp_path / "dd" / "train", "is a datasets folder (save_to_disk), which filter does not read")]
    for i, (src, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, _, err = run_main(monkeypatch, capsys, "data", "filter", src, "--out", out)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert ".to_parquet(" in err


def test_an_unreadable_parquet_is_counted_and_the_rest_cleaned(tmp_path, monkeypatch, capsys):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    pq.write_table(_table([A, A]), src / "good.parquet")
    code, _, err = run_main(monkeypatch, capsys, "data", "dedup", src, "--out", tmp_path / "clean")
    assert code in (0, None), err
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert (summary["skipped_unreadable_file"], summary["kept"], summary["removed_exact"]) == (1, 1, 1)
    assert sorted(p.name for p in (tmp_path / "clean").iterdir() if not p.name.startswith(".")) == [
        "good.parquet", "removed.jsonl", "summary.json"]


def test_parquet_rows_are_judged_as_the_same_jsonl_lines(tmp_path):
    """The same documents as .jsonl lines and as Parquet rows: the same removals, row index = line number − 1."""
    from selfsup.data.quality.dedup import dedup

    rng = np.random.default_rng(4)
    base = [_doc(10 + i, int(rng.integers(3, 70))) for i in range(60)]
    texts = [base[i] if rng.random() < 0.7 else " ".join(base[i].split()[:-1] + ["other"])
             for i in rng.integers(0, 60, 300)]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"text": texts}), tmp_path / "p" / "d.parquet")
    dedup(str(tmp_path / "j"), str(tmp_path / "jo"), batch_size=50)
    dedup(str(tmp_path / "p"), str(tmp_path / "po"), batch_size=64)
    by_line = [(r["line"] - 1, r["reason"], r["duplicate_of"]["line"] - 1) for r in _removed(tmp_path / "jo")]
    by_row = [(r["row"], r["reason"], r["duplicate_of"]["row"]) for r in _removed(tmp_path / "po")]
    assert by_row == by_line and {r for _, r, _ in by_row} == {"exact", "near"}
    assert pq.read_table(tmp_path / "po" / "d.parquet")["text"].to_pylist() == [
        json.loads(line)["text"] for line in (tmp_path / "jo" / "d.jsonl").read_text().splitlines()]
