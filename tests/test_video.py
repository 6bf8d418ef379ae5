"""Video decoding (frame sampling, resizing, skips) and the moving-digits set, on clips encoded here with PyAV."""

from __future__ import annotations

import io
import json
from fractions import Fraction

import av
import numpy as np
import pytest

from selfsup.data.builtin.moving_digits import MOTIONS, write_moving_digits
from selfsup.data.cache.decoding import Skip
from selfsup.data.read.video import decode_video, sample_indices

SIDE = 32  # px of the test clips
BOX = 6  # px of the moving square


def _encode(clip: np.ndarray, fmt: str = "mp4") -> bytes:
    """uint8 (T, H, W, 3) as MPEG-4 part 2 at a fixed fine quantiser, so positions survive exactly."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.codec_context.qmin = stream.codec_context.qmax = 2
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _square_clip(n: int) -> np.ndarray:
    """(n, SIDE, SIDE, 3): a white square whose left edge is at x = 4 + t in frame t."""
    clip = np.zeros((n, SIDE, SIDE, 3), np.uint8)
    for t in range(n):
        clip[t, 12:12 + BOX, 4 + t:4 + t + BOX] = 255
    return clip


def _centroid(frames: np.ndarray, axis: int) -> np.ndarray:
    """(T,) brightness-weighted mean position along `axis` (2: x, 1: y) of frames (T, C, S, S)."""
    weight = frames.astype(np.float64).mean(axis=1)  # (T, S, S)
    pos = np.arange(weight.shape[axis])
    profile = weight.sum(axis=3 - axis)  # (T, S) along the chosen axis
    return (profile * pos).sum(axis=1) / profile.sum(axis=1)


def _frame_of(frames: np.ndarray) -> np.ndarray:
    """(T,) the index t of _square_clip each decoded frame came from, read off the square's position."""
    return np.round(_centroid(frames, axis=2) - 4 - (BOX - 1) / 2).astype(int)


@pytest.fixture(scope="module")
def square():
    return _encode(_square_clip(16))


def test_sample_indices_are_segment_centres():
    assert sample_indices(16, 4) == [2, 6, 10, 14]
    assert sample_indices(10, 5) == [1, 3, 5, 7, 9]
    assert sample_indices(2, 8) == [0, 0, 0, 0, 1, 1, 1, 1]  # nearest index: repeats in order


def test_decode_picks_segment_centres(square):
    clip, notes = decode_video(square, SIDE, 3, 4)
    assert clip.shape == (4, 3, SIDE, SIDE) and clip.dtype == np.uint8 and notes == []
    assert _frame_of(clip).tolist() == [2, 6, 10, 14]
    clip, _ = decode_video(square, SIDE, 3, 8)
    assert _frame_of(clip).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]


def test_unknown_frame_count_is_counted_from_packets():
    data = _encode(_square_clip(16), fmt="matroska")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 0  # Matroska keeps no frame count: the other path
    clip, notes = decode_video(data, SIDE, 3, 4)
    assert _frame_of(clip).tolist() == [2, 6, 10, 14] and notes == []


def test_resize_and_channels(square):
    rgb, _ = decode_video(square, 16, 3, 4)
    grey, _ = decode_video(square, 16, 1, 4)
    assert rgb.shape == (4, 3, 16, 16) and grey.shape == (4, 1, 16, 16) and grey.dtype == np.uint8
    assert np.abs(grey.astype(int) - rgb.mean(axis=1, keepdims=True)).max() <= 3  # grey content: L ≈ any channel
    assert np.all(np.diff(_centroid(grey, axis=2)) > 0)  # still moving right at half size


def test_short_clip_repeats_frames():
    clip, notes = decode_video(_encode(_square_clip(2)), SIDE, 3, 8)
    assert clip.shape == (8, 3, SIDE, SIDE) and notes == ["repeated frames"]
    assert _frame_of(clip).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def _audio_only() -> bytes | None:
    """A tiny audio-only file, with the first audio encoder this FFmpeg build has; None when it has none."""
    for fmt, codec in (("mp4", "aac"), ("matroska", "mp2"), ("matroska", "pcm_s16le")):
        try:
            buf = io.BytesIO()
            with av.open(buf, "w", format=fmt) as container:
                stream = container.add_stream(codec, rate=16000)
                sample_format = stream.codec_context.format.name
                layout = stream.codec_context.layout.name
                channels = stream.codec_context.layout.nb_channels
                dtype = np.float32 if sample_format.startswith("flt") else np.int16
                planar = sample_format.endswith("p")
                shape = (channels, 1152) if planar else (1, 1152 * channels)
                frame = av.AudioFrame.from_ndarray(np.zeros(shape, dtype), format=sample_format, layout=layout)
                frame.sample_rate = 16000
                container.mux(stream.encode(frame))
                container.mux(stream.encode())
            return buf.getvalue()
        except (av.FFmpegError, ValueError):
            continue
    return None


@pytest.mark.parametrize("case, reason", [("empty", "empty file"), ("garbage", "corrupt video"),
                                          ("truncated", "corrupt video"), ("audio", "no video stream")])
def test_skip_reasons(case, reason, square):
    if case == "audio":
        data = _audio_only()
        if data is None:
            pytest.skip("this FFmpeg build has no audio encoder (tried aac, mp2, pcm_s16le) to make an audio-only file")
    else:
        data = {"empty": b"", "garbage": bytes(range(256)) * 8, "truncated": square[: len(square) // 2]}[case]
    with pytest.raises(Skip) as e:
        decode_video(data, SIDE, 3, 4)
    assert e.value.reason == reason


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("moving_digits")
    return root, write_moving_digits(root, per_class_train=2, per_class_test=1, seed=3)


def test_moving_digits_files_and_captions(digits):
    root, counts = digits
    assert counts == {"train": 8, "test": 4}
    for split, n in counts.items():
        rows = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and len({r["video"] for r in rows}) == n
        for row in rows:
            motion = row["video"].split("/")[1]
            assert row["video"].startswith(f"{split}/") and motion in MOTIONS and row["text"].strip()
            clip, notes = decode_video((root / row["video"]).read_bytes(), 32, 1, 8)  # path relative to the jsonl
            assert clip.shape == (8, 1, 32, 32) and notes == [] and clip.max() > 100


def test_moving_digits_move_their_way(digits):
    root, _ = digits
    for motion, axis, sign in (("right", 2, 1), ("left", 2, -1), ("down", 1, 1), ("up", 1, -1)):
        for f in sorted((root / "train" / motion).glob("*.mp4")):
            clip, _ = decode_video(f.read_bytes(), 32, 1, 8)
            step = np.diff(_centroid(clip, axis=axis)) * sign  # (7,) px per frame, along the motion
            assert np.all(step > 1.0), (f, step)


def test_moving_digits_same_seed_same_bytes(digits, tmp_path):
    root, _ = digits
    write_moving_digits(tmp_path, per_class_train=2, per_class_test=1, seed=3)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)
