"""Where each sample of a webdataset .tar shard lies, read from the tar headers alone (no member is decoded), and
cached per shard: what lets a streaming run count its samples up front and read any sample with one seek.

    index = shard_index(f, cache)          # [(key, {ext: (offset, size)}), ...] in archive order
    sample = read_sample(fh, members, wanted)

Samples are grouped as data/cache/decoding.py's tar_samples groups them (consecutive members sharing the path up to
the first dot of the basename). A damaged archive keeps the samples indexed before the damage and is marked
corrupt, counted once as 'corrupt tar' when its samples are read. The cache key is the shard's absolute path,
size and modification time, not its bytes: hashing terabytes of shards would be the full pass streaming avoids.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

from selfsup.data.cache.decoding import Skip

FORMAT = 1  # bump when the index layout changes

Members = dict[str, tuple[int, int]]  # extension (lower case, no dot) -> (byte offset of the data, size)


def shard_index(f: Path, cache: Path) -> tuple[list[tuple[str, Members]], bool]:
    """(samples, corrupt) of one shard, from `cache/shard-index/` when the shard is unchanged since indexed."""
    out = _index_file(f, cache)
    if out.is_file():
        saved = json.loads(out.read_text())
        return [(key, {e: tuple(m) for e, m in members.items()}) for key, members in saved["samples"]], saved["corrupt"]
    samples, corrupt = _read_headers(f)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"samples": samples, "corrupt": corrupt}))
    os.replace(tmp, out)  # atomic: another process indexing the same shard writes the same content
    return samples, corrupt


def _index_file(f: Path, cache: Path) -> Path:
    try:
        st = f.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "unreadable"
    key = hashlib.sha256(f"{FORMAT}\0{f.resolve()}\0{stamp}".encode()).hexdigest()[:24]
    return cache / "shard-index" / f"{key}.json"


def _read_headers(f: Path) -> tuple[list[tuple[str, Members]], bool]:
    samples: list[tuple[str, Members]] = []
    key, members = None, {}
    try:
        end = f.stat().st_size
        with tarfile.open(f) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > end:  # headers alone do not show a truncated file
                    raise tarfile.ReadError("unexpected end of data")
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{folder}/{stem}" if folder else stem
                if k != key:
                    if key is not None:
                        samples.append((key, members))
                    key, members = k, {}
                members[ext.lower()] = (member.offset_data, member.size)
            if end - tar.offset < tarfile.BLOCKSIZE:  # tarfile ends quietly at a cut header; an archive ends
                raise tarfile.ReadError("truncated header")  # with zero blocks
    except (tarfile.TarError, OSError, EOFError):
        return samples, True  # the sample being read when the damage showed is dropped, as tar_samples does
    if key is not None:
        samples.append((key, members))
    return samples, False


def read_sample(fh: BinaryIO, members: Members, wanted: tuple[str, ...], max_bytes: int) -> dict[str, bytes]:
    """{ext: bytes} of the wanted members of one sample; a member cut short by a truncated file is dropped (the
    decoder then counts the sample under its own reason); a wanted member over `max_bytes` raises Skip('file too
    large') before anything is read."""
    if any(ext in wanted and size > max_bytes for ext, (_, size) in members.items()):
        raise Skip("file too large")
    sample = {}
    for ext, (offset, size) in members.items():
        if ext in wanted:
            fh.seek(offset)
            data = fh.read(size)
            if len(data) == size:
                sample[ext] = data
    return sample
