"""Images and image-text pairs from tables (issue 15, part 4): `.parquet` files written here with pyarrow and a
`datasets` folder saved with the real library's save_to_disk, an image per row as encoded bytes, a datasets.Image()
struct or a path, read a record batch at a time. A tiny simclr and a tiny clip train on them; bad rows are skipped
and counted by reason; a missing or unusable column is one line; the fields key the cache; labeled tables serve
evaluation; `selfsup inspect` shows the columns."""

from __future__ import annotations

import io
import json
import weakref
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from selfsup import config
from selfsup.data.cache.decoding import CHUNK
from selfsup.data.cache.images import prepare_images
from selfsup.data.cache.media import prepare_media
from selfsup.data.cache.rows import Item, build_rows
from selfsup.data.errors import DataError
from selfsup.data.labeled import read_labeled_images
from selfsup.data.read import table_media
from selfsup.data.read.image import ImageRows, decode_image
from selfsup.inspect import inspect_path
from selfsup.train import trainer
from selfsup.train.continual import load_config
from tests.test_multimodal import IMAGE, _train
from tests.test_train import quiet
from tests.test_vision import image_cfg, run_main

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("one_thread")

PIXELS = dict(size=16, channels=1)


def png(seed: int, side: int = 12) -> bytes:
    """A small grayscale PNG whose pixels depend on `seed`."""
    a = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(a, "L").save(out, "PNG")
    return out.getvalue()


def prepare(path, tmp_path, **kw):
    return prepare_images(str(path), 16, 1, 0.0, cache_dir=str(tmp_path / "cache"), workers=0,
                          log=lambda s: None, **kw)


def test_bytes_and_paths_decode_as_image_files_do_and_bad_rows_are_counted(tmp_path):
    d = tmp_path / "data"
    (d / "imgs").mkdir(parents=True)
    for i in range(3):
        (d / "imgs" / f"{i}.png").write_bytes(png(100 + i))
    (tmp_path / "outside.png").write_bytes(png(9))
    pq.write_table(pa.table({"img": [png(i) for i in range(6)] + [None, b"not a png", b""],
                             "label": [0, 1, 0, 1, 0, 1, 0, 1, 0]}), d / "a.parquet")
    pq.write_table(pa.table({"img": ["imgs/0.png", "imgs/1.png", "imgs/2.png", "../outside.png", "gone.png", None],
                             "label": ["cat", "dog", "cat", "cat", "dog", "cat"]}), d / "b.parquet")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # as datasets.Image() stores an image
    cells = [{"bytes": None, "path": "imgs/2.png"}, {"bytes": png(7), "path": "not read.png"},
             {"bytes": None, "path": None}]
    pq.write_table(pa.table({"img": pa.array(cells, struct)}), d / "c.parquet")  # and no label column
    data = prepare(d, tmp_path, image_field="img")
    assert data.meta["files"] == 3  # the folder's tables alone: the images they name are not read twice
    assert data.meta["skipped"] == {"no 'img' in row": 3, "corrupt image": 1, "empty file": 1,
                                    "outside the data folder": 1, "unreadable file": 1}
    # the same pixels as the image files' own decoding, in row order (a's six rows, b's three, c's two)
    expected = [png(i) for i in range(6)] + [png(100 + i) for i in range(3)] + [png(102), png(7)]
    assert np.array_equal(np.asarray(data.train), np.stack([decode_image(e, **PIXELS) for e in expected]))
    # integer labels and names mixed: all read as names, sorted; c's rows have none (-1)
    assert data.classes == ["0", "1", "cat", "dog"]
    assert data.train_labels.tolist() == [0, 1, 0, 1, 0, 1, 2, 3, 2, -1, -1]

    allowed = prepare(d, tmp_path, image_field="img", allow_outside=True)
    assert len(allowed.train) == 12 and "outside the data folder" not in allowed.meta["skipped"]


def test_a_datasets_folder_trains_simclr_and_its_labels_serve_the_probe(tmp_path):
    images = [Image.open(io.BytesIO(png(i))) for i in range(40)]
    ds = datasets.Dataset.from_dict({"image": [*images, None], "label": [i % 2 for i in range(40)] + [0]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    small = datasets.Dataset.from_dict({"image": images[:12], "label": [i % 2 for i in range(12)]})
    small.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "probe"))
    out = tmp_path / "run"
    trainer.train(image_cfg("simclr", tmp_path / "ds", out, "train.max_steps=2", "train.eval_every=2",
                            "data.val_fraction=0.2", f"probe.train={tmp_path / 'probe'}",
                            f"probe.test={tmp_path / 'probe'}", "probe.every=2"), quiet())
    data = json.loads((out / "summary.json").read_text())["data"]
    assert data["files"] == 2 and sum(data["images"].values()) == 40
    assert data["skipped"] == {"no 'image' in row": 1}
    probed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(0 <= r.get("probe_knn_acc", -1) <= 1 for r in probed)


