"""Tokenizing on every core and ahead of training (`selfsup data tokenize`): the shards are the same bytes for any
number of workers, a run on them gets the batches a run on the corpus gets, bad input is skipped and counted, and
what a run or the command must refuse is one line."""

import json
import os
import subprocess
import sys

import pytest
from rich.console import Console
from tokenizers import Tokenizer

from selfsup import config
from selfsup.config import DataConfig
from selfsup.data.cache import encode, tokens
from selfsup.data.errors import DataError
from selfsup.train import trainer
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*_):
    pass


def contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    """The corpus tokenized ahead of training with a BPE of TINY's model.vocab_size, as a run on it trains."""
    out = tmp_path_factory.mktemp("tok") / "shards"
    tokens.tokenize(DataConfig(path=str(corpus)), 512, out, log=quiet)
    return out


def test_shards_are_the_same_bytes_for_any_number_of_workers(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "CHUNK_CHARS", 4000)  # ~40 chunks: several in flight per worker, out of order
    monkeypatch.setattr(encode, "SHARD_TOKENS", 5000)  # shards end inside chunks
    made = []
    for workers in (0, 1, 3):
        tokens.tokenize(DataConfig(path=str(corpus), workers=workers), 512, tmp_path / f"w{workers}", log=quiet)
        made.append(contents(tmp_path / f"w{workers}"))
    assert made[0] == made[1] == made[2]
    meta = json.loads(made[0]["meta.json"])
    train = meta["shards"]["train"]
    assert len(train) == -(-meta["tokens"]["train"] // 5000) > 3
    assert [len(made[0][n]) for n in train[:-1]] == [5000 * 2] * (len(train) - 1)  # uint16: exactly full shards


def test_a_run_on_the_shards_trains_as_a_run_on_the_corpus(corpus, shards, tmp_path):
    cache = tokens.default_cache() / "tokens"
    runs = {}
    for name, path in (("corpus", corpus), ("shards", shards)):
        before = set(cache.iterdir()) if cache.is_dir() else set()
        out = tmp_path / name
        trainer.train(config.load("gpt-clm", [f"data.path={path}", f"out_dir={out}", *TINY, "train.max_steps=4",
                                              "train.log_every=1", "train.eval_every=2"]),
                      Console(file=open(os.devnull, "w")))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        identity = json.loads((out / "identity.json").read_text())
        runs[name] = dict(losses=[(r["loss"], r.get("val_loss")) for r in records],
                          tokenizer=(out / "tokenizer.json").read_bytes(), data=identity["data"])
        if name == "shards":  # read in place: nothing tokenized again
            assert set(cache.iterdir()) == before
    assert len(runs["corpus"]["losses"]) == 4 and runs["corpus"]["losses"][1][1] is not None
    assert runs["shards"] == runs["corpus"]


def test_a_run_whose_settings_differ_from_the_shards_is_one_line(shards, corpus, tmp_path):
    with pytest.raises(DataError, match=r"tokenized with data.document=line, this run has data.document=paragraph"):
        tokens.prepare(DataConfig(path=str(shards), document="paragraph"), 512, log=quiet)
    with pytest.raises(DataError, match=r"tokenized with 5\d\d tokens but model.vocab_size is 300"):
        tokens.prepare(DataConfig(path=str(shards)), 300, log=quiet)
    tok = Tokenizer.from_file(str(shards / "tokenizer.json"))
    tok.save(str(tmp_path / "compact.json"), pretty=False)  # the same tokenizer in other bytes: e.g. a run's copy
    same = tokens.prepare(DataConfig(path=str(shards), tokenizer=str(tmp_path / "compact.json")), 512, log=quiet)
    assert same.dir == shards
    tok.add_tokens(["<extra>"])
    tok.save(str(tmp_path / "other.json"))
    with pytest.raises(DataError, match=r"data.tokenizer '.*other.json' is not the tokenizer"):
        tokens.prepare(DataConfig(path=str(shards), tokenizer=str(tmp_path / "other.json")), 512, log=quiet)
    cut = tmp_path / "cut"
    cut.mkdir()
    for name, data in contents(shards).items():
        (cut / name).write_bytes(data[:-2] if name == "train-00000.bin" else data)  # a copy one token short
    with pytest.raises(DataError, match=r"holds [\d,]+ train tokens in train-00000.bin, its meta.json says"):
        tokens.prepare(DataConfig(path=str(cut)), 512, log=quiet)


def test_nothing_is_written_over_or_into_what_is_read(corpus, tmp_path):
    with pytest.raises(DataError, match="is inside the input"):
        tokens.tokenize(DataConfig(path=str(corpus)), 512, corpus / "shards", log=quiet)
    with pytest.raises(DataError, match="is not empty; expected a new or empty folder"):
        tokens.tokenize(DataConfig(path=str(corpus / "a.txt")), 512, corpus, log=quiet)
    assert not (corpus / "shards").exists()
    with pytest.raises(DataError, match="is a file"):
        tokens.tokenize(DataConfig(path=str(corpus)), 512, corpus / "a.txt", log=quiet)


def test_the_command_skips_and_counts_bad_files_and_answers_mistakes_in_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("\n".join(f"document {i} reads like any other line of text" for i in range(300)))
    (data / "b.txt").write_bytes(b"a good line\n\xff\xfe not UTF-8\nanother good line\n")
    (data / "c.parquet").write_bytes(os.urandom(2000))  # not Parquet at all
    (data / "d.jsonl").write_text('{"text": "fine"}\nnot json\n')

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "selfsup", "data", "tokenize", str(data), *map(str, args)],
                              capture_output=True, text=True)

    done = cli("--out", tmp_path / "shards", "--vocab-size", 300, "--workers", 2)
    assert done.returncode == 0, done.stderr
    assert "skipped: bad_json: 1, invalid_utf8: 1, unreadable_file: 1" in done.stdout
    assert f"train with data.path={tmp_path / 'shards'} model.vocab_size=300" in done.stdout
    assert "tokenizing 4 file(s)" in done.stderr and "with 2 worker process(es)" in done.stderr
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["documents"]["train"] + meta["documents"]["val"] == 300 + 2 + 1
    for args, line in (((), "error: expected one of --tokenizer FILE"),
                       (("--vocab-size", 100), "error: --vocab-size 100: expected at least 260"),
                       (("--vocab-size", 300, "data.doc_mask=false"),
                        "error: 'data.doc_mask' is not a setting token shards depend on"),
                       (("--vocab-size", 300, "data.val_fraction=0.9"), "error: config key 'data.val_fraction'"),
                       (("--tokenizer", tmp_path / "none.json"), "error: --tokenizer '")):
        done = cli("--out", tmp_path / "again", *args)
        assert done.returncode == 2 and done.stderr.startswith(line) and len(done.stderr.splitlines()) == 1, \
            done.stderr
    assert not (tmp_path / "again").exists()


def test_inspect_tells_what_a_shard_folder_holds(shards, corpus):
    from selfsup.data.inspect import inspect_data

    rows = dict(inspect_data(str(shards)))
    meta = json.loads((shards / "meta.json").read_text())
    assert rows["read as"].startswith("token shards")
    assert rows["splits"].startswith(f"train {meta['documents']['train']:,} documents, "
                                     f"{meta['tokens']['train']:,} tokens in 1 shard(s)")
    assert rows["made from"] == f"{corpus} (2 file(s))" and "data.document=line" in rows["settings"]
    first = next(d for d in (corpus / "a.txt").read_text().splitlines() if not encode.is_val(d.strip(), 0.05))
    assert rows["first document"].strip("'").startswith(" ".join(first.split())[:100])
