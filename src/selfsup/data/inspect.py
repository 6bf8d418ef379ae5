"""What selfsup sees in a data path, read cheaply so a user can check it before a long run starts: the files (count,
size, by suffix), the rows (lines counted without decoding, Parquet rows from the footers), the fields (.jsonl keys
of the first lines, the Parquet schema; of a table of images, the image and caption columns a run reads at
data.image_field's and data.caption_field's defaults), label classes, and one sample. No image is decoded (Pillow
reads a header), and nothing here imports torch.

    rows = inspect_data("corpus/", kind=None)      # [(name, value)], value a short string
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from selfsup.config import DataConfig
from selfsup.data.cache import images, media
from selfsup.data.cache.tokens import is_shard_folder
from selfsup.data.cache.rows import folder_label
from selfsup.data.errors import DataError
from selfsup.data.read import text
from selfsup.data.read import tokenizer as toks
from selfsup.data.read.audio import AUDIO_SUFFIXES
from selfsup.data.read.image import IMAGE_SUFFIXES
from selfsup.data.read.hf_datasets import arrow_rows, arrow_schema
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.listing import data_files
from selfsup.data.read.parquet import parquet_rows, parquet_schema
from selfsup.data.read.table_media import LABEL, check_tables, is_table
from selfsup.data.read.video import VIDEO_SUFFIXES

KINDS = ("text", "image", "pairs", "audio", "video")
MEDIA_KEYS = ("image", "audio", "video")  # the key of a pair line's media, data/cache/media.py
SAMPLE_CHARS = 200
HEAD_LINES = 20  # .jsonl lines read for their keys
COUNT_BYTES = 1 << 30  # rows are counted in the files that fit in the first GiB; the rest are said to be left out
LABEL_LINES = 10_000  # .jsonl lines read for their labels


def inspect_data(path: str, kind: str | None = None) -> list[tuple[str, str]]:
    """(name, value) rows describing the data at `path` read as `kind` (None: guessed from the suffixes)."""
    if kind is not None and kind not in KINDS:
        raise DataError(f"--kind '{kind}': expected one of {', '.join(KINDS)}")
    if path.startswith("hf:") and kind in (None, "text"):  # a hub dataset: its text files, as data.path reads them
        files = text.source_files(path)
        return [("path", path), ("read as", "text (an hf: dataset)"), *_file_rows(files), *_text(files, path)]
    if is_shard_folder(path) and kind in (None, "text"):
        return [("path", path), ("read as", "token shards (selfsup data tokenize; data.path reads them in place)"),
                *_shards(Path(path).expanduser())]
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"'{path}' does not exist; expected a data file or folder, or a run directory")
    found = [p] if p.is_file() else data_files(p)
    if not found:
        raise DataError(f"'{path}' is an empty folder; expected data files in it (or a run directory)")
    how = f"{kind} (--kind)"
    if kind is None:
        kind = guess_kind(found)
        how = f"{kind} (guessed from the suffixes; --kind chooses)"
    files = _files(path, kind)
    return [("path", str(path)), ("read as", how), *_file_rows(files), *READERS[kind](files, path)]


def guess_kind(files: list[Path]) -> str:
    """The kind most of `files` are: text unless images, audio or video outnumber text files; .jsonl files that
    name media are pairs, and so are tables (.parquet, a datasets folder's .arrow) with an image and a caption
    column (images with an image column alone)."""
    by = Counter(f.suffix.lower() for f in files)
    jsonl = [f for f in files if f.suffix.lower() == ".jsonl"]
    if jsonl and any(k in _keys(jsonl[0]) for k in MEDIA_KEYS):
        return "pairs"
    tables = [f for f in files if is_table(f)]
    d = DataConfig()
    if tables and (schema := _schema(tables[0])) is not None and d.image_field in schema.names:
        return "pairs" if d.caption_field in schema.names else "image"
    counts = {"text": sum(by[s] for s in (*text.TEXT_SUFFIXES, ".arrow")),  # .arrow: a datasets folder's
              "image": sum(by[s] for s in images.SOURCE_SUFFIXES),
              "audio": sum(by[s] for s in AUDIO_SUFFIXES), "video": sum(by[s] for s in VIDEO_SUFFIXES)}
    return max(counts, key=lambda k: (counts[k], k == "text"))


def _files(path: str, kind: str) -> list[Path]:
    """The files a run of `kind` reads at `path`, as the training readers list them (their one-line errors)."""
    if kind == "text":
        return text.source_files(path)
    if kind == "image":
        return images.image_files(path)
    if kind == "pairs":
        files = [f for f in media.source_files(path, "image")
                 if f.suffix.lower() in media.pair_suffixes("image") or is_table(f)]
        if not files:
            raise DataError(f"'{path}' holds no .jsonl of pairs, .tar shards or tables (.parquet, a datasets "
                            "folder); expected pairs (or another --kind)")
        return files
    return media.source_files(path, kind)


def _file_rows(files: list[Path]) -> list[tuple[str, str]]:
    sizes = Counter()
    counts = Counter()
    for f in files:
        counts[f.suffix.lower() or "(none)"] += 1
        sizes[f.suffix.lower() or "(none)"] += f.stat().st_size
    by = ", ".join(f"{n:,} {s} ({_size(sizes[s])})" for s, n in counts.most_common())
    return [("files", f"{len(files):,}, {_size(sum(sizes.values()))}"), ("by suffix", by)]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _counted(files: list[Path]) -> tuple[list[Path], str]:
    """The files whose rows are counted (those within the first COUNT_BYTES) and how to say so."""
    kept, total = [], 0
    for f in files:
        total += f.stat().st_size
        if kept and total > COUNT_BYTES:
            break
        kept.append(f)
    return kept, "" if len(kept) == len(files) else f" in the first {len(kept):,} of {len(files):,} files"


def _lines(f: Path) -> int | None:
    """Non-blank lines, counted on the bytes (nothing decoded); None when the file cannot be read."""
    try:
        with f.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


def _head(f: Path, n: int = HEAD_LINES) -> list[object]:
    """The JSON values of the first `n` non-blank lines (None for a line that is not JSON)."""
    values = []
    try:
        with f.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    values.append(json_line(raw))
                    if len(values) == n:
                        break
    except OSError:  # an unreadable file shows no fields; a run skips and counts it
        pass
    return values


def _keys(f: Path) -> list[str]:
    seen = {}
    for value in _head(f):
        if isinstance(value, dict):
            seen.update(dict.fromkeys(value))
    return list(seen)


def _labels(f: Path) -> Counter:
    labels = Counter()
    for value in _head(f, LABEL_LINES):
        if isinstance(value, dict) and value.get("label") is not None:
            labels[str(value["label"])] += 1
    return labels


def _classes(labels: Counter, where: str) -> list[tuple[str, str]]:
    if not labels:
        return []
    shown = ", ".join(f"{k} ({n:,})" for k, n in labels.most_common(10))
    more = f", … {len(labels) - 10:,} more" if len(labels) > 10 else ""
    return [(f"classes{where}", f"{len(labels):,}: {shown}{more}")]


def _short(s: str) -> str:
    s = " ".join(s.split())
    return repr(s if len(s) <= SAMPLE_CHARS else s[:SAMPLE_CHARS] + "…")


def _shards(folder: Path) -> list[tuple[str, str]]:
    """What meta.json says of a shard folder, and the start of its first training shard, decoded."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        splits = ", ".join(f"{s} {meta['documents'][s]:,} documents, {meta['tokens'][s]:,} tokens in "
                           f"{len(meta['shards'][s])} shard(s)" for s in ("train", "val"))
        tok = toks.load(folder / "tokenizer.json", "its tokenizer")
        ids = np.fromfile(folder / meta["shards"]["train"][0], dtype=meta["dtype"], count=SAMPLE_CHARS).tolist()
        first = ids[:ids.index(meta["eos_id"])] if meta["eos_id"] in ids else ids  # a document ends at EOS
    except (OSError, ValueError, KeyError, TypeError, IndexError, DataError) as e:
        return [("meta.json", f"not readable as token shards' ({e})")]
    settings = meta.get("settings", {})
    return [("made from", f"{meta.get('path')} ({meta.get('files')} file(s))"), ("splits", splits),
            ("tokenizer", f"{meta['vocab']:,} tokens ({meta['dtype']})"),
            ("settings", ", ".join(f"data.{k}={v}" for k, v in settings.items()) or "unrecorded"),
            ("skipped", ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in meta.get("skipped", {}).items())
             or "nothing"),
            ("first document", _short(tok.decode(first)))]


