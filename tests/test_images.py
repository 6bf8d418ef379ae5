"""Image sources, decoding, skip counting, the cache and the resumable loader, on data built here with Pillow."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.cache import rows as row_cache
from selfsup.data.cache.images import image_files, prepare_images
from selfsup.data.errors import DataError
from selfsup.data.load.rows import RowLoader

SIZE = 16


def _noise(rng, w=24, h=20, mode="RGB") -> Image.Image:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class sub-folders of PNG, JPEG and WebP in several modes, a loose image, and three bad files."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    for name in ("cat", "dog", "dog/nested"):
        (root / name).mkdir()
    for i in range(4):
        _noise(rng).save(root / "cat" / f"c{i}.png")
        _noise(rng).save(root / "dog" / f"d{i}.JPG", quality=95)
    _noise(rng).save(root / "dog" / "nested" / "deep.webp", lossless=True)
    Image.new("L", (20, 30), 77).save(root / "cat" / "gray.png")
    Image.new("RGBA", (30, 20), (255, 0, 0, 0)).save(root / "cat" / "clear.png")  # transparent → white
    palette = Image.new("RGB", (20, 20), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(root / "cat" / "palette.png")
    Image.fromarray(np.full((20, 20), 257 * 100, np.uint16)).save(root / "dog" / "sixteen.png")  # I;16 → 100
    _noise(rng).save(root / "loose.bmp")
    (root / "empty.png").write_bytes(b"")
    jpeg = _encoded(_noise(rng, 64, 64), "JPEG")
    (root / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "text.jpg").write_text("not an image at all\n")
    (root / "notes.md").write_text("ignored: not an image suffix")
    return root


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A webdataset shard: labelled samples, an unlabelled one, a corrupt image and a sample with no image."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("tar") / "shard-000.tar"
    members = [("s0.jpg", _encoded(_noise(rng), "JPEG")), ("s0.cls", b"2\n"),
               ("s1.png", _encoded(_noise(rng), "PNG")), ("s1.cls", b"0"), ("s1.json", b"{}"),
               ("sub/s2.webp", _encoded(_noise(rng), "WEBP")),
               ("s3.jpg", b"\xff\xd8garbage"), ("s3.cls", b"1"),
               ("s4.json", b"{}")]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _prepare(path, tmp_path, channels=3, val_fraction=0.0, **kw):
    return prepare_images(str(path), SIZE, channels, val_fraction, cache_dir=str(tmp_path), workers=0,
                          log=kw.pop("log", lambda _: None), **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_decodes_every_mode_and_counts_bad_files(folder, tmp_path, channels):
    s = _prepare(folder, tmp_path, channels)
    assert s.train.dtype == np.uint8 and s.train.shape == (14, channels, SIZE, SIZE) and len(s.val) == 0
    assert s.meta["skipped"] == {"corrupt image": 1, "empty file": 1, "truncated image": 1}
    assert s.classes == ["cat", "dog"]
    files = [f for f in image_files(str(folder)) if f.stat().st_size and f.parent != folder]
    expected = [0 if f.parent.name == "cat" else 1 for f in files] + [-1]  # loose.bmp sorts after the folders
    assert s.train_labels.tolist() == expected
    by_name = {f.name: s.train[i] for i, f in enumerate(files)}
    assert (by_name["gray.png"] == 77).all()
    assert (by_name["clear.png"] == 255).all()
    assert (by_name["sixteen.png"] == 100).all()
    palette = by_name["palette.png"][:, 0, 0]
    assert palette.tolist() == ([round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)] if channels == 1 else [10, 200, 30])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (20, 0, 40, 20))  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the left half becomes the top half
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    a = _prepare(tmp_path / "rotated.jpg", tmp_path / "cache", channels=1).train[0, 0].astype(int)  # (S, S)
    assert a[:4].mean() < 30 and a[-4:].mean() > 225


def test_webdataset_shard_labels_from_cls(shard, tmp_path):
    for path in (shard, shard.parent):  # a .tar file or a folder of them
        s = _prepare(path, tmp_path / path.name, channels=1)
        assert s.train.shape == (3, 1, SIZE, SIZE)
        assert s.meta["skipped"] == {"corrupt image": 1, "no image in tar sample": 1}
        assert s.classes == ["0", "2"] and s.train_labels.tolist() == [1, 0, -1]  # '1' was the corrupt image's


def test_cut_shard_keeps_the_samples_before_the_cut(shard, tmp_path):
    with tarfile.open(shard) as tar:
        cut = tar.getmember("s1.png").offset_data + 10  # inside the second sample's image
    (tmp_path / "cut.tar").write_bytes(shard.read_bytes()[:cut])
    s = _prepare(tmp_path / "cut.tar", tmp_path / "cache")
    assert s.meta["skipped"] == {"corrupt tar": 1} and len(s.train) == 1


def test_webdataset_class_names_from_txt(tmp_path):
    rng = np.random.default_rng(2)
    with tarfile.open(tmp_path / "named.tar", "w") as tar:
        for key, name in [("a", b"zebra"), ("b", b"ant"), ("c", b"zebra\n")]:
            for ext, data in (("png", _encoded(_noise(rng), "PNG")), ("txt", name)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    s = _prepare(tmp_path / "named.tar", tmp_path / "cache")
    assert s.classes == ["ant", "zebra"] and s.train_labels.tolist() == [1, 0, 1]


def test_npz_layouts_dtypes_and_bad_shapes(tmp_path):
    chw = np.zeros((3, 3, 12, 14), np.float32)  # (N, C, H, W) in [0, 1]
    chw[:, 1] = 0.5
    np.savez(tmp_path / "a.npz", images=chw, labels=np.array([2, 0, 1]))
    np.savez(tmp_path / "b.npz", images=np.full((2, 10, 10), 257 * 40, np.uint16))  # (N, H, W)
    np.savez(tmp_path / "c.npz", images=np.full((2, 10, 10, 3), 500.0))  # floats above 1: divided by the max
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 10, 10, 5), np.uint8))  # 5 channels: every entry skipped
    s = _prepare(tmp_path, tmp_path / "cache")
    assert s.train.shape == (7, 3, SIZE, SIZE) and s.meta["skipped"] == {"bad array shape": 4}
    assert (s.train[:3, 1] == 128).all() and (s.train[:3, [0, 2]] == 0).all()
    assert (s.train[3:5] == 40).all() and (s.train[5:] == 255).all()
    assert s.classes == ["0", "1", "2"] and s.train_labels.tolist() == [2, 0, 1, -1, -1, -1, -1]


def test_cache_hit_and_changed_bytes_change_the_key(folder, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    logs = []
    first = _prepare(data, tmp_path / "cache", log=logs.append)
    assert (first.dir / "meta.json").is_file() and first.dir.parent.name == "images"
    monkeypatch.setattr(row_cache, "_decode_chunk", lambda *a: pytest.fail("decoded again on a cache hit"))
    again = _prepare(data, tmp_path / "cache", log=logs.append)
    assert again.dir == first.dir and logs[-1].startswith("image cache hit")
    assert np.array_equal(again.train, first.train)
    monkeypatch.undo()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(data / "cat" / "c0.png")  # same name, new bytes
    assert _prepare(data, tmp_path / "cache").dir != first.dir


def test_val_split_is_disjoint_and_stable_when_files_are_added(tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):
        _noise(rng).save(data / f"{i:02d}.png")
    before = _prepare(data, tmp_path / "cache", val_fraction=0.3)
    assert len(before.train) + len(before.val) == 40 and 0 < len(before.val) < 20
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731 (images are noise: every row is unique)
    assert not rows(before.train) & rows(before.val)
    for i in range(40, 60):
        _noise(rng).save(data / f"{i:02d}.png")
    after = _prepare(data, tmp_path / "cache", val_fraction=0.3)
    assert rows(before.val) <= rows(after.val) and rows(before.train) <= rows(after.train)


def test_mean_std_match_numpy_and_workers_give_the_same_cache(folder, tmp_path):
    s = _prepare(folder, tmp_path / "serial")
    pixels = s.train.astype(np.float64) / 255
    assert np.allclose(s.mean, pixels.mean((0, 2, 3)), atol=1e-9)
    assert np.allclose(s.std, pixels.std((0, 2, 3)), atol=1e-9)
    pooled = prepare_images(str(folder), SIZE, 3, 0.0, cache_dir=str(tmp_path / "pool"), workers=2, log=print)
    assert np.array_equal(pooled.train, s.train) and pooled.meta == s.meta


def test_clear_errors(folder, tmp_path):
    with pytest.raises(DataError, match="does not exist; expected an image file"):
        image_files(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder holds no images"):
        image_files(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="got a '.md' file"):
        image_files(str(folder / "notes.md"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    (tmp_path / "bad" / "y.jpg").write_text("text")
    with pytest.raises(DataError, match=r"0 in validation, 2 skipped: corrupt image: 1, empty file: 1"):
        _prepare(tmp_path / "bad", tmp_path / "cache")
    with pytest.raises(DataError, match="channels=2: expected 1"):
        _prepare(folder, tmp_path / "cache", channels=2)


def test_loader_visits_every_image_once_per_epoch_and_is_seeded():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(2, axis=2)  # (10, 1, 2, 1)
    loader = RowLoader({"images": images}, seed=5)
    seen = torch.cat([loader.next_batch(3)["index"] for _ in range(10)])  # 30 rows: three epochs
    for epoch in range(3):
        assert sorted(seen[epoch * 10:(epoch + 1) * 10].tolist()) == list(range(10))
    assert seen[:10].tolist() != seen[10:20].tolist()  # a new permutation each epoch
    batch = RowLoader({"images": images}, seed=5).next_batch(4)
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 1, 2, 1)
    assert torch.equal(batch["images"][:, 0, 0, 0].long(), batch["index"]) and batch["index"].dtype == torch.int64
    assert torch.equal(batch["index"], seen[:4])
    assert not torch.equal(RowLoader({"images": images}, seed=6).next_batch(10)["index"], seen[:10])
    assert RowLoader({"images": images}, shuffle=False).next_batch(10)["index"].tolist() == list(range(10))


@pytest.mark.parametrize("stop", [2, 3])  # mid-epoch, and just before a batch that straddles the boundary
def test_resumed_loader_gives_identical_batches(stop):
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    straight = RowLoader({"images": images}, seed=1)
    expected = [straight.next_batch(4)["index"] for _ in range(8)]
    first = RowLoader({"images": images}, seed=1)
    got = [first.next_batch(4)["index"] for _ in range(stop)]
    resumed = RowLoader({"images": images}, seed=1)
    resumed.load_state(first.state())
    got += [resumed.next_batch(4)["index"] for _ in range(8 - stop)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected)) and len(resumed) == 10
