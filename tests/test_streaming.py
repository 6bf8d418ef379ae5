"""Streaming from webdataset shards (data.streaming=true): disjoint shards per process and per decoding worker,
equal epochs on every process, exact resume by sample keys, corrupt members and empty shards, and short training
runs (one process, and two under gloo).

The shards are made here: 12×12 grayscale PNGs of a few distinct values, 8 samples a shard, one corrupt member
and one empty shard among them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup import config
from selfsup.data.cache.encode import is_val
from selfsup.data.errors import DataError
from selfsup.data.load.rows import RowLoader
from selfsup.data.stream.index import shard_index
from selfsup.data.stream.loader import ImageDecoder, PairDecoder, ShardTable, StreamLoader
from selfsup.data.stream.order import ShardOrder, StridedOrder
from selfsup.data.stream.prepare import shard_files
from selfsup.train.data import RunData
from tests.conftest import why_failed
from tests.test_cli import invoke
from tests.test_vision import TINY_VISION

pytestmark = pytest.mark.usefixtures("one_thread")

PER_SHARD = 8
CORRUPT = "s03/img-00002"  # its .png is not an image
EMPTY = 5  # shard-005.tar holds no member


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, shards: int = 8, captions: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(0 if s == EMPTY else PER_SHARD):
                key = f"s{s:02d}/img-{i:05d}"
                _add(tar, f"{key}.png", b"not a png" if key == CORRUPT else _png((s * PER_SHARD + i) * 3 % 256))
                _add(tar, f"{key}.cls", str(i % 2).encode())
                if captions:
                    _add(tar, f"{key}.txt", f"a square of shade {i} in shard {s}".encode())
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("stream") / "shards")


def table(root: Path, cache: Path) -> ShardTable:
    files, rels = shard_files(str(root))
    counts = np.array([len(shard_index(f, cache)[0]) for f in files])
    return ShardTable(tuple(files), tuple(rels), counts, cache)


def loader(t: ShardTable, rank: int = 0, world: int = 1, workers: int = 0, seed: int = 1) -> StreamLoader:
    out = StreamLoader(t, ShardOrder(t.counts, seed, buffer=5), ImageDecoder(8, 1), workers)
    out.shard(rank, world)
    return out


def keys(t: ShardTable, ids) -> list[str]:
    shard, within = t.locate(np.asarray(ids))
    return [f"{t.rels[s]}#{shard_index(t.paths[s], t.cache)[0][i][0]}" for s, i in zip(shard, within)]


def take(l: StreamLoader, batches: int, size: int = 4) -> list[int]:
    return [i for _ in range(batches) for i in l.next_batch(size)["index"].tolist()]


def test_index_counts_samples_from_headers_and_reads_any_sample(shards, tmp_path):
    t = table(shards, tmp_path)
    assert t.counts.tolist() == [PER_SHARD] * EMPTY + [0] + [PER_SHARD] * 2
    assert keys(t, [0, 9, 40]) == ["shard-000.tar#s00/img-00000", "shard-001.tar#s01/img-00001",
                                   "shard-006.tar#s06/img-00000"]  # id 40 skips the empty shard
    index_files = list((tmp_path / "shard-index").glob("*.json"))
    assert len(index_files) == 8
    (shards / "shard-000.tar").touch()  # a changed shard (new mtime) is indexed anew
    shard_index(shards / "shard-000.tar", tmp_path)
    assert len(list((tmp_path / "shard-index").glob("*.json"))) == 9


def test_a_damaged_archive_keeps_what_was_indexed_and_is_marked_corrupt(shards, tmp_path):
    data = (shards / "shard-001.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) // 2 + 100])
    samples, corrupt = shard_index(cut, tmp_path)
    assert corrupt and 0 < len(samples) < PER_SHARD
    (tmp_path / "zero.tar").write_bytes(b"")
    assert shard_index(tmp_path / "zero.tar", tmp_path) == ([], True)


def test_two_processes_read_disjoint_shards_and_equal_epochs(shards, tmp_path):
    t = table(shards, tmp_path)
    for epoch in range(3):
        orders = [ShardOrder(t.counts, seed=1, buffer=5, rank=r, world=2) for r in range(2)]
        (ids0, slot0), (ids1, slot1) = (o.epoch(epoch) for o in orders)
        assert len(ids0) == len(ids1) == orders[0].length(epoch) >= 24  # 7 non-empty shards of 8: 24 + 32
        assert not set(ids0) & set(ids1)
        read0, read1 = set(t.locate(ids0)[0]), set(t.locate(ids1)[0])
        assert not read0 & read1  # whole shards per process
        assert set(np.flatnonzero(slot0 >= 0)).isdisjoint(np.flatnonzero(slot1 >= 0))
        workers = [set(np.flatnonzero((slot0 >= 0) & (slot0 % 2 == k))) for k in range(2)]
        assert not workers[0] & workers[1] and read0 <= workers[0] | workers[1]  # and per decoding worker
    one = ShardOrder(t.counts, seed=1, buffer=5).epoch(0)[0]
    assert sorted(one) == list(range(int(t.counts.sum())))  # one process: every sample once an epoch
    assert ShardOrder(t.counts, seed=1, buffer=5).epoch(1)[0].tolist() != one.tolist()  # a new order each epoch


def test_batches_are_whole_across_epochs_and_corrupt_members_are_counted(shards, tmp_path):
    t = table(shards, tmp_path)
    ranks = [loader(t, r, 2) for r in range(2)]
    per_epoch = ranks[0].order.length(0)
    seen = [take(l, 3 * per_epoch // 4) for l in ranks]  # three epochs' worth, in batches of 4
    corrupt_id = keys(t, range(int(t.counts.sum()))).index(f"shard-003.tar#{CORRUPT}")
    for r, l in enumerate(ranks):
        assert len(seen[r]) == 3 * per_epoch  # every batch full: no process runs out before another
        epoch, index = l.state()["ranks"][r]
        # positions consumed: the samples served plus the corrupt one, once in each epoch it was dealt here
        assert epoch * per_epoch + index == 3 * per_epoch + l.skipped["corrupt image"]
        assert set(l.skipped) <= {"corrupt image"}
    assert all(corrupt_id not in s for s in seen)
    assert sum(l.skipped["corrupt image"] for l in ranks) >= 1
    first = [s[:per_epoch - 1] for s in seen]
    assert not set(first[0]) & set(first[1])


def test_resume_continues_exactly_where_it_stopped(shards, tmp_path):
    t = table(shards, tmp_path)
    straight = loader(t)
    take(straight, 5, 3)
    state = json.loads(json.dumps(straight.state()))  # as a checkpoint stores it
    expected = take(straight, 12, 3)  # into the next epoch
    resumed = loader(t)
    resumed.load_state(state)
    assert keys(t, take(resumed, 12, 3)) == keys(t, expected)
    two = [loader(t, r, 2) for r in range(2)]  # two processes: each gets its own position back
    for l in two:
        take(l, 4, 3)
    state = {"streaming": 1, "world": 2, "ranks": [l.state()["ranks"][r] for r, l in enumerate(two)]}
    expected = [take(l, 6, 3) for l in two]
    for r in range(2):
        again = loader(t, r, 2)
        again.load_state(state)
        assert take(again, 6, 3) == expected[r]
    one = loader(t)
    with pytest.raises(DataError, match="mid-epoch for 2 process.*expected 2 process"):
        one.load_state(state)
    one.load_state({"streaming": 1, "world": 2, "ranks": [[1, 0], [1, 0]]})  # at an epoch boundary: allowed
    corrupt_id = keys(t, range(int(t.counts.sum()))).index(f"shard-003.tar#{CORRUPT}")
    epoch1 = [i for i in one.order.epoch(1)[0].tolist() if i != corrupt_id]
    assert take(one, 2, 3) == epoch1[:6]


def test_worker_processes_give_the_same_batches_and_stop_on_close(shards, tmp_path):
    import multiprocessing

    t = table(shards, tmp_path)
    pooled = loader(t, workers=2)
    assert take(pooled, 10, 4) == take(loader(t, workers=0), 10, 4)
    assert len(multiprocessing.active_children()) == 2
    pooled.close()  # a multi-process run's worker ends without the interpreter's clean-up: nothing may be left
    assert multiprocessing.active_children() == []


def test_validation_strides_the_held_out_samples_over_processes(shards, tmp_path):
    t = table(shards, tmp_path)
    val = [StreamLoader(t, StridedOrder(t.counts), ImageDecoder(8, 1)) for _ in range(2)]
    for r, l in enumerate(val):
        l.shard(r, 2)
    a, b = (take(l, 2, 4) for l in val)
    assert a == [0, 2, 4, 6, 8, 10, 12, 14] and b == [1, 3, 5, 7, 9, 11, 13, 15]


def test_pairs_carry_tokenized_captions(tmp_path):
    from selfsup.data.read import tokenizer as toks

    root = write_shards(tmp_path / "pairs", shards=2, captions=True)
    t = table(root, tmp_path)
    tok = toks.train_bpe([f"a square of shade {i}" for i in range(50)], 300)
    decoder = PairDecoder("image", (("channels", 1), ("size", 8)))
    l = StreamLoader(t, ShardOrder(t.counts), decoder, text=(tok, 64))
    batch = l.next_batch(5)
    assert batch["media"].shape == (5, 1, 8, 8) and batch["lengths"].tolist() == [1] * 5
    assert batch["text"].shape == (5, 64)
    for ids, mask, key in zip(batch["text"], batch["text_mask"], keys(t, batch["index"])):
        shard, i = int(key[6:9]), int(key[-5:])  # "shard-SSS.tar#sSS/img-IIIII"
        assert tok.decode(ids[mask][1:].tolist()) == f"a square of shade {i} in shard {shard}"  # after the EOS


def test_bad_streaming_inputs_fail_with_one_line(shards, tmp_path):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.tar").write_bytes((shards / "shard-000.tar").read_bytes())
    (tmp_path / "mixed" / "b.png").write_bytes(_png(3))
    with pytest.raises(DataError, match="2 shard|1 .tar and 1 other data file"):
        shard_files(str(tmp_path / "mixed"))
    t = table(shards, tmp_path)
    with pytest.raises(DataError, match="no sample for some of the 9 processes"):
        loader(t, 0, 9)
    with pytest.raises(DataError, match="from a run without data.streaming"):
        loader(t).load_state({"epoch": 0, "index": 5})
    with pytest.raises(DataError, match="from a run with data.streaming=true"):
        RowLoader({"x": np.arange(4)}).load_state(loader(t).state())
    for recipe in ("gpt-clm", "deepcluster"):
        with pytest.raises(DataError, match=f"data.streaming=true: {recipe.split('-')[-1]} .*expected data.streaming="
                                            "false"):
            RunData(config.load(recipe, [f"data.path={shards}", "data.streaming=true"]), tmp_path, print)


def test_streaming_training_run_and_its_summary(shards, tmp_path):
    val = [rel for rel in shard_files(str(shards))[1] if is_val(rel, 0.2)]
    out = tmp_path / "run"
    text = invoke("train", "simclr", f"data.path={shards}", "data.streaming=true", "data.val_fraction=0.2",
                  f"out_dir={out}", *TINY_VISION, "image.size=8", "model.patch=4", "train.batch_size=8",
                  "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4")
    assert "streaming" in text
    summary = json.loads((out / "summary.json").read_text())
    data = summary["data"]
    assert data["streaming"] and data["shards"] == {"train": 8 - len(val), "val": len(val)}
    corrupt_in_train = "shard-003.tar" not in val
    assert data["stats_samples"] == data["images"]["train"] - corrupt_in_train  # all of them: fewer than 1000
    assert summary["status"] == "finished" and summary["images_seen"] == 64
    assert (summary["val_loss"] is not None) == bool(val)
    if corrupt_in_train:  # 8 steps of 8 pass every training sample
        assert data["skipped"]["corrupt image"] >= 1
    state = json.loads((out / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert state["data"]["streaming"] == 1 and state["data"]["world"] == 1


def test_two_processes_under_gloo_train_and_resume(shards, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = ["train", "simclr", f"data.path={shards}", "data.streaming=true", f"out_dir={out}", *TINY_VISION,
            "image.size=8", "model.patch=4", "train.batch_size=4", "train.checkpoint_every=3", "train.eval_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *extra: subprocess.run([sys.executable, "-m", "selfsup", *args, *extra],  # noqa: E731
                                        capture_output=True, text=True, env=env, timeout=300)
    two = ("dist.nproc_per_node=2", f"dist.rdzv_endpoint=127.0.0.1:{port}")
    r = run("train.max_steps=3", *two)
    assert r.returncode == 0, r.stdout[-2000:] + why_failed(r)
    state = json.loads((out / "checkpoints" / "step-00000003" / "state.json").read_text())["data"]
    # each process's own position: 3 batches of 4, plus the corrupt member on the process it was dealt to
    assert state["world"] == 2 and sorted(index for _, index in state["ranks"]) in ([12, 12], [12, 13])
    r = run("train.max_steps=5", "dist.nproc_per_node=1")
    assert r.returncode != 0
    assert "mid-epoch for 2 process(es) but this run has 1" in r.stdout + r.stderr
    r = run("train.max_steps=5", *two)
    assert r.returncode == 0, r.stdout[-2000:] + why_failed(r)
    state = json.loads((out / "checkpoints" / "step-00000005" / "state.json").read_text())["data"]
    assert sorted(index for _, index in state["ranks"]) in ([20, 20], [20, 21])
