"""Library docstrings labeled by library, with the unlabeled rest as a corpus, read from two small source folders
made here (the installed libraries' docstrings change with their versions)."""

import json

import pytest

from selfsup.data.builtin.labeled_libraries import LIBRARIES, build
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
    with pytest.raises(DataError, match="would both be labeled 'geo'; expected folders of different names"):
        build(tmp_path / "d", [*libraries, str(tmp_path / "elsewhere" / "geo")])
    with pytest.raises(DataError, match="overlaps the library 'geo'"):
        build(tmp_path / "src" / "geo" / "out", libraries, min_chars=20)  # its unlabeled/ would sit in geo's sources
    with pytest.raises(DataError, match="overlaps the library"):
        build(tmp_path / "src", libraries, min_chars=20)
    _module(tmp_path / "src" / "empty" / "a.py", ["short"])
    with pytest.raises(DataError, match="^empty: no docstring of at least 20 characters found in it alone"):
        build(tmp_path / "e", [*libraries, str(tmp_path / "src" / "empty")], min_chars=20)
    with pytest.raises(DataError, match="--per-class 0: expected at least 1"):
        build(tmp_path / "f", libraries, per_class=0)
    assert not (tmp_path / "e" / "train.jsonl").exists() and not (tmp_path / "f").exists()
    build(tmp_path / "c", libraries, min_chars=20)
    with pytest.raises(DataError, match="already holds files; expected a new --out folder"):
        build(tmp_path / "c", libraries, min_chars=20)


def test_a_docstring_that_repeats_a_labeled_text_stays_out_of_the_unlabeled_corpus(libraries, tmp_path):
    """Transfer means no test text pretrained on, also where a docstring repeats one within it or re-wrapped."""
    _module(tmp_path / "src" / "geo" / "copies.py", [  # geo's, copying audio's texts (all 4 labeled: its cap)
        "Reading and writing wave files, module 0 of the audio library. See also the mixer.",  # within a longer one
        "reading and writing WAVE files -- module 1\n    of the audio library",  # case, punctuation and wrapping
        "Reading and writing wave files, module 12 of the audio library."])  # not a copy: module 12 is not 1
    summary = build(tmp_path / "out", libraries, per_class=None, min_chars=20)
    texts = {r["text"] for r in _rows(tmp_path / "out" / "train.jsonl") + _rows(tmp_path / "out" / "test.jsonl")}
    assert {f"Reading and writing wave files, module {i} of the audio library." for i in range(4)} <= texts
    corpus = "".join(p.read_text() for p in (tmp_path / "out" / "unlabeled").rglob("*.txt"))
    assert "mixer" not in corpus and "WAVE" not in corpus
    module_12 = "Reading and writing wave files, module 12 of the audio library."
    assert (module_12 in texts) != (module_12 in corpus)  # labeled as geo's, or else kept to pretrain on
    copies = [t for t in texts if "mixer" in t or "WAVE" in t]  # a copy may be labeled as geo's itself
    assert summary["unlabeled"]["copies_left_out"] == 2 - len(copies)


def test_labels_are_the_folders_own_names(libraries, tmp_path, monkeypatch):
    monkeypatch.chdir(libraries[0])  # '.' is labeled geo, not '' (which would write straight into unlabeled/)
    summary = build(tmp_path / "out", [".", libraries[1]], per_class=None, min_chars=20)
    assert summary["classes"] == ["audio", "geo"]
    assert (tmp_path / "out" / "unlabeled" / "geo" / "shapes0.txt").is_file()


def test_cli_data_labeled_libraries(libraries, tmp_path):
    text = invoke("data", "labeled-libraries", *libraries, "--out", tmp_path / "out", "--min-chars", "20")
    assert "geo" in text and "total" in text and "unlabeled:" in text and "repeated a labeled text" in text
    assert (tmp_path / "out" / "unlabeled" / "audio" / "io" / "wav0.txt").is_file()


def test_cli_help_names_the_default_libraries():
    """The help states the defaults by hand (the CLI answers --help without importing the data modules)."""
    text = " ".join(invoke("data", "labeled-libraries", "--help").split())
    assert all(name in text for name in LIBRARIES)