def _text(files: list[Path], path: str) -> list[tuple[str, str]]:
    counted, where = _counted(files)
    by = Counter()
    for f in counted:
        tables = {".parquet": _parquet, ".arrow": _arrow}
        found = tables[f.suffix.lower()](f)[0] if f.suffix.lower() in tables else _lines(f)
        by[f.suffix.lower() if found is not None else "unreadable"] += found if found is not None else 1
    noun = {".txt": "lines", ".jsonl": ".jsonl lines", ".parquet": "Parquet rows", ".arrow": "datasets rows",
            "unreadable": "unreadable files"}
    rows = [("rows" + where, ", ".join(f"{n:,} {noun.get(s, s + ' lines')}" for s, n in by.items()))]
    jsonl = [f for f in files if f.suffix.lower() == ".jsonl"]
    if jsonl:
        rows.append((f"fields of {jsonl[0].name}", ", ".join(_keys(jsonl[0])) or "none (no JSON object)"))
        rows += _classes(_labels(jsonl[0]), f" of {jsonl[0].name}")
    parquet = [f for f in files if f.suffix.lower() == ".parquet"]
    if parquet:
        rows.append((f"schema of {parquet[0].name}", _parquet(parquet[0])[1] or "unreadable as Parquet"))
    arrow = [f for f in files if f.suffix.lower() == ".arrow"]
    if arrow:
        rows.append((f"schema of {arrow[0].name}", _arrow(arrow[0])[1] or "unreadable as an Arrow stream"))
    skipped = Counter()
    try:
        first = next(text.read_documents(counted, skipped, DataConfig().max_doc_chars), None)  # as a run reads
    except DataError as e:  # e.g. a Parquet file without a 'text' column: the run would stop there too
        return rows + [("first document", f"not readable as a run reads it: {e}")]
    if first is None:
        reasons = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in skipped.most_common())
        rows.append(("first document", f"none readable (skipped: {reasons or 'nothing'})"))
    else:
        rows.append(("first document", _short(first)))
    return rows


