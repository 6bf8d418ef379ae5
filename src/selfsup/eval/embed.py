"""`selfsup embed`: a run's pooled features of texts, images, audio or video, read as training reads them, saved as
an (N, D) float32 .npy (row i for the i-th item read), with a rows file naming each row's source and a file of the
items skipped (eval/embed_rows.py), and, for texts, optionally a .jsonl of text and embedding.

`joint` (clip, siglip, clap, videoclip runs): unit vectors in the joint media-text space. Media go through the
media tower and its projection; texts through the text tower and its projection (eval/joint.py's embed_texts, as
zero-shot prompts and retrieval captions are), so `media @ texts.T` is the cosine evaluation ranks by. The input
is texts when it is one file of them: a .txt (a text a line), or a .jsonl / .parquet whose rows have the caption
field (data.caption_field) and none the media one (data.image_field for images, `audio` / `video`, or `path`); a
.jsonl mixing both kinds of row is one error line. Anything else is media, as without --joint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.config import BUILTIN_CORPUS, ConfigError
from selfsup.data.cache.rows import row_names, skipped_names
from selfsup.data.errors import DataError
from selfsup.data.labeled import Clips
from selfsup.data.read.jsonl import json_line
from selfsup.data.read.parquet import parquet_schema
from selfsup.data.read.text import TEXT_SUFFIXES, named_documents, read_lines, source_files
from selfsup.data.skipped import Skipped
from selfsup.eval.embed_rows import rows_paths, write_rows, write_skipped
from selfsup.eval.joint import JointMedia, embed_texts
from selfsup.probe.inputs import encode, run_inputs
from selfsup.rundir import open_run, refuse_run_file


@dataclass
class Embedded:
    items: int
    what: str  # 'texts', 'images', 'audio clips', 'video clips'
    shape: tuple[int, ...]
    out: Path  # the .npy written (np.save adds the suffix a name lacks)
    rows: Path  # one row per .npy row: its source (eval/embed_rows.py)
    skipped_file: Path  # one row per item skipped, with the reason
    jsonl: Path | None  # the .jsonl written, if any
    protocol: str
    skipped: dict  # counts by reason


def embed(run_dir: Path, input: str, out: Path, jsonl: Path | None, joint: bool, batch_size: int,
          device: torch.device, progress=None) -> Embedded:
    """Embed `input` with the run's trunk (`joint`: its unit vectors in the joint media-text space) and write `out`,
    its rows and skipped files (and `jsonl` for texts); `progress` wraps the iterable of batches."""
    out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")  # the name np.save writes
    for path, option in ((out, "--out"), (jsonl, "--jsonl")):
        if path is not None:
            _check_output(path, option, input)
    cfg, objective, tok = open_run(run_dir, device)
    if joint and not cfg.pairs:
        raise ConfigError(f"--joint needs a joint media-text space (clip, siglip, clap or videoclip runs); "
                          f"'{run_dir}' trained '{cfg.objective}'")
    texts = cfg.modality == "text" or (joint and _text_input(cfg, input))
    files = source_files(input, cfg.data.extensions if cfg.modality == "text" else TEXT_SUFFIXES) if texts else None
    rows, skipped_file = rows_paths(out, parquet=_all_parquet(files, cfg, input))
    for path in (rows, skipped_file):
        _check_output(path, "--out", input)
    if texts:
        emb, names, skipped_items, counts, protocol = _texts(cfg, objective, tok, input, files, joint, batch_size,
                                                             device, progress)
        items, what = [text for _, _, text in names], "texts"
    else:
        cache, items, counts, what = _media(cfg, input)
        inputs = run_inputs(cfg, objective, tok)
        trunk = JointMedia(objective) if joint else objective.model
        emb = encode(trunk, inputs, items, batch_size, device, progress=progress)  # (N, D) or (N, E)
        protocol = inputs.describe(objective.model) + ("; projected into the joint space, L2-normalised"
                                                       if joint else "")
        names, skipped_items = row_names(cache), skipped_names(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.numpy())
    parquet = rows.suffix == ".parquet"
    written = write_rows(rows, names, texts, parquet)
    assert written == len(emb), (written, len(emb))  # the rows file is the .npy's index
    write_skipped(skipped_file, skipped_items, parquet)
    if jsonl is not None and texts:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(jsonl, "w", encoding="utf-8") as f:
            for text, row in zip(items, emb.tolist()):
                f.write(json.dumps({"text": text, "embedding": row}) + "\n")
    else:
        jsonl = None
    return Embedded(len(emb), what, tuple(emb.shape), out, rows, skipped_file, jsonl, protocol, counts)


def _texts(cfg, objective, tok, input: str, files: list[Path], joint: bool, batch_size: int, device: torch.device,
           progress):
    """(embeddings (N, D) or, `joint`, (N, E) unit vectors; (file, key, text) per row; (file, key, reason) per
    skipped text; skipped counts; protocol) of the texts in `files`."""
    d, skipped = cfg.data, Skipped()
    # read as the run read its corpus; texts for the joint space as its captions were, a line each
    field, document = (d.caption_field, "line") if joint else (d.text_field, d.document)
    named = list(named_documents(files, Path(input).expanduser(), skipped, d.max_doc_chars,
                                 builtin=input == BUILTIN_CORPUS, field=field, document=document))
    if not named:
        raise DataError(f"'{input}' holds no usable texts (skipped: {dict(skipped) or 'none'})")
    texts = [text for _, _, text in named]
    if joint:
        emb = embed_texts(objective, tok, texts, cfg.text.context, batch_size, device)  # (N, E)
        protocol = (f"texts through the text tower and its projection (the captions' tokenizer and context of "
                    f"{cfg.text.context} tokens), L2-normalised: the joint space's text side")
    else:
        inputs = run_inputs(cfg, objective, tok)
        emb = encode(objective.model, inputs, texts, batch_size, device, progress=progress)  # (N, D)
        protocol = inputs.describe(objective.model)
    return emb, named, skipped.named, dict(sorted(skipped.items())), protocol


def _media(cfg, input: str) -> tuple[Path, object, dict, str]:
    """The run's media under `input`, cached with the names of its rows and skipped items: (cache folder, items to
    encode, skipped counts, what they are). A .jsonl of pairs is read for its media, images too (as an alignment
    run's training reads it)."""
    if cfg.modality == "image" and Path(input).suffix.lower() != ".jsonl":
        from selfsup.data.cache.images import prepare_images

        im = cfg.image
        images = prepare_images(input, im.size, im.channels, 0.0, cfg.data.cache_dir, log=lambda s: None,
                                image_field=cfg.data.image_field, allow_outside=cfg.data.allow_outside, names=True)
        return images.dir, images.train, images.meta["skipped"], "images"
    from selfsup.data.cache.media import prepare_media, settings

    media = prepare_media(input, cfg.modality, settings(cfg.modality, cfg), 0.0, cfg.data.cache_dir,
                          log=lambda s: None, allow_outside=cfg.data.allow_outside, image_field=cfg.data.image_field,
                          names=True)
    split = media.train
    if cfg.modality == "image":
        return media.dir, split.rows, media.meta["skipped"], "images"
    return media.dir, Clips(split.rows, split.lengths), media.meta["skipped"], f"{cfg.modality} clips"


def _text_input(cfg, input: str) -> bool:
    """--joint: whether `input` is texts for the text tower (see the module docstring) rather than media."""
    from selfsup.data.cache.media import pair_member

    p = Path(input).expanduser()
    suffix = p.suffix.lower()
    if not p.is_file() or suffix not in (".txt", ".jsonl", ".parquet"):
        return False
    caption = cfg.data.caption_field
    media = cfg.data.image_field if cfg.modality == "image" else cfg.modality
    if suffix == ".txt":
        return True
    if suffix == ".parquet":
        schema = parquet_schema(p)
        names = schema.names if schema is not None else []
        return caption in names and not (cfg.modality == "image" and media in names)
    records = [json_line(line) for _, line in read_lines(p, Skipped())]
    records = [r for r in records if isinstance(r, dict)]
    with_media = sum(pair_member(r, media) is not None for r in records)
    text_only = sum(pair_member(r, media) is None and isinstance(r.get(caption), str) for r in records)
    if with_media and text_only:
        raise DataError(f"--joint: '{input}' mixes {with_media} rows with a '{media}' (media to embed) and "
                        f"{text_only} with only a '{caption}' (texts to embed); expected one kind per file")
    return text_only > 0


def _all_parquet(files, cfg, input: str) -> bool:
    """Whether every source file of the input is a .parquet (its rows files are then .parquet too)."""
    if files is None:  # media
        from selfsup.data.cache.images import image_files
        from selfsup.data.cache.media import source_files as media_files

        image = cfg.modality == "image" and Path(input).suffix.lower() != ".jsonl"
        files = image_files(input) if image else media_files(input, cfg.modality)
    return bool(files) and all(f.suffix.lower() == ".parquet" for f in files)


def _check_output(path: Path, option: str, input: str) -> None:
    """Neither a file selfsup reads in a run directory nor the input (read whole, then lost), in one line, before
    anything is read."""
    refuse_run_file(path, option)
    if Path(input).expanduser().exists() and path.expanduser().resolve() == Path(input).expanduser().resolve():
        raise DataError(f"{option} '{path}' is the input '{input}', which it would overwrite; expected a file "
                        "elsewhere")
