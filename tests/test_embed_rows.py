"""`selfsup embed` beside its .npy: a rows file naming each row's source in row order, the skipped items named with
their reason, for texts (.txt, .jsonl, .parquet), image folders and .tar shards; and --joint texts through the
text tower of a tiny CLIP run, in the space zero-shot evaluation ranks by."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from selfsup import config
from selfsup.cli import app
from selfsup.data.errors import DataError
from selfsup.data.read.captions import caption_arrays
from selfsup.eval import joint
from selfsup.probe.inputs import run_inputs
from selfsup.rundir import open_run
from selfsup.train import trainer
from tests.test_cli import invoke, runner
from tests.test_eval import mlm_run  # noqa: F401  (the trained text run fixture)
from tests.test_multimodal import IMAGE, TOWERS
from tests.test_train import quiet

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ("--device", "cpu")


def _png(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """A 2-step CLIP run on 32 noise images with captions."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(32):
        (root / f"{i}.png").write_bytes(_png(rng))
        lines.append(json.dumps({"image": f"{i}.png", "text": f"noise number {i % 4}"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("clip") / "run"
    cfg = config.load("clip", [f"data.path={root / 'pairs.jsonl'}", f"out_dir={out}", *TOWERS, *IMAGE,
                               "train.max_steps=2", "train.batch_size=8", f"data.cache_dir={root / 'cache'}"])
    trainer.train(cfg, quiet())
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder: five images under a/ and b/, a loose one and a corrupt one; with their bytes by relative path."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    files = {}
    for rel in ("a/0.png", "a/1.png", "b/0.png", "b/sub/2.png", "loose.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        files[rel] = _png(rng)
        (root / rel).write_bytes(files[rel])
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    return root, files


def test_text_rows_name_each_line_and_row_and_the_skipped(mlm_run, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"Return the number of items.\n \nSplit the path.\n\xff\xfe bad\nOpen a file.\n")
    (src / "deep" / "b.jsonl").write_text('{"text": "Join two paths."}\nnot json\n{"other": 1}\n'
                                          '{"text": "Read the bytes."}\n')
    invoke("embed", mlm_run, src, "--out", tmp_path / "emb.npy", "--jsonl", tmp_path / "emb.jsonl", *CPU)
    emb = np.load(tmp_path / "emb.npy")
    rows = _lines(tmp_path / "emb.rows.jsonl")
    assert [(r["row"], r["file"], r["key"], r["text"]) for r in rows] == [
        (0, "a.txt", 1, "Return the number of items."), (1, "a.txt", 3, "Split the path."),
        (2, "a.txt", 5, "Open a file."), (3, "deep/b.jsonl", 1, "Join two paths."),
        (4, "deep/b.jsonl", 4, "Read the bytes.")]
    assert len(emb) == len(rows)
    assert _lines(tmp_path / "emb.skipped.jsonl") == [
        {"file": "a.txt", "key": 2, "skipped": "empty"}, {"file": "a.txt", "key": 4, "skipped": "invalid_utf8"},
        {"file": "deep/b.jsonl", "key": 2, "skipped": "bad_json"},
        {"file": "deep/b.jsonl", "key": 3, "skipped": "no_text_field"}]
    # --jsonl is as before: text and embedding, in the same order as the .npy and the rows file
    js = _lines(tmp_path / "emb.jsonl")
    assert [r["text"] for r in js] == [r["text"] for r in rows]
    np.testing.assert_allclose(np.array([r["embedding"] for r in js]), emb, rtol=1e-6)
    # row i is the embedding of that text alone
    one = tmp_path / "one.txt"
    one.write_text(rows[3]["text"] + "\n")
    invoke("embed", mlm_run, one, "--out", tmp_path / "one.npy", *CPU)
    np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], emb[3], atol=1e-5)


def test_parquet_texts_get_parquet_rows_files(mlm_run, tmp_path):  # noqa: F811
    pq.write_table(pa.table({"text": ["Sort a list.", None, "Parse a date.", "   "]}), tmp_path / "t.parquet")
    text = invoke("embed", mlm_run, tmp_path / "t.parquet", "--out", tmp_path / "e", *CPU)
    assert "e.rows.parquet" in text and "named in" in text
    emb = np.load(tmp_path / "e.npy")
    rows = pq.read_table(tmp_path / "e.rows.parquet").to_pylist()
    assert rows == [dict(row=0, file="t.parquet", key=0, text="Sort a list."),
                    dict(row=1, file="t.parquet", key=2, text="Parse a date.")] and len(emb) == 2
    assert pq.read_table(tmp_path / "e.skipped.parquet").to_pylist() == [
        dict(file="t.parquet", key=1, skipped="null_text"), dict(file="t.parquet", key=3, skipped="empty")]


def test_image_folder_rows_align_and_the_corrupt_image_is_named(clip_run, images, tmp_path):
    root, files = images
    text = invoke("embed", clip_run, root, "--out", tmp_path / "emb.npy", *CPU)
    assert "images" in text and "corrupt image" in text
    emb = np.load(tmp_path / "emb.npy")
    rows = _lines(tmp_path / "emb.rows.jsonl")
    assert [r["file"] for r in rows] == ["a/0.png", "a/1.png", "b/0.png", "b/sub/2.png", "loose.png"]
    assert [r["row"] for r in rows] == list(range(5)) and all(r["key"] is None for r in rows) and len(emb) == 5
    assert _lines(tmp_path / "emb.skipped.jsonl") == [{"file": "b/bad.png", "key": None, "skipped": "corrupt image"}]
    for r in rows[::2]:  # row i is the embedding of that image alone
        invoke("embed", clip_run, root / r["file"], "--out", tmp_path / "one.npy", *CPU)
        assert _lines(tmp_path / "one.rows.jsonl") == [{"row": 0, "file": r["file"].split("/")[-1], "key": None}]
        np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], emb[r["row"]], atol=1e-5)