def _parquet(f: Path) -> tuple[int | None, str | None]:
    """A Parquet file's rows and schema from its footer (None, None: unreadable, as a run counts it)."""
    import pyarrow as pa  # only where a Parquet file is read
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException):
        return None, None
    schema = meta.schema.to_arrow_schema()
    return meta.num_rows, ", ".join(f"{n}: {t}" for n, t in zip(schema.names, schema.types))


def _arrow(f: Path) -> tuple[int | None, str | None]:
    """A datasets .arrow stream file's rows and schema (None, None: unreadable, as a run counts it); the rows are
    counted a record batch at a time."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.OSFile(str(f)))
        rows = sum(batch.num_rows for batch in reader)
    except (OSError, pa.ArrowException):
        return None, None
    return rows, ", ".join(f"{n}: {t}" for n, t in zip(reader.schema.names, reader.schema.types))


def _image(files: list[Path], path: str) -> list[tuple[str, str]]:
    counted, where = _counted(files)
    loose = [f for f in counted if f.suffix.lower() in IMAGE_SUFFIXES]
    npz = sum(_npz_images(f) for f in counted if f.suffix.lower() == ".npz")
    shards = sum(_tar_samples(f) for f in counted if f.suffix.lower() == ".tar")
    parts = [f"{len(loose):,} image files" if loose else "", f"{npz:,} images in .npz" if npz else "",
             f"{shards:,} samples in .tar shards" if shards else "", _table_count(counted)]
    rows = [("images" + where, ", ".join(p for p in parts if p) or "none")]
    root = Path(path).expanduser()
    if root.is_dir():
        rows += _classes(Counter(label for f in loose if (label := folder_label(f.relative_to(root).as_posix()))),
                         " (sub-folders)")
    if is_table(files[0]):
        return rows + _table_columns(files[0], caption=False)
    rows.append(("first image", _image_sample(files[0])))
    return rows


def _npz_images(f: Path) -> int:
    """The length of an .npz's `images` array, from its header (the array is not read)."""
    try:
        with zipfile.ZipFile(f) as z, z.open("images.npy") as fh:
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
            shape = read(fh)[0]
            return int(shape[0]) if shape else 0
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return 0


def _tar_samples(f: Path) -> int:
    """Samples of a webdataset shard: member keys, from the tar headers."""
    try:
        with tarfile.open(f) as tar:
            return len({m.name.split(".", 1)[0] for m in tar if m.isfile()})
    except (OSError, tarfile.TarError):
        return 0


def _image_sample(f: Path) -> str:
    if f.suffix.lower() not in IMAGE_SUFFIXES:
        return f"{f.name} (a {f.suffix} file: its images are read when the cache is built)"
    from PIL import Image

    try:
        with Image.open(f) as im:  # reads the header only
            return f"{f.name}: {im.width}×{im.height}, mode {im.mode}"
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # a run skips and counts it
        return f"{f.name}: not readable as an image ({type(e).__name__})"