def test_clip_trains_on_parquet_pairs_and_counts_rows_without_a_caption(tmp_path):
    rows = 48
    captions = [f"a picture number {i % 4}" for i in range(rows)]
    captions[3] = None
    captions[7] = "   "
    pq.write_table(pa.table({"picture": [png(i) for i in range(rows)], "caption": captions}), tmp_path / "p.parquet")
    summary = _train("clip", tmp_path / "p.parquet", tmp_path / "run", *IMAGE, "train.max_steps=2",
                     "data.image_field=picture", "data.caption_field=caption", "data.val_fraction=0.2")
    assert summary["status"] == "finished" and summary["pairs_seen"] == 2 * 16
    assert sum(summary["data"]["samples"].values()) == rows - 2 and summary["data"]["skipped"] == {"no caption": 2}


def test_a_pairs_jsonl_reads_the_same_fields(tmp_path):
    (tmp_path / "a.png").write_bytes(png(1))
    lines = [{"pic": "a.png", "caption": "one"}, {"pic": "a.png", "text": "no caption under the field"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    media = prepare_media(str(tmp_path / "pairs.jsonl"), "image", PIXELS, 0.0, str(tmp_path / "c"), 0,
                          lambda s: None, captions=True, image_field="pic", caption_field="caption")
    assert media.train.captions == ["one"] and media.meta["skipped"] == {"no caption": 1}


def test_a_missing_or_unusable_column_is_one_line(tmp_path, monkeypatch, capsys):
    pq.write_table(pa.table({"image": [png(0)], "n": [1]}), tmp_path / "a.parquet")
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "a.parquet", tmp_path, image_field="img")
    assert str(err.value) == "data.image_field 'img': a.parquet has columns image, n; expected one of them"
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "a.parquet", tmp_path, image_field="n")
    assert str(err.value) == ("data.image_field 'n': column 'n' of a.parquet holds int64; expected encoded image "
                              "bytes (binary), a {bytes, path} struct as datasets.Image() stores it, or a path string")
    with pytest.raises(DataError) as err:
        prepare_media(str(tmp_path / "a.parquet"), "image", PIXELS, 0.0, str(tmp_path / "c"), 0, lambda s: None,
                      captions=True)
    assert str(err.value) == "data.caption_field 'text': a.parquet has columns image, n; expected one of them"
    datasets.Dataset.from_dict({"image": [png(0)], "caption": [["a", "list"]]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as err:
        prepare_media(str(tmp_path / "ds"), "image", PIXELS, 0.0, str(tmp_path / "c"), 0, lambda s: None,
                      captions=True, caption_field="caption")
    assert str(err.value).startswith("data.caption_field 'caption': column 'caption' of ds holds list<")
    assert str(err.value).endswith("; expected a string column")

    capsys.readouterr()  # save_to_disk's progress bars
    code, out, stderr = run_main(monkeypatch, capsys, "train", "simclr", f"data.path={tmp_path / 'a.parquet'}",
                                 "data.image_field=picture", f"out_dir={tmp_path / 'run'}",
                                 f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and [line for line in out.splitlines() if not line.startswith("plan: ")] == []  # its plan alone
    assert stderr.strip() == "error: data.image_field 'picture': a.parquet has columns image, n; expected one of them"

    vision = tmp_path / "vision"  # a finished image run continued on a table of text: one line
    vision.mkdir()
    (vision / "config.yaml").write_text(config.dump(config.load("simclr", [f"out_dir={vision}"])))
    (vision / "model.safetensors").write_bytes(b"")
    pq.write_table(pa.table({"text": ["a document"]}), tmp_path / "corpus.parquet")
    with pytest.raises(DataError) as err:
        load_config(str(vision), [f"continual.data={tmp_path / 'corpus.parquet'}"])
    assert str(err.value).endswith("trained simclr on image, so the new stream must be image data too "
                                   "(data.image_field 'image': corpus.parquet has columns text; expected one of them)")

    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"image": [png(0)], "label": [1]})}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(DataError) as err:
        read_labeled_images(str(tmp_path / "dd"), 16, 1, cache_dir=str(tmp_path / "c"))
    assert str(err.value) == (f"labeled data '{tmp_path / 'dd'}' is a datasets DatasetDict (splits test); "
                              f"expected one split's folder, e.g. '{tmp_path / 'dd' / 'test'}'")


def test_the_field_and_the_files_rows_name_key_the_cache(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "x.png").write_bytes(png(1))
    pq.write_table(pa.table({"image": ["x.png"], "other": [png(2)]}), d / "t.parquet")
    first = prepare(d, tmp_path)
    assert prepare(d, tmp_path).dir == first.dir  # a hit
    other = prepare(d, tmp_path, image_field="other")
    assert other.dir != first.dir and not np.array_equal(other.train, first.train)
    (d / "x.png").write_bytes(png(3))  # the table is unchanged; the image its row names is not
    changed = prepare(d, tmp_path)
    assert changed.dir != first.dir and changed.content != first.content
    assert np.array_equal(changed.train[0], decode_image(png(3), **PIXELS))

    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "x.png").write_bytes(png(1))  # a folder without tables: the field is not part of its key
    assert prepare(loose, tmp_path).dir == prepare(loose, tmp_path, image_field="other").dir