def test_tar_rows_name_the_shard_and_key(clip_run, images, tmp_path):
    root, files = images
    shards = tmp_path / "shards"
    shards.mkdir()
    members = [("k0.png", files["a/1.png"]), ("k0.cls", b"1"), ("k1.txt", b"no image"),
               ("k2.png", b"\x89PNGgarbage"), ("dir/k3.png", files["loose.png"])]
    with tarfile.open(shards / "s-000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shards / "s-001.tar").write_bytes(b"not a tar at all" * 64)
    invoke("embed", clip_run, shards, "--out", tmp_path / "emb.npy", *CPU)
    emb = np.load(tmp_path / "emb.npy")
    rows = _lines(tmp_path / "emb.rows.jsonl")
    assert rows == [{"row": 0, "file": "s-000.tar", "key": "k0"}, {"row": 1, "file": "s-000.tar", "key": "dir/k3"}]
    assert _lines(tmp_path / "emb.skipped.jsonl") == [
        {"file": "s-000.tar", "key": "k1", "skipped": "no image in tar sample"},
        {"file": "s-001.tar", "key": None, "skipped": "corrupt tar"},
        {"file": "s-000.tar", "key": "k2", "skipped": "corrupt image"}]  # source skips first, then decoding's
    # the same images as loose files embed the same
    invoke("embed", clip_run, root, "--out", tmp_path / "folder.npy", *CPU)
    folder = np.load(tmp_path / "folder.npy")
    np.testing.assert_allclose(emb, folder[[1, 4]], atol=1e-5)


def test_npz_rows_name_the_array_index(clip_run, images, tmp_path):
    root, files = images
    arrays = np.stack([np.array(Image.open(io.BytesIO(files[rel]))) for rel in ("b/0.png", "a/0.png")])  # (2, 16, 16)
    np.savez(tmp_path / "x.npz", images=arrays)
    invoke("embed", clip_run, tmp_path / "x.npz", "--out", tmp_path / "emb.npy", *CPU)
    assert _lines(tmp_path / "emb.rows.jsonl") == [{"row": 0, "file": "x.npz", "key": 0},
                                                   {"row": 1, "file": "x.npz", "key": 1}]
    invoke("embed", clip_run, root, "--out", tmp_path / "folder.npy", *CPU)
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), np.load(tmp_path / "folder.npy")[[2, 0]], atol=1e-5)


