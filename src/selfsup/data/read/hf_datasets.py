"""A Hugging Face `datasets` folder written by `save_to_disk`, read with pyarrow alone (no `datasets` import).

    Dataset:      state.json, dataset_info.json, data-00000-of-0000N.arrow ...   (Arrow IPC *stream* files)
    DatasetDict:  dataset_dict.json ({"splits": [...]}) and one such folder per split; training reads `train`

    split, files = dataset_files(folder)      # the .arrow files in state.json's order
    for row in arrow_rows(path, ["text"], skipped, what, expected): ...    # dicts, BATCH_ROWS at a time
    schema = arrow_schema(path)       # from the stream's header; None when it cannot be read as one

A file that cannot be read as an Arrow stream is counted `unreadable_file`, as parquet.py counts a bad Parquet file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from selfsup.data.errors import DataError
from selfsup.data.read.parquet import BATCH_ROWS, batch_rows, missing
from selfsup.data.skipped import skip

STATE = "state.json"  # a Dataset folder
SPLITS = "dataset_dict.json"  # a DatasetDict folder
TRAIN_SPLIT = "train"


def is_datasets_folder(p: Path) -> bool:
    return p.is_dir() and ((p / STATE).is_file() or (p / SPLITS).is_file())


def dataset_files(folder: Path, what: str) -> tuple[str | None, list[Path]]:
    """(split read, or None for a lone Dataset; its .arrow files). `what` starts an error line: "data.path '...'"."""
    split = None
    if (folder / SPLITS).is_file():
        splits = _json(folder / SPLITS, what).get("splits") or []
        if TRAIN_SPLIT not in splits:
            raise DataError(f"{what}: a datasets DatasetDict with splits {', '.join(map(str, splits))}; "
                            f"expected a '{TRAIN_SPLIT}' split to train on")
        split, folder = TRAIN_SPLIT, folder / TRAIN_SPLIT
    state = _json(folder / STATE, what)
    names = [d.get("filename") for d in state.get("_data_files") or [] if isinstance(d, dict)]
    files = [folder / n for n in names if isinstance(n, str)]
    if not files:
        files = sorted(folder.glob("*.arrow"))  # a state.json without its list: the shards by name
    if not files:
        raise DataError(f"{what}: the datasets folder {folder.name} holds no .arrow files; expected "
                        f"the data-0000x-of-0000N.arrow files save_to_disk writes")
    return split, files


def check_arrow_field(files: list[Path], field: str) -> None:
    """Every readable .arrow file has column `field`: one line naming the folder, from the stream headers alone."""
    for f in files:
        if f.suffix == ".arrow" and (schema := arrow_schema(f)) is not None and field not in schema.names:
            raise missing(shown(f), schema.names, f"data.text_field '{field}'", "one of them")


def arrow_rows(path: Path, columns: list[str], skipped: Counter, what: str, expected: str,
               batch: int = BATCH_ROWS, name: str | None = None) -> Iterator[dict]:
    """Rows of `columns` of one .arrow stream file as dicts, `batch` at a time; a file lacking one of them is one
    line naming its folder. `name`: the file's in what is skipped (default its own)."""
    import pyarrow as pa

    try:
        # read, not memory-mapped: a batch's buffers are freed once its rows are out (a 153 MB dataset peaked at
        # 0.7 MB of Arrow memory and +4 MB RSS; mapped, the touched pages grew RSS by the file's size)
        reader = pa.ipc.open_stream(pa.OSFile(str(path)))
        names = reader.schema.names
    except (OSError, pa.ArrowException):
        skip(skipped, "unreadable_file", name or path.name)
        return
    if any(c not in names for c in columns):
        raise missing(shown(path), names, what, expected)
    yield from batch_rows(_slices(reader, columns, batch), skipped, name or path.name)


def _slices(reader, columns: list[str], rows: int):
    """The stream's batches cut to `rows` rows of `columns`: save_to_disk writes 1000-row batches (100 of images),
    but any writer's may be larger."""
    for batch in reader:
        batch = batch.select(columns)
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def shown(arrow: Path) -> str:
    """The folder an .arrow file is in, as an error line names it: `ds`, or `dd/train` for a DatasetDict's split."""
    folder = arrow.parent
    return f"{folder.parent.name}/{folder.name}" if (folder.parent / SPLITS).is_file() else folder.name


def arrow_schema(path: Path):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.OSFile(str(path))).schema
    except (OSError, pa.ArrowException):
        return None


def _json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{what}: cannot read the datasets file {path.name} ({e}); expected the JSON "
                        f"save_to_disk writes") from None
    if not isinstance(value, dict):
        raise DataError(f"{what}: the datasets file {path.name} is not a JSON object; expected the "
                        f"one save_to_disk writes")
    return value
