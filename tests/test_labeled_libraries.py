"""Library docstrings labeled by library, with the unlabeled rest as a corpus, read from two small source folders
made here (the installed libraries' docstrings change with their versions)."""

import json

import pytest

from selfsup.data.builtin.labeled_libraries import build
from selfsup.data.errors import DataError
from tests.test_cli import invoke


def _module(path, docs: list[str]) -> None:
    """A source file whose module docstring is docs[0] and whose functions carry the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f'\n\ndef f{i}():\n    """{d}"""\n' for i, d in enumerate(docs[1:]))
    path.write_text(f'"""{docs[0]}"""\n{body}')


@pytest.fixture
def libraries(tmp_path):
    geo, audio = tmp_path / "src" / "geo", tmp_path / "src" / "audio"
    for i in range(6):
        _module(geo / f"shapes{i}.py", [f"Polygons and circles, module number {i} of the geometry library.",
                                        f"Area of a triangle number {i} from its three side lengths.", "short"])
    _module(geo / "tests" / "test_shapes.py", ["Tests are left out of both the labels and the corpus here."])
    for i in range(4):
        _module(audio / "io" / f"wav{i}.py", [f"Reading and writing wave files, module {i} of the audio library.",
                                              "Shared text: found in both libraries, so it has no label."])
    _module(geo / "common.py", ["Shared text: found in both libraries, so it has no label."])
    return [str(geo), str(audio)]


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_labeled_libraries_are_balanced_unambiguous_and_absent_from_the_unlabeled_corpus(libraries, tmp_path):
    summary = build(tmp_path / "out", libraries, per_class=None, min_chars=20)
    rows = _rows(tmp_path / "out" / "train.jsonl") + _rows(tmp_path / "out" / "test.jsonl")
    assert summary["classes"] == ["audio", "geo"] and summary["per_class"] == 4  # geo's 12 capped at audio's 4
    assert sorted(r["label"] for r in rows) == ["audio"] * 4 + ["geo"] * 4
    texts = {r["text"] for r in rows}
    assert not any("Shared text" in t or "Tests are" in t for t in texts)
    pool = tmp_path / "out" / "unlabeled"
    corpus = {p.relative_to(pool).as_posix(): p.read_text() for p in sorted(pool.rglob("*.txt"))}
    assert "geo/tests/test_shapes.txt" not in corpus and "geo/shapes0.txt" in corpus
    assert not any(t in doc for t in texts for doc in corpus.values())  # transfer: no labeled text pretrained on
    assert "short" in corpus["geo/shapes0.txt"]  # too short to label, still text to learn from
    assert summary["unlabeled"]["files"] == len(corpus)
    assert summary["unlabeled"]["texts"] == sum(doc.count("\n\n") + 1 for doc in corpus.values())
    again = build(tmp_path / "again", libraries, per_class=None, min_chars=20)
    assert (tmp_path / "again" / "train.jsonl").read_text() == (tmp_path / "out" / "train.jsonl").read_text()
    assert again["unlabeled"] == {**summary["unlabeled"], "path": str(tmp_path / "again" / "unlabeled")}


def test_labeled_libraries_say_what_was_wrong(libraries, tmp_path):
    with pytest.raises(DataError, match="expected at least 2 different ones"):
        build(tmp_path / "a", libraries[:1])
    with pytest.raises(DataError, match="neither an installed package nor a folder"):
        build(tmp_path / "b", [libraries[0], "no_such_library_here"])
    (tmp_path / "elsewhere" / "geo").mkdir(parents=True)
    with pytest.raises(DataError, match="two libraries would both be labeled 'geo'"):
        build(tmp_path / "d", [*libraries, str(tmp_path / "elsewhere" / "geo")])
    with pytest.raises(DataError, match="overlaps the library 'geo'"):
        build(tmp_path / "src" / "geo" / "out", libraries, min_chars=20)  # its unlabeled/ would sit in geo's sources
    with pytest.raises(DataError, match="overlaps the library"):
        build(tmp_path / "src", libraries, min_chars=20)
    build(tmp_path / "c", libraries, min_chars=20)
    with pytest.raises(DataError, match="already holds files; expected a new --out folder"):
        build(tmp_path / "c", libraries, min_chars=20)


def test_cli_data_labeled_libraries(libraries, tmp_path):
    text = invoke("data", "labeled-libraries", *libraries, "--out", tmp_path / "out", "--min-chars", "20")
    assert "geo" in text and "total" in text and "unlabeled:" in text
    assert (tmp_path / "out" / "unlabeled" / "audio" / "io" / "wav0.txt").is_file()
