"""Hostile inputs (issue 14, items 7-10): each is skipped and counted, or stops in one line; never a crash, a hang
or memory that grows with the file rather than with what is kept. Data is made here; nothing is timed."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageFile

from selfsup.config import DataConfig
from selfsup.data.cache import media
from selfsup.data.cache.decoding import Skip
from selfsup.data.cache.images import prepare_images
from selfsup.data.cache.media import prepare_media
from selfsup.data.errors import DataError
from selfsup.data.quality.dedup import dedup
from selfsup.data.read import image
from selfsup.data.read.audio import AudioRows
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.text import read_documents, source_files
from selfsup.data.read.video import decode_video
from selfsup.data.labeled import read_labeled

IMAGE = dict(size=16, channels=1)
NESTED = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot follow (RecursionError)
SURROGATE = '{"text": "half an emoji \\ud800", "image": "a.png", "label": "x"}'  # valid JSON, no UTF-8 for it


def _png(path: Path, value: int, side: int = 20) -> None:
    Image.fromarray(np.full((side, side), value, np.uint8), mode="L").save(path)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _prepare(path, tmp_path, **kw):
    return prepare_media(str(path), "image", IMAGE, 0.0, cache_dir=str(tmp_path / "cache"), workers=0,
                         log=lambda _: None, **kw)


# ---------------------------------------------------------------------------------------------- item 7: labels

def test_absurd_class_ids_are_names_of_the_labels_seen_or_refused(tmp_path):
    """A .cls of 10^9 made a list of 10^9 class names (MemoryError); 10^20 overflowed int64."""
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for key, cls in (("a", b"1000000000"), ("b", b"0"), ("c", b"100000000000000000000"), ("d", b"7")):
            _add(tar, f"{key}.png", _encoded(Image.new("L", (20, 20), 100)))
            _add(tar, f"{key}.cls", cls)
    s = prepare_images(str(tmp_path / "shard.tar"), 16, 1, 0.0, cache_dir=str(tmp_path / "cache"), workers=0,
                       log=lambda _: None)
    assert s.classes == ["0", "7", "1000000000"] and s.train_labels.tolist() == [2, 0, -1, 1]
    assert s.meta["skipped"] == {"bad label": 1}  # 10^20: kept, without a label


def test_pairs_label_of_a_billion_is_one_class(tmp_path):
    _png(tmp_path / "a.png", 10)
    _png(tmp_path / "b.png", 200)
    rows = [{"image": "a.png", "label": 1_000_000_000}, {"image": "b.png", "label": 3}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ms = _prepare(tmp_path / "pairs.jsonl", tmp_path)
    assert ms.classes == ["3", "1000000000"] and ms.train.labels.tolist() == [1, 0]


# ------------------------------------------------------------------------------ item 8: what a pair may name

@pytest.fixture
def hostile_pairs(tmp_path) -> Path:
    """A data folder whose .jsonl names a device, a FIFO, a folder, paths outside it and a link out of it."""
    data = tmp_path / "data"
    data.mkdir()
    _png(data / "good.png", 50)
    _png(tmp_path / "outside.png", 90)
    os.mkfifo(data / "fifo.png")  # opening it would wait for a writer forever
    (data / "folder.png").mkdir()
    (data / "zero.png").symlink_to("/dev/zero")
    names = ["good.png", "/dev/zero", "../outside.png", str(tmp_path / "outside.png"), "../" * 40 + "etc/passwd",
             "fifo.png", "folder.png", "zero.png"]
    (data / "pairs.jsonl").write_text("".join(json.dumps({"image": n, "text": n}) + "\n" for n in names))
    return data


def test_pairs_read_only_regular_files_inside_the_data_folder(hostile_pairs, tmp_path):
    ms = _prepare(hostile_pairs, tmp_path)
    # /dev/zero, ../outside.png, its absolute path, /etc/passwd, and zero.png, a link to /dev/zero
    assert ms.meta["skipped"] == {"outside the data folder": 5, "not a regular file": 2}
    assert len(ms.train.rows) == 1 and (ms.train.rows == 50).all()


def test_allow_outside_reads_outside_files_but_never_devices(hostile_pairs, tmp_path):
    assert DataConfig().allow_outside is False and "outside the data folder" in \
        DataConfig.model_fields["allow_outside"].description
    ms = _prepare(hostile_pairs, tmp_path, allow_outside=True)
    # read: good.png, outside.png twice; /etc/passwd is a regular file, so it is decoded, and is no image
    assert ms.meta["skipped"] == {"not a regular file": 4, "corrupt image": 1}
    assert sorted(np.unique(ms.train.rows).tolist()) == [50, 90] and len(ms.train.rows) == 3


def test_all_refused_is_one_line_naming_the_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _png(tmp_path / "outside.png", 90)
    (data / "pairs.jsonl").write_text(json.dumps({"image": "../outside.png", "text": "x"}) + "\n")
    with pytest.raises(DataError) as e:
        _prepare(data, tmp_path)
    message = str(e.value)
    assert "\n" not in message and "outside the data folder: 1" in message and "data.allow_outside=true" in message


def test_a_file_over_the_cap_is_not_read(tmp_path, monkeypatch):
    _png(tmp_path / "small.png", 10, side=16)
    _png(tmp_path / "big.png", 20, side=64)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": n}) + "\n" for n in ("small.png", "big.png")))
    monkeypatch.setitem(media.MAX_BYTES, "image", (tmp_path / "small.png").stat().st_size)
    ms = _prepare(tmp_path / "pairs.jsonl", tmp_path)
    assert ms.meta["skipped"] == {"file too large": 1} and (ms.train.rows == 10).all()


# ------------------------------------------------------------------------------ item 9: JSON lines that stop a run

def test_json_line_refuses_deep_nesting_and_lone_surrogates():
    assert json_line(NESTED) is None and json_line(SURROGATE) is None
    assert json_line(b'{"text": "a\xed\xa0\x80"}') is None  # an encoded surrogate: not UTF-8
    assert json_line('{"text": "\\ud83d\\ude00 fine"}') == {"text": "\U0001F600 fine"}  # a pair is a character


def test_text_jsonl_skips_and_counts_them(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join([NESTED, SURROGATE, json.dumps({"text": "kept"})]) + "\n")
    skipped = Counter()
    assert list(read_documents(source_files(str(tmp_path)), skipped, max_chars=1000)) == ["kept"]
    assert skipped == {"bad_json": 2}


def test_pairs_jsonl_skips_and_counts_them(tmp_path):
    _png(tmp_path / "a.png", 10)
    (tmp_path / "pairs.jsonl").write_text("\n".join([NESTED, SURROGATE, json.dumps({"image": "a.png", "text": "ok"})]))
    ms = _prepare(tmp_path, tmp_path, captions=True)
    assert ms.meta["skipped"] == {"bad json line": 2} and ms.train.captions == ["ok"]


def test_labeled_jsonl_skips_and_counts_them(tmp_path):
    good = [json.dumps({"text": f"text {i}", "label": i % 2}) for i in range(4)]
    (tmp_path / "train.jsonl").write_text("\n".join([NESTED, SURROGATE, *good]) + "\n")
    s = read_labeled(str(tmp_path / "train.jsonl"))
    assert len(s.items) == 4 and s.skipped == {"bad_json": 2}


def test_dedup_passes_them_through_unjudged(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join([NESTED, SURROGATE, json.dumps({"text": "one doc"})]) + "\n")
    dedup(str(tmp_path / "in"), str(tmp_path / "out"))
    assert (tmp_path / "out" / "a.jsonl").read_text().splitlines()[:2] == [NESTED, SURROGATE]


# ------------------------------------------------------------------- item 10: memory follows what is kept

@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A valid PNG of 12000 × 12000 zeros in about 20 KB (144 MP: 1.1 GB per worker to decode and convert before),
    written chunk by chunk: Pillow would build the 144 MB image first."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = 12000
    row = bytes(1 + side // 8)  # filter byte 0, then 1-bit pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _spy_load(monkeypatch) -> list:
    loads = []
    real = ImageFile.ImageFile.load

    def load(img):
        loads.append(img.size)
        return real(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


def test_decompression_bomb_is_refused_before_decoding(bomb, tmp_path, monkeypatch):
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow only warns: 144 MP is below its error at 179 MP
        assert Image.open(io.BytesIO(bomb)).size == (12000, 12000) and len(bomb) < 100_000
    loads = _spy_load(monkeypatch)
    (tmp_path / "bomb.png").write_bytes(bomb)
    for data in (bomb, tmp_path / "bomb.png"):  # a tar member's bytes, or a file
        with pytest.raises(Skip) as e:
            image.ImageRows(16, 1)(data)
        assert e.value.reason == "image too large"
    assert loads == []


def test_a_large_jpeg_is_drafted_under_the_cap_a_large_png_is_not(monkeypatch):
    monkeypatch.setattr(image, "MAX_PIXELS", 1_000_000)
    big = Image.linear_gradient("L").resize((2400, 1800))  # 4.3 MP
    loads = _spy_load(monkeypatch)
    row = image.decode_image(_encoded(big, "JPEG"), 32, 1)  # decoded at 1/8: 300 × 225
    assert row.shape == (1, 32, 32) and set(loads) == {(300, 225)}
    with pytest.raises(Skip, match="image too large"):
        image.decode_image(_encoded(big, "PNG"), 32, 1)


def test_a_large_image_is_reduced_before_it_is_converted(monkeypatch):
    seen = []
    to_mode = image._to_mode
    monkeypatch.setattr(image, "_to_mode", lambda img, channels: seen.append(img.size) or to_mode(img, channels))
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8))  # 1200×1600
    data = _encoded(Image.fromarray(smooth).convert("P", palette=Image.Palette.ADAPTIVE))  # a palette: widened first
    reduced = image.decode_image(data, 16, 3)
    assert seen == [(-(-1600 // 18), -(-1200 // 18))]  # the largest factor keeping the short side >= 4 × 16
    monkeypatch.setattr(image, "REDUCE_GAP", 10_000)  # never reduce: the direct bicubic resize
    direct = image.decode_image(data, 16, 3)
    assert seen[-1] == (1600, 1200)
    assert np.abs(reduced.astype(int) - direct.astype(int)).mean() < 3  # the same picture, antialiased alike


def _spy_audio_reads(monkeypatch) -> list:
    reads = []
    real = soundfile.SoundFile.read

    def read(f, frames=-1, *args, **kw):
        out = real(f, frames, *args, **kw)
        reads.append(len(out))
        return out

    monkeypatch.setattr(soundfile.SoundFile, "read", read)
    return reads


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_long_recording_reads_only_its_clip(rate, tmp_path, monkeypatch):
    """A one-hour WAV took +600 MB to keep one second: here a minute, and the frames read are counted."""
    t = np.arange(60 * rate) / rate
    soundfile.write(tmp_path / "long.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate,
                    subtype="PCM_16")
    reads = _spy_audio_reads(monkeypatch)
    read_bytes = []
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: read_bytes.append(p.name) or real_read_bytes(p))
    settings = dict(sample_rate=16000, seconds=1.0, n_mels=16, n_fft=400, hop=160, min_seconds=0.1)
    ms = prepare_media(str(tmp_path), "audio", settings, 0.0, cache_dir=str(tmp_path / "cache"), workers=0,
                       log=lambda _: None)
    assert len(ms.train.rows) == 1 and ms.meta["notes"] == ({"cropped": 1} if rate == 16000 else
                                                            {"cropped": 1, "resampled": 1})
    assert "long.wav" not in read_bytes  # the file is opened, not loaded
    assert sum(reads) <= rate * 1.2 + rate // 100 + 1  # the second kept, 0.1 s on each side to resample
    # the same clip as the whole file decoded, for a tar member's bytes too
    data = (tmp_path / "long.wav").read_bytes()
    mel, valid, _ = AudioRows(**settings)(data)
    assert np.array_equal(mel, ms.train.rows[0]) and valid == 101


def test_a_video_of_frames_over_the_cap_is_refused_before_decoding(monkeypatch):
    from tests.test_video import _encode, _square_clip

    clip = _encode(_square_clip(4))  # 32 × 32 frames
    monkeypatch.setattr(image, "MAX_PIXELS", 32 * 32 - 1)
    with pytest.raises(Skip, match="frame too large"):
        decode_video(clip, 16, 3, 4)
    monkeypatch.setattr(image, "MAX_PIXELS", 32 * 32)
    assert decode_video(clip, 16, 3, 4)[0].shape == (4, 3, 16, 16)
