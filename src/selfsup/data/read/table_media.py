"""Images, their captions and labels from the rows of a table: a .parquet file or a `datasets` save_to_disk folder's
.arrow files, read MEDIA_ROWS rows at a time through parquet.py's and hf_datasets.py's record-batch readers, so a
table larger than memory streams. data/cache/images.py and media.py decode the items.

    check_tables(files, "image", "text")                     # one line for a missing or unusable column, from headers
    for item in table_items(f, rel, "image", "text", skipped, target, max_bytes): ...
    for name, path in table_links(f, "image", target): ...   # the files its rows name: part of the cache key

The image column holds, per row, an encoded image: its bytes (a binary column), a struct {bytes, path} as
`datasets.Image()` stores it (the bytes when present, else the path), or a path string relative to the table's
folder. A path is read under a pairs .jsonl's rules (`target`: data/cache/media.py `Links`: inside the data folder
unless data.allow_outside, a regular file, at most the decoder's max_bytes). A `label` column of integers or strings,
when the table has one, labels the images for evaluation (a null, blank or negative one: none).

Skipped and counted by reason: a null image (`no 'image' in row`), bytes over max_bytes (`file too large`), a path
that may not be read (Links' reasons: `outside the data folder`, ...), a null or blank caption when captions are read
(`no caption`); bytes that do not decode are counted by the decoder as any image's (`corrupt image`, ...), and a file
that cannot be read as a table as `unreadable_file`. A table without a named column, or whose column holds something
else (numbers for images, lists for captions), is the user's mistake: one DataError line naming the file, the field
and the columns it has or the column's type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from selfsup.data.cache.decoding import CHUNK, Skip
from selfsup.data.cache.rows import Item
from selfsup.data.errors import DataError
from selfsup.data.read.hf_datasets import arrow_rows, arrow_schema, shown
from selfsup.data.read.parquet import missing, parquet_rows, parquet_schema
from selfsup.data.skipped import skip

MEDIA_ROWS = CHUNK  # rows held at once: an image may be megabytes, so a decoding task's worth, not parquet's 1024
TABLE_SUFFIXES = (".parquet", ".arrow")  # .arrow: the files a datasets folder lists (hf_datasets.dataset_files)
LABEL = "label"
IMAGE_TYPES = "encoded image bytes (binary), a {bytes, path} struct as datasets.Image() stores it, or a path string"


def is_table(f: Path) -> bool:
    return f.suffix.lower() in TABLE_SUFFIXES


def check_tables(files: list[Path], image_field: str, caption_field: str | None) -> None:
    """Every readable table of `files` has an image column, and a caption column when captions are read, holding
    what it should: one line at once, from the footers and headers alone, before any row is read."""
    for f in files:
        schema = _schema(f) if is_table(f) else None
        if schema is None:
            continue  # not a table, or unreadable: its rows count it
        for key, field, fits, expected in (("image_field", image_field, _image_type, IMAGE_TYPES),
                                           ("caption_field", caption_field, _string_type, "a string column")):
            if field is None:
                continue
            if field not in schema.names:
                raise missing(_shown(f), schema.names, f"data.{key} '{field}'", "one of them")
            if not fits(kind := schema.field(field).type):
                raise DataError(f"data.{key} '{field}': column '{field}' of {_shown(f)} holds {kind}; "
                                f"expected {expected}")


def table_items(f: Path, rel: str, image_field: str, caption_field: str | None, skipped: Counter,
                target: Callable[[Path, str], Path], max_bytes: int) -> Iterator[Item]:
    """One item per usable row of table `f` (`rel`: its identity under the data path); with `caption_field` a row
    without a caption is skipped and counted, without it no caption is read. `target(f, path)` is the file a path
    names, or Skip."""
    schema = _schema(f)
    labeled = schema is not None and LABEL in schema.names and _label_type(schema.field(LABEL).type)
    columns = [image_field] + ([caption_field] if caption_field else []) + ([LABEL] if labeled else [])
    columns = list(dict.fromkeys(columns))  # a column named twice is read once
    for number, row in enumerate(_rows(f, columns, skipped, rel)):
        caption = None
        if caption_field:
            caption = row[caption_field].strip() if isinstance(row[caption_field], str) else ""
            if not caption:
                skip(skipped, "no caption", rel, number)
                continue
        value = row[image_field]
        if isinstance(value, dict):  # datasets.Image(): the bytes when it stored them, else the file they came from
            value = value.get("path") if value.get("bytes") is None else value["bytes"]
        if value is None or value == "":
            skip(skipped, f"no '{image_field}' in row", rel, number)
            continue
        try:
            payload = target(f, value) if isinstance(value, str) else _sized(value, max_bytes)
        except Skip as e:
            skip(skipped, e.reason, rel, number)
            continue
        yield Item(rel, number, caption, _label(row.get(LABEL)) if labeled else None, payload)


def table_links(f: Path, image_field: str, target: Callable[[Path, str], Path]) -> Iterator[tuple[str, Path]]:
    """The files the rows of table `f` name as their image and may read, (as written, path): part of the data too,
    for the cache key. A column of bytes names none and is not read here."""
    schema = _schema(f)
    if schema is None or image_field not in schema.names or _bytes_type(schema.field(image_field).type):
        return
    for row in _rows(f, [image_field], Counter(), f.name):  # what is skipped is counted when the items are read
        value = row[image_field]
        if isinstance(value, dict):
            value = value.get("path") if value.get("bytes") is None else None
        if isinstance(value, str) and value:
            try:
                yield value, target(f, value)
            except Skip:
                continue


def _rows(f: Path, columns: list[str], skipped: Counter, rel: str) -> Iterator[dict]:
    read = parquet_rows if f.suffix.lower() == ".parquet" else arrow_rows
    yield from read(f, columns, skipped, "data.image_field", f"columns {', '.join(columns)}", MEDIA_ROWS, name=rel)


def _sized(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise Skip("file too large")
    return data


def _label(value) -> int | str | None:
    if isinstance(value, str):
        return value.strip() or None
    return value if isinstance(value, int) and value >= 0 else None  # datasets' ClassLabel: -1 is no label


def _schema(f: Path):
    return parquet_schema(f) if f.suffix.lower() == ".parquet" else arrow_schema(f)


def _shown(f: Path) -> str:
    """A table as an error line names it: the .parquet file, or the datasets folder of an .arrow file."""
    return f.name if f.suffix.lower() == ".parquet" else shown(f)


def _bytes_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
        or pa.types.is_binary_view(t)


def _string_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _image_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(t):
        parts = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        return _bytes_type(parts.get("bytes", pa.null())) or _string_type(parts.get("path", pa.null()))
    return _bytes_type(t) or _string_type(t)


def _label_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or _string_type(t)
