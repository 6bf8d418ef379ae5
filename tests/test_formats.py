"""Text formats beyond a document per line (issue 15, part 4): data.document=file|paragraph over any suffix named in
data.extensions, and .parquet files read a record batch at a time from the column data.text_field."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from selfsup import config
from selfsup.data.cache import tokens
from selfsup.data.errors import DataError
from selfsup.data.read.text import read_documents, source_files
from selfsup.eval.embed import embed
from selfsup.train import trainer
from tests.conftest import TINY, docstrings
from tests.test_cli import invoke
from tests.test_train import quiet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def docs() -> list[str]:
    import argparse, collections, json as json_mod, pathlib, textwrap

    return [d for d in docstrings(argparse, collections, json_mod, pathlib, textwrap) if len(d) > 40]


@pytest.fixture
def notes(tmp_path, docs):
    """A folder of 24 multi-line .md notes (three paragraphs each), a .py file and a .txt that are not notes."""
    root = tmp_path / "notes"
    (root / "deep").mkdir(parents=True)
    for i in range(24):
        paragraphs = ["\n".join(d.split(". ")) for d in docs[3 * i:3 * i + 3]]  # lines within each paragraph
        (root / ("deep" if i % 2 else ".") / f"note{i:02d}.md").write_text("\n\n".join(paragraphs) + "\n")
    (root / "tool.py").write_text("print('not a note')\n")
    (root / "other.txt").write_text("not a note either\n")
    return root


def run_cfg(path, out, *extra):
    return config.load("gpt-clm", [f"data.path={path}", f"out_dir={out}", *TINY, "train.max_steps=2",
                                   "train.eval_every=2", "data.val_fraction=0.3", *extra])


def test_a_folder_of_notes_trains_a_document_per_file(notes, tmp_path):
    cfg = run_cfg(notes, tmp_path / "run", "data.document=file", "data.extensions=.md")
    trainer.train(cfg, quiet())
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert data["files"] == 24  # .py and .txt are not read
    assert sum(data["documents"].values()) == 24
    assert data["skipped"] == {}
    embedded = embed(tmp_path / "run", str(notes), tmp_path / "e.npy", None, False, 8, torch.device("cpu"))
    assert embedded.items == 24  # `selfsup embed` reads the notes as the run read them: a file each
    invoke("eval", tmp_path / "run", "--task", "perplexity", "--data", notes)  # and so does eval's perplexity
    assert json.loads((tmp_path / "run" / "eval" / "perplexity.json").read_text())["documents"] == 24


def test_paragraph_mode_counts_blocks_and_line_mode_lines(notes, docs):
    files = source_files(str(notes), [".md"])
    paragraphs = list(read_documents(files, Counter(), 200_000, document="paragraph"))
    assert len(paragraphs) == 72
    assert "\n".join(docs[0].split(". ")).strip() in paragraphs  # a block keeps its lines
    lines = list(read_documents(files, Counter(), 200_000, document="line"))
    assert len(lines) == sum(len(d.split(". ")) for d in docs[:72])
    whole = list(read_documents(files, Counter(), 200_000, document="file"))
    assert len(whole) == 24


def test_too_long_and_invalid_documents_are_counted_in_every_mode(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"short\n\n" + b"x" * 50 + b"\n\nbad \xff\nline\n\n \n")
    files = [tmp_path / "a.txt"]
    skipped = Counter()
    assert list(read_documents(files, skipped, 15, document="paragraph")) == ["short"]
    assert skipped == {"too_long": 1, "invalid_utf8": 1}
    skipped = Counter()
    assert list(read_documents(files, skipped, 15, document="file")) == []
    assert skipped == {"too_long": 1}  # 77 bytes > 4 x 15: never read


def test_parquet_trains_and_counts_skipped_rows(tmp_path, docs):
    texts = docs[:60]
    column = [*texts, None, None, None]  # nulls: skipped and counted, never a crash
    table = pa.table({"id": list(range(len(column))), "body": column})
    pq.write_table(table, tmp_path / "corpus.parquet", row_group_size=16)
    pq.write_table(pa.table({"body": [{"a": 1}, {"a": 2}]}), tmp_path / "structs.parquet")  # no strings at all
    cfg = run_cfg(tmp_path, tmp_path / "run", "data.text_field=body")
    trainer.train(cfg, quiet())
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert data["files"] == 2
    assert sum(data["documents"].values()) == 60
    assert data["skipped"] == {"null_body": 3, "not_string_body": 2}


def test_a_missing_column_is_one_line_naming_file_field_and_columns(tmp_path):
    pq.write_table(pa.table({"id": [1], "title": ["t"], "text": ["x"]}), tmp_path / "corpus.parquet")
    with pytest.raises(DataError) as err:
        list(read_documents([tmp_path / "corpus.parquet"], Counter(), 100, field="body"))
    assert str(err.value) == ("data.text_field 'body': corpus.parquet has columns id, title, text; "
                              "expected one of them")


def test_a_corrupt_parquet_file_is_skipped_and_counted(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    skipped = Counter()
    assert list(read_documents([tmp_path / "bad.parquet"], skipped, 100)) == []
    assert skipped == {"unreadable_file": 1}


def test_the_document_mode_and_field_change_the_cache_key(notes):
    files = source_files(str(notes), [".md"])
    keys = {tokens._cache_key(config.DataConfig(path=str(notes), **kw), 512, files)
            for kw in ({}, {"document": "file"}, {"document": "paragraph"}, {"text_field": "body"})}
    assert len({key for key, _ in keys}) == 4
    assert len({content for _, content in keys}) == 1  # the files alone: a run's identity is unchanged


def test_bad_settings_are_one_line(notes):
    with pytest.raises(config.ConfigError, match="data.document.*expected 'line', 'file' or 'paragraph'"):
        config.load("gpt-clm", ["data.document=page"])
    with pytest.raises(config.ConfigError, match="data.extensions.*start with a dot"):
        config.load("gpt-clm", ["data.extensions=md,py"])
    with pytest.raises(DataError, match=r"holds no \.rst files"):
        source_files(str(notes), [".rst"])
    with pytest.raises(DataError, match=r"or data.extensions=\.md to read it as plain text"):
        source_files(str(notes / "note00.md"))


@pytest.mark.parametrize("tool", ["dedup", "filter"])
def test_cleaning_tools_refuse_parquet_without_the_text_column_in_one_line_before_writing(tool, tmp_path):
    """They read .parquet (tests/test_clean_parquet.py); a file without the column is refused from its footer."""
    from selfsup.data.quality.dedup import dedup
    from selfsup.data.quality.filters import filter_corpus

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("one\ntwo\n")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "in" / "b.parquet")
    clean = {"dedup": dedup, "filter": filter_corpus}[tool]
    with pytest.raises(DataError) as err:
        clean(str(tmp_path / "in"), str(tmp_path / "out"))
    assert str(err.value) == "--text-field 'text': b.parquet has columns body; expected one of them"
    assert not (tmp_path / "out").exists()
    clean(str(tmp_path / "in"), str(tmp_path / "out"), field="body")
    assert pq.read_table(tmp_path / "out" / "b.parquet").equals(pq.read_table(tmp_path / "in" / "b.parquet"))


def test_labeled_sets_read_parquet_text_and_label_columns(tmp_path):
    from selfsup.data.labeled import read_labeled

    pq.write_table(pa.table({"text": ["good film", "bad film", None, "fine", "meh"], "label": [1, 0, 1, None, 0]}),
                   tmp_path / "train.parquet")
    train = read_labeled(str(tmp_path / "train.parquet"))
    assert train.items == ["good film", "bad film", "meh"] and train.classes == ["0", "1"]
    assert train.labels.tolist() == [1, 0, 0]
    assert train.skipped == {"no_label": 1, "no_text_field": 1}
    pq.write_table(pa.table({"text": ["great", "awful"], "label": [1, 2]}), tmp_path / "test.parquet")
    test = read_labeled(str(tmp_path / "test.parquet"), train.classes)
    assert test.items == ["great"] and test.skipped == {"unknown_label": 1}
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), tmp_path / "nolabel.parquet")
    with pytest.raises(DataError) as err:
        read_labeled(str(tmp_path / "nolabel.parquet"))
    assert str(err.value) == (f"labeled data '{tmp_path / 'nolabel.parquet'}': nolabel.parquet has columns id, text; "
                              "expected a 'text' and a 'label' column")


def test_a_missing_column_in_a_later_file_stops_before_any_document(tmp_path):
    pq.write_table(pa.table({"text": ["x"] * 3}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"body": ["y"]}), tmp_path / "b.parquet")
    documents = read_documents(source_files(str(tmp_path)), Counter(), 100)
    with pytest.raises(DataError, match="^data.text_field 'text': b.parquet has columns body; expected one of them$"):
        next(documents)