def test_rows_are_read_a_batch_at_a_time(tmp_path, monkeypatch):
    n = 3 * table_media.MEDIA_ROWS + 5
    pq.write_table(pa.table({"image": [png(i % 5) for i in range(n)]}), tmp_path / "a.parquet", row_group_size=n)
    sizes, pulled = [], Counter()
    real = pq.ParquetFile.iter_batches

    def counted(self, batch_size, **kw):
        sizes.append(batch_size)
        for batch in real(self, batch_size=batch_size, **kw):
            pulled["batches"] += 1
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)
    items = table_media.table_items(tmp_path / "a.parquet", "a.parquet", "image", None, Counter(),
                                    lambda f, p: f / p, 1 << 30)
    next(items)
    assert sizes == [table_media.MEDIA_ROWS] and pulled["batches"] == 1  # one batch in memory, not the file
    assert sum(1 for _ in items) == n - 1 and pulled["batches"] == 4

    ds = datasets.Dataset.from_dict({"image": [png(i % 5) for i in range(n)]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "ds"))
    arrow = next((tmp_path / "ds").glob("*.arrow"))
    from selfsup.data.read import hf_datasets

    seen = []

    def rows_of(batches, skipped, name):
        for batch in batches:
            seen.append(batch.num_rows)
            yield from batch.to_pylist()

    monkeypatch.setattr(hf_datasets, "batch_rows", rows_of)
    assert len(list(table_media.table_items(arrow, "x", "image", None, Counter(), lambda f, p: f / p, 1 << 30))) == n
    assert sum(seen) == n and max(seen) == table_media.MEDIA_ROWS  # save_to_disk's batches of 100, cut smaller


class Blob:
    """An image's bytes in an object a weak reference can watch (bytes cannot be watched)."""

    def __init__(self, data: bytes):
        self.data = data


class BlobRows(ImageRows):
    def __call__(self, blob: Blob):
        return super().__call__(blob.data)


def test_decoding_does_not_hold_the_rows_it_has_read(tmp_path):
    """A table's image bytes (or a shard's) are dropped once decoded: the cache keeps captions and labels only."""
    refs, alive = [], []

    def items():
        for i in range(6 * CHUNK):
            blob = Blob(png(i % 5))
            refs.append(weakref.ref(blob))
            yield Item("t", i, f"caption {i}", i % 3, blob)
            del blob
            alive.append(sum(r() is not None for r in refs))

    built = build_rows(tmp_path, items(), BlobRows(16, 1), 0.0, 0, Counter())
    assert built.rows["train"] == 6 * CHUNK and built.classes == ["0", "1", "2"]
    assert max(alive) < 2 * CHUNK  # the chunk being gathered and the one just written, not every row read so far
    assert json.loads((tmp_path / "train_captions.json").read_text())[-1] == f"caption {6 * CHUNK - 1}"


def test_labeled_tables_serve_evaluation(tmp_path):
    pq.write_table(pa.table({"image": [png(i) for i in range(8)], "label": ["cat", "dog"] * 4}),
                   tmp_path / "train.parquet")
    pq.write_table(pa.table({"image": [png(i) for i in range(4)], "label": ["cat", "dog", "fox", None]}),
                   tmp_path / "test.parquet")
    train = read_labeled_images(str(tmp_path / "train.parquet"), 16, 1, cache_dir=str(tmp_path / "c"))
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 1] * 4
    test = read_labeled_images(str(tmp_path / "test.parquet"), 16, 1, train.classes, cache_dir=str(tmp_path / "c"))
    assert test.labels.tolist() == [0, 1] and test.skipped == {"no_label": 1, "unknown_label": 1}


def test_inspect_shows_the_image_and_caption_columns(tmp_path):
    pq.write_table(pa.table({"image": [png(0), png(1)], "text": ["a caption", "b"], "label": [3, 4]}),
                   tmp_path / "p.parquet")
    r = dict(inspect_path(str(tmp_path / "p.parquet"))[1])
    assert r["read as"].startswith("pairs (guessed")
    assert r["pairs"] == "2 rows in .parquet files"
    assert (r["image column"], r["caption column"]) == ("image (binary)", "text (string)")
    assert r["first row"] == f"image: {len(png(0)):,} bytes of PNG 12×12, mode L; caption: 'a caption'; label: 3"

    datasets.Dataset.from_dict({"image": [Image.open(io.BytesIO(png(0)))]}).cast_column(
        "image", datasets.Image()).save_to_disk(str(tmp_path / "ds"))
    r = dict(inspect_path(str(tmp_path / "ds"))[1])
    assert r["read as"].startswith("image (guessed") and r["images"] == "1 rows in datasets .arrow files"
    assert r["image column"] == "image (struct<bytes: binary, path: string>)"
    assert r["first row"].startswith("image: ") and "PNG 12×12, mode L" in r["first row"]

    pq.write_table(pa.table({"pixels": [png(0)]}), tmp_path / "q.parquet")
    r = dict(inspect_path(str(tmp_path / "q.parquet"), "image")[1])
    assert r["first row"] == ("not readable as a run reads it: data.image_field 'image': q.parquet has columns "
                              "pixels; expected one of them")
