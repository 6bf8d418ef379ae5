"""A run's data, whatever the modality: training and validation loaders, what the objective is built from
(tokenizer, training images or clips), the normalisation statistics measured on the training rows (`norm`, which
setup writes into the resolved config, so evaluation normalises exactly as training did) and what the summary
reports. What the objective needs of its data (`DataNeeds`: window overlap, training rows, validation) is read
from its class before it exists, so the data is made in one pass."""

from __future__ import annotations

from pathlib import Path

from selfsup.config import RunConfig
from selfsup.data import builtin
from selfsup.data.cache.images import prepare_images
from selfsup.data.cache.media import prepare_media, settings
from selfsup.data.cache.tokens import cache_root, prepare
from selfsup.data.errors import DataError
from selfsup.data.load.mixture import Mixture
from selfsup.data.load.rows import RowLoader
from selfsup.data.load.windows import PackedWindows
from selfsup.data.read.captions import caption_arrays, caption_tokenizer
from selfsup.data.stream.loader import StreamLoader
from selfsup.data.stream.prepare import prepare_stream
from selfsup.objectives.build import data_needs
from selfsup.train.continual import old_stream


class RunData:
    def __init__(self, cfg: RunConfig, run_dir: Path, log):
        """run_dir: where a resumed pairs run keeps its caption tokenizer (read, never written: train/identity.py
        writes the run directory once the data is known to be the run's)."""
        needs = data_needs(cfg)
        self.tokenizer = self.train_images = self.train_clips = self.unigram_ppl = self.norm = None
        self.old_val_loader = None  # continual pretraining: the parent's validation data, to watch forgetting
        d = cfg.data
        cache = cache_root(d.cache_dir)
        path = builtin.resolve(d.path, cache)
        self.cache = cache
        if d.streaming:
            self._stream(cfg, path, cache, run_dir, log, needs)
        elif cfg.modality == "text":
            self._text(cfg, log, needs.window_overlap)
        elif cfg.is_image:
            self._images(cfg, path, log)
        else:
            self._media(cfg, path, run_dir, log)
        if not needs.validates:
            self.val_loader = None  # e.g. DeepCluster: pseudo-labels exist for training rows only

    def _text(self, cfg: RunConfig, log, overlap: int) -> None:
        """Windows of model.context tokens (+ the objective's overlap: CLM needs one more for the shift)."""
        c = prepare(cfg.data, cfg.model.vocab_size, log=log)
        self.tokenizer = c.tokenizer
        self.fingerprint = c.content  # what the files hold: a run's identity (train/identity.py)
        self.unigram_ppl = c.meta["unigram_ppl"]
        self.summary = dict(path=cfg.data.path, files=c.meta["files"], documents=c.meta["documents"],
                            skipped=c.meta["skipped"], tokens=c.meta["tokens"], cache=str(c.dir))
        self.loader = PackedWindows(c.train, c.dtype, cfg.model.context, overlap, seed=cfg.seed)
        self.val_loader = PackedWindows(c.val, c.dtype, cfg.model.context, overlap, shuffle=False)
        self.window = (f"{len(self.loader):,} training windows of {cfg.model.context} tokens", cfg.model.context)
        if cfg.continual.old_data:  # continual pretraining: the old domain too, tokenized alike
            old = prepare(old_stream(cfg), cfg.model.vocab_size, log=log)
            self.old_val_loader = PackedWindows(old.val, old.dtype, cfg.model.context, overlap, shuffle=False)
            if cfg.continual.replay:
                replay = PackedWindows(old.train, old.dtype, cfg.model.context, overlap, seed=cfg.seed + 1)
                self._mix(cfg, replay, "windows", tokens=old.meta["tokens"])

    def _images(self, cfg: RunConfig, path: str, log) -> None:
        d, im = cfg.data, cfg.image
        images = prepare_images(path, im.size, im.channels, d.val_fraction, d.cache_dir, d.workers, log=log,
                                image_field=d.image_field, allow_outside=d.allow_outside)
        self.norm = (images.mean, images.std)
        self.fingerprint = images.content
        im = cfg.with_measured(*self.norm).image  # the statistics the summary reports: the config's, else measured
        self.train_images = images.train
        self.loader = RowLoader({"images": images.train}, seed=cfg.seed)
        self.val_loader = RowLoader({"images": images.val}, shuffle=False) if len(images.val) else None
        self.window = (f"{len(images.train):,} training images of {im.channels}×{im.size}×{im.size}", 1)
        self.summary = dict(path=d.path, files=images.meta["files"], images=images.meta["images"],
                            skipped=images.meta["skipped"], classes=len(images.classes), mean=im.mean,
                            std=im.std, cache=str(images.dir))
        if cfg.continual.old_data:  # continual pretraining: the old domain's images too
            old = prepare_images(builtin.resolve(cfg.continual.old_data, self.cache),
                                 im.size, im.channels, d.val_fraction, d.cache_dir, d.workers, log=log,
                                 image_field=d.image_field, allow_outside=d.allow_outside)
            self.old_val_loader = RowLoader({"images": old.val}, shuffle=False) if len(old.val) else None
            if cfg.continual.replay:
                self._mix(cfg, RowLoader({"images": old.train}, seed=cfg.seed + 1), "images",
                          images=old.meta["images"])

    def _mix(self, cfg: RunConfig, replay, what: str, **counts) -> None:
        """Continual pretraining: each batch takes continual.replay of its rows from the old domain's data."""
        self.loader = Mixture(self.loader, replay, cfg.continual.replay)
        self.summary["replay"] = dict(path=cfg.continual.old_data, share=cfg.continual.replay, **counts)
        self.window = (f"{self.window[0]} + {100 * cfg.continual.replay:g}% of each batch replayed from "
                       f"{len(replay):,} {what} of {cfg.continual.old_data}", self.window[1])

    def close(self) -> None:
        """Stop what reads data in other processes (streaming's decoding workers)."""
        for loader in (self.loader, self.val_loader):
            if isinstance(loader, StreamLoader):
                loader.close()

    def _stream(self, cfg: RunConfig, path: str, cache: Path, run_dir: Path, log, needs) -> None:
        s = prepare_stream(cfg, path, cache, run_dir, log, needs.fits_on_data, needs.streams)
        self.loader, self.val_loader, self.tokenizer, self.train_images = s.loader, s.val_loader, s.tokenizer, s.sample
        self.window, self.summary, self.norm, self.fingerprint = s.window, s.summary, s.norm, s.fingerprint

    def _media(self, cfg: RunConfig, path: str, run_dir: Path, log) -> None:
        d, modality = cfg.data, cfg.modality
        pairs = cfg.pairs
        media = prepare_media(path, modality, settings(modality, cfg), d.val_fraction, d.cache_dir, d.workers, log,
                              captions=pairs, allow_outside=d.allow_outside, image_field=d.image_field,
                              caption_field=d.caption_field)
        self.norm = (media.meta["mean"], media.meta["std"])
        self.fingerprint = media.content
        train, val = media.train, media.val
        if pairs:
            if train.captions is None:
                raise DataError(f"data.path '{d.path}': {cfg.objective} trains on {modality}-text pairs, but these "
                                f"{modality} files carry no captions; expected a .jsonl of pairs ({{\"{modality}\": "
                                "path, \"text\": caption}) or .tar shards with .txt captions")
            saved = run_dir / "tokenizer.json"  # a resumed run keeps the tokenizer it started with
            self.tokenizer = caption_tokenizer(train.captions, cfg.text.vocab_size,
                                               str(saved) if saved.is_file() else d.tokenizer,
                                               closed=cfg.text.pooling == "last")
            self.loader, self.val_loader = (self._pairs(cfg, split, seed=cfg.seed, shuffle=shuffle)
                                            for split, shuffle in ((train, True), (val, False)))
            what = f"{modality}-text pairs"
        else:
            self.train_clips = (train.rows, train.lengths)
            self.loader = RowLoader({"media": train.rows, "lengths": train.lengths}, seed=cfg.seed)
            self.val_loader = (RowLoader({"media": val.rows, "lengths": val.lengths}, shuffle=False)
                               if len(val.rows) else None)
            what = f"{modality} clips"
        self.window = (f"{len(train.rows):,} training {what}", 1)
        self.summary = dict(path=d.path, files=media.meta["files"], samples=media.meta["samples"],
                            skipped=media.meta["skipped"], notes=media.meta["notes"], classes=len(media.classes),
                            mean=media.meta["mean"], std=media.meta["std"], cache=str(media.dir))

    def _pairs(self, cfg: RunConfig, split, seed: int, shuffle: bool) -> RowLoader | None:
        if not len(split.rows):
            return None
        ids, mask = caption_arrays(self.tokenizer, split.captions, cfg.text.context)
        return RowLoader({"media": split.rows, "lengths": split.lengths, "text": ids, "text_mask": mask},
                         seed=seed, shuffle=shuffle)