def _pairs(files: list[Path], path: str) -> list[tuple[str, str]]:
    counted, where = _counted(files)
    jsonl = [f for f in counted if f.suffix.lower() == ".jsonl"]
    shards = [f for f in counted if f.suffix.lower() == ".tar"]
    parts = [f"{sum(_lines(f) or 0 for f in jsonl):,} .jsonl lines" if jsonl else "",
             f"{sum(_tar_samples(f) for f in shards):,} samples in .tar shards" if shards else "",
             _table_count(counted)]
    rows = [("pairs" + where, ", ".join(p for p in parts if p))]
    tables = [f for f in files if is_table(f)]
    if tables:
        rows += _table_columns(tables[0], caption=True)
    if jsonl:
        first = jsonl[0]
        rows.append((f"fields of {first.name}", ", ".join(_keys(first)) or "none (no JSON object)"))
        rows += _classes(_labels(first), f" of {first.name}")
        record = next((v for v in _head(first) if isinstance(v, dict)), {})
        key = next((k for k in (*MEDIA_KEYS, "path") if isinstance(record.get(k), str)), None)
        caption = record.get("text")
        rows.append(("first pair", f"{key or 'media'}: {record.get(key) if key else 'none named'}"
                                   + (f" ({'found' if (first.parent / record[key]).is_file() else 'missing'})"
                                      if key else "")
                                   + f"; caption: {_short(caption) if isinstance(caption, str) else 'none'}"))
    return rows


def _table_count(files: list[Path]) -> str:
    """'N rows in .parquet files' / '... in datasets .arrow files' for the tables of `files`, or ''."""
    parts = []
    for suffix, noun in ((".parquet", ".parquet files"), (".arrow", "datasets .arrow files")):
        found = [f for f in files if f.suffix.lower() == suffix]
        if found:
            read = _parquet if suffix == ".parquet" else _arrow
            parts.append(f"{sum(read(f)[0] or 0 for f in found):,} rows in {noun}")
    return ", ".join(parts)


def _schema(f: Path):
    return parquet_schema(f) if f.suffix.lower() == ".parquet" else arrow_schema(f)


def _table_columns(f: Path, caption: bool) -> list[tuple[str, str]]:
    """A table's schema, its image (and caption) column as a run reads them at the default data.image_field and
    data.caption_field, and its first row; or what a run would say of it."""
    d = DataConfig()
    schema = _schema(f)
    if schema is None:
        return [(f"schema of {f.name}", "unreadable as a table")]
    rows = [(f"schema of {f.name}", ", ".join(f"{n}: {t}" for n, t in zip(schema.names, schema.types)))]
    fields = {"image column": d.image_field, **({"caption column": d.caption_field} if caption else {})}
    try:
        check_tables([f], d.image_field, d.caption_field if caption else None)
    except DataError as e:
        return rows + [("first row", f"not readable as a run reads it: {e}")]
    rows += [(name, f"{field} ({schema.field(field).type})") for name, field in fields.items()]
    columns = list(dict.fromkeys([*fields.values(), *([LABEL] if LABEL in schema.names else [])]))
    read = parquet_rows if f.suffix.lower() == ".parquet" else arrow_rows
    row = next(read(f, columns, Counter(), "inspect", "its columns", 1), None)
    if row is None:
        return rows + [("first row", "none readable")]
    shown = [f"image: {_cell(row[d.image_field], f)}"]
    if caption:
        shown.append(f"caption: {_short(row[d.caption_field]) if isinstance(row[d.caption_field], str) else 'none'}")
    if LABEL in row:
        shown.append(f"label: {row[LABEL]}")
    return rows + [("first row", "; ".join(shown))]


def _cell(value, table: Path) -> str:
    """An image cell as a run reads it: its bytes' header (format, size, mode), or the path and whether it is there."""
    if isinstance(value, dict):  # datasets.Image(): the bytes when stored, else the path
        value = value.get("path") if value.get("bytes") is None else value["bytes"]
    if isinstance(value, str) and value:
        return f"{value} ({'found' if (table.parent / value).is_file() else 'missing'})"
    if not isinstance(value, bytes):
        return "none"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(value)) as im:  # reads the header only
            return f"{len(value):,} bytes of {im.format} {im.width}×{im.height}, mode {im.mode}"
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # a run skips and counts it
        return f"{len(value):,} bytes, not readable as an image ({type(e).__name__})"


def _media(files: list[Path], path: str) -> list[tuple[str, str]]:
    root = Path(path).expanduser()
    loose = [f for f in files if f.suffix.lower() not in (".jsonl", ".tar")]
    rows = [("clips", f"{len(loose):,} files" if loose else "in the .jsonl/.tar files above")]
    if root.is_dir():
        rows += _classes(Counter(label for f in loose if (label := folder_label(f.relative_to(root).as_posix()))),
                         " (sub-folders)")
    rows.append(("first clip", f"{files[0].name}, {_size(files[0].stat().st_size)}"))
    return rows


READERS = {"text": _text, "image": _image, "pairs": _pairs, "audio": _media, "video": _media}
