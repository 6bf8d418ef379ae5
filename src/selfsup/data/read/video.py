"""Decoding one video file's bytes into T frames, for the video cache (which runs this in worker processes) and
streaming.

    decode_video(data, size=32, channels=3, frames=8)  ->  uint8 (8, 3, 32, 32), notes

Frames are sampled TSN-style: the clip is cut into `frames` equal segments and the frame at each segment's centre
is kept, so the whole clip is covered whatever its length. A clip shorter than `frames` repeats frames (the
nearest index) and says so in the notes. Each kept frame goes through exactly the still-image path
(data/read/image.py: shorter side to `size`, bicubic, centre crop, L or RGB), so a video frame and a photo of
the same scene become the same pixels.

Memory stays at `frames` small frames whatever the clip's length or resolution: the frame count is known before
decoding (from the container, or else by counting the stream's packets, which reads without decoding), so each
frame is kept only if its index is wanted, and is resized the moment it is decoded. A container whose reported
count is wrong (decoding ends early or runs long) is decoded once more with the true count, so the picked
frames are always the true segment centres. Decoding is single-threaded: the cache already runs one process
per core.

An input that cannot be used raises `Skip` with one of: "empty file", "corrupt video" (FFmpeg cannot open or
decode it, or it has no decodable frame), "no video stream" (audio or subtitles only), "frame too large" (a frame
of more than data/read/image.py's MAX_PIXELS: FFmpeg decodes every frame whole, before it is resized).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from selfsup.data.cache.decoding import Skip
from selfsup.data.cache.stats import PixelStats
from selfsup.data.read import image
from selfsup.data.read.image import decode_array

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov")
MAX_BYTES = 16 << 30  # a file or tar member above 16 GiB is not read (data/cache/rows.py, media.py)


@dataclass(frozen=True)
class VideoRows:
    """A row of the video cache: uint8 (frames, C, S, S) from a file's bytes (data/cache/rows.py)."""
    size: int
    channels: int
    frames: int

    dtype = np.dtype(np.uint8)
    max_bytes = MAX_BYTES

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.frames, self.channels, self.size, self.size)

    def stats(self) -> PixelStats:
        return PixelStats(self.channels)

    def __call__(self, data: bytes | Path) -> tuple[np.ndarray, int, list[str]]:
        """(row, length `frames`, notes)."""
        frames, notes = decode_video(data, self.size, self.channels, self.frames)
        return frames, self.frames, notes


def decode_video(data: bytes | Path, size: int, channels: int, frames: int) -> tuple[np.ndarray, list[str]]:
    """One clip, a file's bytes or its path, as uint8 (frames, channels, size, size) and notes on it (e.g. "repeated
    frames")."""
    if not data:
        raise Skip("empty file")
    count = _frame_count(data)
    picked, decoded = _pick(data, count, size, channels, frames)
    if decoded != count:  # the container's count was wrong: pick again from the true one
        picked, decoded = _pick(data, decoded, size, channels, frames)
    notes = ["repeated frames"] if decoded < frames else []
    return np.stack([picked[i] for i in sample_indices(decoded, frames)]), notes


def sample_indices(count: int, frames: int) -> list[int]:
    """The frame at the centre of each of `frames` equal segments of a `count`-frame clip (repeats when fewer)."""
    return [int((i + 0.5) * count / frames) for i in range(frames)]


def _frame_count(data: bytes | Path) -> int:
    """Frames in the first video stream: the container's figure, or else its packets counted (no decoding)."""
    with _open(data) as container:
        stream = _video_stream(container)
        if stream.frames > 0:
            return stream.frames
        try:
            return sum(1 for p in container.demux(stream) if p.size > 0)  # the final flush packet is empty
        except av.FFmpegError:
            raise Skip("corrupt video") from None


def _pick(data: bytes | Path, count: int, size: int, channels: int, frames: int) -> tuple[dict[int, np.ndarray], int]:
    """The wanted frames of a `count`-frame clip, each already (channels, size, size), and how many frames decoded."""
    wanted = set(sample_indices(count, frames)) if count > 0 else set()
    picked, decoded = {}, 0
    with _open(data) as container:
        stream = _video_stream(container)
        stream.codec_context.thread_count = 1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:  # converted and resized at once: only `frames` small frames are ever held
                    picked[index] = decode_array(frame.to_ndarray(format="rgb24"), 255.0, size, channels)
                decoded = index + 1
        except av.FFmpegError:
            raise Skip("corrupt video") from None
    if decoded == 0:
        raise Skip("corrupt video")
    return picked, decoded


def _open(data: bytes | Path):
    try:  # a file by its path: FFmpeg reads what it demuxes, never the whole file; a damaged tag is not worth a skip
        return av.open(io.BytesIO(data) if isinstance(data, bytes) else str(data), metadata_errors="replace")
    except av.FFmpegError:  # InvalidDataError for garbage; other FFmpeg errors for truncated headers
        raise Skip("corrupt video") from None


def _video_stream(container):
    if not container.streams.video:
        # An .mp4 cut off before its index ("moov") still opens, with no stream or a codec-less data stream
        raise Skip("no video stream" if container.streams.audio or container.streams.subtitles else "corrupt video")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # no decoder for its codec, or a header too damaged to name one
        raise Skip("corrupt video")
    if stream.codec_context.width * stream.codec_context.height > image.MAX_PIXELS:  # a frame decodes whole
        raise Skip("frame too large")
    return stream
