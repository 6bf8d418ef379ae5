"""Hugging Face `datasets` folders written by save_to_disk as text data (issue 15, part 4): built here with the real
library, read with pyarrow alone."""

import json
from collections import Counter

import pytest

from selfsup import config
from selfsup.data.cache import tokens
from selfsup.data.errors import DataError
from selfsup.data.read.text import read_documents, source_files
from selfsup.train import trainer
from tests.conftest import docstrings
from tests.test_formats import run_cfg
from tests.test_train import quiet

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def docs() -> list[str]:
    import argparse, collections, json as json_mod, pathlib, textwrap

    return [d for d in docstrings(argparse, collections, json_mod, pathlib, textwrap) if len(d) > 40][:60]


def dataset(texts) -> "datasets.Dataset":
    return datasets.Dataset.from_dict({"id": list(range(len(texts))), "body": texts})


def test_a_saved_dataset_trains_and_counts_skipped_rows(tmp_path, docs):
    folder = tmp_path / "ds"
    dataset([*docs, None, None, "   "]).save_to_disk(str(folder), num_shards=2)  # two .arrow files
    assert len(source_files(str(folder))) == 2
    trainer.train(run_cfg(folder, tmp_path / "run", "data.text_field=body"), quiet())
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert data["files"] == 2 and sum(data["documents"].values()) == len(docs)
    assert data["skipped"] == {"null_body": 2, "empty": 1}
    logged = []
    tokens.prepare(config.DataConfig(path=str(folder), text_field="body", cache_dir=str(tmp_path / "c")), 512,
                   log=logged.append)
    assert logged[0] == f"data.path '{folder}': a datasets folder, reading its rows (column 'body', 2 .arrow file(s))"


def test_a_saved_dataset_dict_trains_on_its_train_split(tmp_path, docs):
    folder = tmp_path / "dd"
    train = datasets.Dataset.from_dict({"text": [*docs, None, "", None]})
    test = datasets.Dataset.from_dict({"text": ["held out"] * 5})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    assert [f.parent.name for f in source_files(str(folder))] == ["train"]
    docs_read = list(read_documents(source_files(str(folder)), skipped := Counter(), 100_000))
    assert "held out" not in docs_read and len(docs_read) == len(docs)
    assert skipped == {"null_text": 2, "empty": 1}
    logged = []
    tokens.prepare(config.DataConfig(path=str(folder), cache_dir=str(tmp_path / "c")), 512, log=logged.append)
    assert logged[0] == (f"data.path '{folder}': a datasets folder, reading its 'train' split "
                         f"(column 'text', 1 .arrow file(s))")
    trainer.train(run_cfg(folder, tmp_path / "run"), quiet())
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert sum(data["documents"].values()) == len(docs) and data["skipped"] == {"null_text": 2, "empty": 1}


def test_non_string_rows_are_skipped_and_counted(tmp_path):
    datasets.Dataset.from_dict({"text": [1, 2, None]}).save_to_disk(str(tmp_path / "ints"))
    skipped = Counter()
    assert list(read_documents(source_files(str(tmp_path / "ints")), skipped, 100)) == []
    assert skipped == {"not_string_text": 2, "null_text": 1}


def test_one_line_errors(tmp_path):
    dataset(["a"]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as err:
        list(read_documents(source_files(str(tmp_path / "ds")), Counter(), 100, field="text"))
    assert str(err.value) == "data.text_field 'text': ds has columns id, body; expected one of them"
    datasets.DatasetDict({"test": dataset(["a"])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict with splits test; expected a 'train' split") as err:
        source_files(str(tmp_path / "dd"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError) as err:
        source_files("hf:org/name")  # a model's id (hub datasets: tests/test_init_hub.py)
    assert str(err.value) == "data.path 'hf:org/name': expected a dataset id, hf:datasets/ORG/NAME[@REVISION]"


def test_a_corrupt_arrow_file_is_skipped_and_counted(tmp_path):
    dataset(["some text here"]).save_to_disk(str(tmp_path / "ds"))
    (arrow,) = source_files(str(tmp_path / "ds"))
    arrow.write_bytes(b"not arrow at all")
    skipped = Counter()
    assert list(read_documents([arrow], skipped, 100, field="body")) == []
    assert skipped == {"unreadable_file": 1}
    dataset([f"document {i}" for i in range(3000)]).save_to_disk(str(tmp_path / "cut"))  # 1000-row batches
    (arrow,) = source_files(str(tmp_path / "cut"))
    arrow.write_bytes(arrow.read_bytes()[:arrow.stat().st_size // 2])  # cut inside the second batch
    skipped = Counter()
    assert len(list(read_documents([arrow], skipped, 100, field="body"))) == 1000  # the first batch is kept
    assert skipped == {"unreadable_file": 1}


def test_the_cache_key_changes_with_the_dataset(tmp_path):
    folder = str(tmp_path / "ds")
    cfg = config.DataConfig(path=folder, text_field="body")
    dataset(["one document", "another"]).save_to_disk(folder)
    first = tokens._cache_key(cfg, 512, source_files(folder))
    assert tokens._cache_key(cfg, 512, source_files(folder)) == first  # stable
    dataset(["one document", "changed"]).save_to_disk(folder)
    second = tokens._cache_key(cfg, 512, source_files(folder))
    assert second[0] != first[0] and second[1] != first[1]  # key and content both move
    state = tmp_path / "ds" / "state.json"  # state.json is hashed too
    state.write_text(state.read_text().replace('"_split": null', '"_split": "train"'))
    assert tokens._cache_key(cfg, 512, source_files(folder))[0] != second[0]


def test_labeled_sets_read_a_saved_split(tmp_path):
    from selfsup.data.labeled import read_labeled

    train = datasets.Dataset.from_dict({"text": ["good film", "bad film", None, "meh"], "label": [1, 0, 1, 0]})
    test = datasets.Dataset.from_dict({"text": ["great", "awful"], "label": [1, 2]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    got = read_labeled(str(tmp_path / "dd" / "train"))
    assert got.items == ["good film", "bad film", "meh"] and got.labels.tolist() == [1, 0, 0]
    assert got.skipped == {"no_text_field": 1}
    assert read_labeled(str(tmp_path / "dd" / "test"), got.classes).skipped == {"unknown_label": 1}
    with pytest.raises(DataError) as err:
        read_labeled(str(tmp_path / "dd"))
    assert str(err.value) == (f"labeled data '{tmp_path / 'dd'}' is a datasets DatasetDict (splits test, train); "
                              f"expected one split's folder, e.g. '{tmp_path / 'dd' / 'test'}'")
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(DataError) as err:
        read_labeled(str(tmp_path / "nolabel"))
    assert str(err.value) == (f"labeled data '{tmp_path / 'nolabel'}': nolabel has columns text; "
                              "expected a 'text' and a 'label' column")


def test_inspect_counts_a_saved_datasets_rows(tmp_path):
    from selfsup.inspect import inspect_path

    datasets.DatasetDict({"train": dataset(["first doc", None, "third"]), "test": dataset(["x"])}).save_to_disk(
        str(tmp_path / "dd"))
    rows = dict(inspect_path(str(tmp_path / "dd"), None)[1])
    assert rows["read as"].startswith("text (guessed") and rows["rows"] == "3 datasets rows"
    assert rows["schema of data-00000-of-00001.arrow"] == "id: int64, body: string"
    assert rows["first document"].startswith("not readable as a run reads it: data.text_field 'text': dd/train has")