def test_a_cache_without_names_is_built_again_for_embed(clip_run, images, tmp_path):
    root, _ = images
    cache = tmp_path / "cache"
    from selfsup.data.cache.images import prepare_images

    cfg = config.load(str(clip_run))
    data = prepare_images(str(root), cfg.image.size, cfg.image.channels, 0.0, str(cache), log=lambda s: None)
    for name in ("train_ids.jsonl", "val_ids.jsonl", "skipped.jsonl"):
        (data.dir / name).unlink()  # as a cache written before names were
    again = prepare_images(str(root), cfg.image.size, cfg.image.channels, 0.0, str(cache), log=lambda s: None)
    assert again.dir == data.dir and not (data.dir / "train_ids.jsonl").exists()  # training does not need them
    named = prepare_images(str(root), cfg.image.size, cfg.image.channels, 0.0, str(cache), log=lambda s: None,
                           names=True)
    assert named.dir == data.dir and named.content == data.content  # the same key and content digest
    assert len((data.dir / "train_ids.jsonl").read_text().splitlines()) == 5


def test_joint_texts_are_the_text_towers_unit_vectors_and_rank_as_zeroshot(clip_run, images, tmp_path):
    root, _ = images
    captions = ["noise number 0", "noise number 1", "a digit", "noise number 3"]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"text": c, "id": i}) + "\n"
                                              for i, c in enumerate(captions)))
    (tmp_path / "q.txt").write_text("\n".join(captions) + "\n")
    invoke("embed", clip_run, tmp_path / "q.jsonl", "--joint", "--out", tmp_path / "q.npy", "--jsonl",
           tmp_path / "q.emb.jsonl", *CPU)
    invoke("embed", clip_run, tmp_path / "q.txt", "--joint", "--out", tmp_path / "t.npy", *CPU)
    q = np.load(tmp_path / "q.npy")
    np.testing.assert_array_equal(q, np.load(tmp_path / "t.npy"))
    assert [r["text"] for r in _lines(tmp_path / "q.rows.jsonl")] == captions
    assert [r["key"] for r in _lines(tmp_path / "q.rows.jsonl")] == [1, 2, 3, 4]
    cfg, objective, tok = open_run(clip_run, torch.device("cpu"))
    ids, mask = caption_arrays(tok, captions, cfg.text.context)
    with torch.no_grad():
        direct = objective.eval().embed_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()  # (4, E)
    np.testing.assert_allclose(q, direct, atol=1e-6)
    assert q.shape == (4, cfg.align.embed_dim) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)

    invoke("embed", clip_run, root, "--joint", "--out", tmp_path / "m.npy", *CPU)
    m = np.load(tmp_path / "m.npy")  # (5, E)
    scores = m @ q.T  # (5, 4): the cosines zero-shot ranks by, with one prompt per class
    from selfsup.data.cache.images import prepare_images

    data = prepare_images(str(root), cfg.image.size, cfg.image.channels, 0.0, cfg.data.cache_dir, log=lambda s: None)
    labels = torch.from_numpy(scores.argmax(axis=1))
    r = joint.zeroshot(objective, tok, run_inputs(cfg, objective, tok), data.train, labels, captions, ["{label}"],
                       cfg.text.context, 8, torch.device("cpu"))
    assert r["accuracy"] == 1.0  # eval's predictions are the argmax of the embed files' cosines
    media = joint.encode(joint.JointMedia(objective), run_inputs(cfg, objective, tok), data.train, 8,
                         torch.device("cpu"))
    np.testing.assert_allclose(scores, (media @ joint.embed_texts(objective, tok, captions, cfg.text.context, 8,
                                                                   torch.device("cpu")).t()).numpy(), atol=1e-5)


def test_joint_reads_pairs_as_media_and_refuses_a_mixed_file(clip_run, tmp_path):
    pairs = config.load(str(clip_run)).data.path
    invoke("embed", clip_run, pairs, "--joint", "--out", tmp_path / "p.npy", *CPU)
    assert np.load(tmp_path / "p.npy").shape[0] == 32  # a pairs .jsonl is its images, as before
    (tmp_path / "mixed.jsonl").write_text('{"image": "x.png", "text": "a"}\n{"text": "b"}\n')
    result = runner.invoke(app, ["embed", str(clip_run), str(tmp_path / "mixed.jsonl"), "--joint", "--out",
                                 str(tmp_path / "x.npy")])
    assert isinstance(result.exception, DataError) and "mixes 1 rows with a 'image'" in str(result.exception)
    assert len(str(result.exception).splitlines()) == 1
