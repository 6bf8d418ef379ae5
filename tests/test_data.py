from collections import Counter

import numpy as np
import pytest

from selfsup.config import BUILTIN_CORPUS, DataConfig
from selfsup.data.builtin import stdlib_docs
from selfsup.data.cache import tokens as shards
from selfsup.data.errors import DataError
from selfsup.data.load.windows import PackedWindows
from selfsup.data.read.text import read_documents, source_files
from selfsup.data.read.tokenizer import EOS, eos_id


def test_bad_documents_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good one\n   \n\xff\xfe broken utf8\n" + b"x" * 50 + b"\nlast good")
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\nnot json\n{"txt": "no field"}\n{"text": ""}\n[1, 2]\n')
    (tmp_path / "ignored.csv").write_text("a,b\n")
    skipped = Counter()
    docs = list(read_documents(source_files(str(tmp_path)), skipped, max_chars=40))
    assert docs == ["good one", "last good", "fine"]
    assert skipped == {"empty": 2, "invalid_utf8": 1, "too_long": 1, "bad_json": 1, "no_text_field": 2}


def test_missing_and_wrong_paths_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        source_files(str(tmp_path / "nope"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match=r"expected a .txt/.jsonl/.parquet file"):
        source_files(str(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .txt/.jsonl/.parquet files"):
        source_files(str(tmp_path / "empty"))


def test_builtin_corpus_is_the_stdlib_docstrings():
    files = source_files(BUILTIN_CORPUS)
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    docs = list(stdlib_docs.docstrings(next(f for f in files if f.name == "json" or f.stem == "decoder")))
    assert docs and all(isinstance(d, str) and d for d in docs)


def test_builtin_corpus_as_files_is_each_modules_docstrings_in_one_document():
    """data.document=file on the built-in corpus: a module's docstrings in one document (what the
    contriever recipe crops: two spans of one module share its topic); the default stays a docstring each."""
    files = [f for f in source_files(BUILTIN_CORPUS) if f.stem in ("decoder", "shlex")][:2]
    per_doc = list(read_documents(files, Counter(), 200_000, builtin=True))
    per_file = list(read_documents(files, Counter(), 200_000, builtin=True, document="file"))
    assert len(per_file) == len(files) < len(per_doc)
    assert per_file == ["\n\n".join(stdlib_docs.docstrings(f)) for f in files]


def test_prepare_splits_by_document_packs_eos_and_caches(corpus, tmp_path):
    cfg = DataConfig(path=str(corpus), cache_dir=str(tmp_path), val_fraction=0.1)
    logs = []
    c = shards.prepare(cfg, 512, log=logs.append)
    assert c.tokenizer.get_vocab_size() <= 512 and c.tokenizer.token_to_id(EOS) is not None
    meta = c.meta
    assert meta["documents"]["val"] > 0 and meta["documents"]["train"] > 5 * meta["documents"]["val"]
    train = np.concatenate([np.memmap(s, dtype=c.dtype, mode="r") for s in c.train])
    assert (train == eos_id(c.tokenizer)).sum() == meta["documents"]["train"]  # one EOS after each document
    assert train[-1] == eos_id(c.tokenizer) and len(train) == meta["tokens"]["train"]
    assert meta["unigram_ppl"] > 1
    # a second run is a cache hit on the same folder; a changed file is not
    again = shards.prepare(cfg, 512, log=logs.append)
    assert again.dir == c.dir and "cache hit" in logs[-1]
    (corpus / "a.txt").write_text((corpus / "a.txt").read_text() + "one more document\n")
    try:
        assert shards.prepare(cfg, 512, log=logs.append).dir != c.dir
    finally:
        (corpus / "a.txt").write_text((corpus / "a.txt").read_text().replace("one more document\n", ""))


def test_split_is_by_document_text():
    docs = [f"document number {i}" for i in range(2000)]
    val = [d for d in docs if shards.is_val(d, 0.1)]
    assert 120 < len(val) < 280 and val == [d for d in reversed(docs) if shards.is_val(d, 0.1)][::-1]


def test_reused_tokenizer_bigger_than_model_vocab_is_rejected(corpus, tmp_path):
    c = shards.prepare(DataConfig(path=str(corpus), cache_dir=str(tmp_path)), 512, log=lambda s: None)
    cfg = DataConfig(path=str(corpus), cache_dir=str(tmp_path), tokenizer=str(c.dir / "tokenizer.json"))
    with pytest.raises(DataError, match="expected model.vocab_size >= "):
        shards.prepare(cfg, 300, log=lambda s: None)


def test_too_few_documents_for_validation(tmp_path):
    (tmp_path / "one.txt").write_text("just one document here\n")
    with pytest.raises(DataError, match="validation split"):
        shards.prepare(DataConfig(path=str(tmp_path), cache_dir=str(tmp_path / "c")), 300, log=lambda s: None)


def _shard(tmp_path, n, name="s.bin"):
    path = tmp_path / name
    np.arange(n, dtype=np.uint16).tofile(path)
    return path


def test_windows_overlap_by_one_and_cover_every_token(tmp_path):
    w = PackedWindows([_shard(tmp_path, 101)], np.dtype("uint16"), context=10, shuffle=False)
    assert len(w) == 10
    batch = w.next_batch(10)["tokens"]
    assert batch.shape == (10, 11) and batch.dtype.is_floating_point is False
    assert batch[1, 0] == batch[0, -1] == 10  # targets of window i end where window i+1 starts
    assert sorted(batch[:, 1:].flatten().tolist()) == list(range(1, 101))  # every token a target once


def test_windows_span_shards_and_epochs_deterministically(tmp_path):
    shards_ = [_shard(tmp_path, 55, "a.bin"), _shard(tmp_path, 33, "b.bin")]
    a = PackedWindows(shards_, np.dtype("uint16"), context=10, seed=1)
    assert len(a) == 5 + 3
    first = [a.next_batch(3)["tokens"] for _ in range(5)]  # 15 windows: crosses into epoch 1
    assert a.state() == {"epoch": 1, "index": 7}
    b = PackedWindows(shards_, np.dtype("uint16"), context=10, seed=1)
    b.next_batch(3), b.next_batch(3)
    resumed = PackedWindows(shards_, np.dtype("uint16"), context=10, seed=1)
    resumed.load_state(b.state())
    for expected in first[2:]:
        assert (resumed.next_batch(3)["tokens"] == expected).all()
    other = PackedWindows(shards_, np.dtype("uint16"), context=10, seed=2)
    assert not all((other.next_batch(3)["tokens"] == f).all() for f in first[:2])


def test_too_little_data_for_one_window(tmp_path):
    with pytest.raises(DataError, match="make no window of 11 tokens"):
        PackedWindows([_shard(tmp_path, 5)], np.dtype("uint16"), context=10)
