"""Exporting a trained run for the rest of the ecosystem.

`hf`: a directory that Hugging Face transformers loads with its Auto classes, mapped one to one (nothing is
permuted; the tokenizer goes along as `tokenizer.json`, which `PreTrainedTokenizerFast` loads; an image run has a
`preprocessor_config.json` instead, for AutoImageProcessor). Each family's module in models/hf/ holds its name
table, which `model.init` reads the other way: the GPT decoder as LlamaForCausalLM or Qwen2ForCausalLM
(models/hf/llama.py) or, with GPT-2's options, GPT2LMHeadModel (models/hf/gpt2.py), the masked-LM encoder as
ModernBertForMaskedLM (a simcse encoder, which has no MLM head, as ModernBertModel; models/hf/modernbert.py) or,
with BERT's options (post-norm, learned positions, biases), as BertForMaskedLM (a simcse one as BertModel, without a
pooler; models/hf/bert.py), a ResNet-18/50 as ResNetModel (models/hf/resnet.py), a ViT as ViTModel or Dinov2Model
(models/hf/vit.py, dinov2.py), the towers of clip and siglip runs as CLIPModel and SiglipModel (models/hf/clip.py,
siglip.py), a waveform HuBERT as HubertModel (models/hf/hubert.py, with a `preprocessor_config.json` for
Wav2Vec2FeatureExtractor).

`open_clip`: a clip run as open_clip's CLIP (models/hf/open_clip.py): open_clip_model.safetensors,
open_clip_config.json and the run's tokenizer, which `open_clip.create_model_and_transforms("local-dir:FOLDER")` and
`open_clip.get_tokenizer("local-dir:FOLDER")` read.

`safetensors`: the weights and the resolved config alone, for selfsup itself or your own code; with `quantize`
int8 (the trunk's linear layers) or bf16 (every weight), which `selfsup eval` / `embed` open directly
(selfsup/quantize.py).

`onnx`: each encoder as an ONNX graph of the features `selfsup embed` computes (the GPT: logits; media-text runs: the
joint embeddings of each tower), with onnx.json saying how to feed it, for onnxruntime (selfsup/onnx_export.py).

The tokenizer goes along (`write_tokenizer`) so that transformers' default encoding gives the ids training fed the
model: EOS opening each text.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from torch import nn

from selfsup.config import RunConfig
from selfsup.data.read.captions import closes
from selfsup.data.read.tokenizer import EOS, MASK, PAD, opening_eos
from selfsup.data.read.tokenizer import load as load_tokenizer
from selfsup.model_card import model_card
from selfsup.models.hf import bert, clip, dinov2, gpt2, hubert, llama, modernbert, open_clip, resnet, siglip, vit
from selfsup.quantize import MARKER, MODES, quantized_state

# --format hf: each says why a run does not fit it (unfit) or writes it (to_hf); PROCESSORS: those whose folder has a
# tokenizer_config.json and preprocessor_config.json of its own
HF_FAMILIES = (llama, gpt2, modernbert, bert, resnet, vit, dinov2, clip, siglip, hubert)
PROCESSORS = (clip, siglip)


class ExportError(ValueError):
    """An export that cannot be made; the message is one line meant for the user."""


def export(run_dir: Path, cfg: RunConfig, objective: nn.Module, fmt: str, out: Path,
           quantize: str | None = None, force: bool = False, license: str | None = None,
           datasets: tuple[str, ...] = (), name: str | None = None) -> Path:
    """Write the run's model in `fmt` to the folder `out` (see `check_out`), whole or not at all (`_staged`), with
    its model card (README.md: `license`, `datasets` and the Hub `name` go into its metadata)."""
    if fmt == "onnx":
        _check_onnx(cfg, objective, quantize)
    elif quantize is not None and (fmt != "safetensors" or quantize not in MODES):
        raise ExportError(f"--quantize {quantize}: expected {' or '.join(MODES)}, with --format safetensors "
                          "(or int8 with --format onnx)")
    if fmt not in ("hf", "safetensors", "onnx", "open_clip"):
        raise ExportError(f"--format '{fmt}': expected 'hf', 'safetensors', 'onnx' or 'open_clip'")
    target = check_out(run_dir, out, force)
    # an unmappable model fails before any write
    hf = _hf_model(run_dir, cfg, objective) if fmt == "hf" else None
    oc = _open_clip_model(run_dir, cfg, objective, target) if fmt == "open_clip" else None
    with _staged(target) as tmp:
        if fmt == "onnx":
            _write_onnx(run_dir, cfg, objective, quantize, tmp)
        elif hf is not None:
            _write_hf(run_dir, cfg, *hf, tmp)
        elif oc is not None:
            _write_open_clip(run_dir, cfg, *oc, tmp)
        else:
            _write_safetensors(run_dir, objective, quantize, tmp)
        (tmp / "README.md").write_text(model_card(run_dir, cfg, fmt, tmp, license, list(datasets), name))
    return out


def _check_onnx(cfg: RunConfig, objective: nn.Module, quantize: str | None) -> None:
    """What --format onnx cannot export, in one line before any work."""
    from selfsup import onnx_export

    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize} with --format onnx: expected int8 (onnxruntime's dynamic "
                          "quantization of the linear layers)")
    why = onnx_export.unfit(cfg, objective)
    if why is not None:
        raise ExportError(f"--format onnx: {why}")


def _write_onnx(run_dir: Path, cfg: RunConfig, objective: nn.Module, quantize: str | None, out: Path) -> None:
    """The graphs and onnx.json (selfsup/onnx_export.py), and the tokenizer of a text or media-text run."""
    from selfsup import onnx_export

    scratch = out / ".fp32"  # the float graphs int8 is made from, removed before the folder is whole
    scratch.mkdir()
    try:
        onnx_export.write_onnx(cfg, objective, quantize, out, scratch)
    except onnx_export.Untraceable as e:
        raise ExportError(f"--format onnx: {e}") from None
    shutil.rmtree(scratch)
    if (run_dir / "tokenizer.json").is_file():
        write_tokenizer(run_dir, cfg, out)
        (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(cfg), indent=1))


def check_push(repo: str) -> None:
    """`--push ORG/NAME` can upload: a valid repository id, not offline, a token found; one line before any work."""
    import os

    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ExportError(f"--push '{repo}': expected a Hugging Face repository id ORG/NAME") from None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ExportError(f"--push {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or export "
                          "without --push and upload the folder later (`hf upload`)")
    if get_token() is None:
        raise ExportError(f"--push {repo}: no Hugging Face token found; run `hf auth login` or set HF_TOKEN (a token "
                          "with write access)")


def push(folder: Path, repo: str) -> str:
    """Upload the export folder to the Hub repository `repo` (made if missing, private by default); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True, private=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Export from selfsup"))


def check_out(run_dir: Path, out: Path, force: bool) -> Path:
    """`out` resolved (links followed), where an export may go: a new folder, an empty one, or with `force` one whose
    contents it replaces; never the run directory, a folder inside it or one holding it (--force or not)."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        where = "is the run directory" if target == run else "is inside the run directory"
        raise ExportError(f"--out '{out}' {where} '{run_dir}', which the export reads; expected a folder outside it")
    if target in run.parents:
        raise ExportError(f"--out '{out}' holds the run directory '{run_dir}'; expected a folder outside it")
    if target.exists() and not target.is_dir():
        raise ExportError(f"--out '{out}' is a file; expected a folder")
    if not force and target.is_dir() and any(target.iterdir()):
        raise ExportError(f"--out '{out}' is not empty; expected a new or empty folder, or --force to replace what it "
                          "holds")
    return target


@contextmanager
def _staged(target: Path):
    """A hidden folder on `target`'s file system to write into: beside a new `target`, renamed to it at the end;
    inside an existing one (a mount point or the working directory cannot be renamed), whose entries it replaces
    only once the export is whole. On an error it is removed, with any parent folders made for it."""
    new = not target.exists()
    made = next((p for p in reversed(target.parents) if not p.exists()), None)  # the first parent to be made
    tmp = target.with_name(f".{target.name}.export-{os.getpid()}") if new else target / f".export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export of this process id
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    if new:
        os.replace(tmp, target)
        return
    for entry in target.iterdir():  # what --force let it replace (links are removed, never followed)
        if entry == tmp:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in tmp.iterdir():
        os.replace(entry, target / entry.name)
    tmp.rmdir()


def _write_safetensors(run_dir: Path, objective: nn.Module, quantize: str | None, out: Path) -> None:
    if quantize is None:
        save_model(objective, str(out / "model.safetensors"))  # backbone and heads, keyed as in selfsup
    else:  # selfsup opens it (eval, embed) as it opens a run directory
        state = quantized_state(objective, quantize)
        save_file(state, out / "model.safetensors")
        layers = sum(k.endswith(".weight_int8") for k in state)
        (out / MARKER).write_text(json.dumps({"mode": quantize, "layers": layers}))
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    if (run_dir / "tokenizer.json").is_file():  # text runs, and the text tower of clip / siglip runs
        shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")


def _hf_model(run_dir: Path, cfg: RunConfig, objective: nn.Module) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, config.json, the processor's files) of the transformers model this run maps onto: the first of
    HF_FAMILIES it fits."""
    whys = []
    for family in HF_FAMILIES:
        why = family.unfit(cfg)
        if why is None:
            if family in PROCESSORS:
                _closed_captions(run_dir, "hf", family.ARCHITECTURE)
            specials = _special_ids(run_dir)
            return *family.to_hf(cfg, objective, specials), (
                family.processor_files(cfg, specials) if family in PROCESSORS else {})
        if {cfg.objective, *cfg.parts} & set(family.OBJECTIVES):  # the families of this objective say what they need
            whys.append(f"{family.ARCHITECTURE} needs {why}")
    m = cfg.model
    if not whys:
        raise ExportError(f"--format hf: no transformers class holds a run of objective {cfg.objective}; use "
                          "--format safetensors")
    raise ExportError(f"--format hf: this run (objective={cfg.objective}, model.mlp={m.mlp}, model.norm={m.norm}) "
                      f"maps onto none of: {'; '.join(whys)}; use --format safetensors")


def _open_clip_model(run_dir: Path, cfg: RunConfig, objective: nn.Module, target: Path) -> tuple[dict, dict]:
    """(state dict, open_clip_config.json) of a clip run in open_clip's layout (models/hf/open_clip.py)."""
    why = open_clip.unfit(cfg, objective.model.blocks[0].mlp.down.in_features, objective.text.hidden)
    if why is not None:
        raise ExportError(f"--format open_clip: this run (objective={cfg.objective}) does not map onto open_clip's "
                          f"CLIP, which needs {why}; use --format safetensors")
    _closed_captions(run_dir, "open_clip", "open_clip's CLIP")
    return open_clip.to_open_clip(cfg, objective, _special_ids(run_dir)[EOS], str(target))


def _write_open_clip(run_dir: Path, cfg: RunConfig, weights: dict[str, torch.Tensor], config: dict,
                     out: Path) -> None:
    """The state dict as safetensors (open_clip's pickled .bin is not written), its config, and the run's tokenizer
    with the tokenizer_config.json that transformers' AutoTokenizer (open_clip's HFTokenizer) reads."""
    save_file(weights, out / "open_clip_model.safetensors", metadata={"format": "pt"})
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS,
        "model_max_length": cfg.text.context}, indent=1))


def _closed_captions(run_dir: Path, fmt: str, architecture: str) -> None:
    """CLIPModel and SiglipModel read a caption up to its end-of-text token: the run's tokenizer must close every
    caption with it (data/read/captions.py), as a model's own does and the BPE a run trains for text.pooling=last."""
    if not closes(load_tokenizer(run_dir / "tokenizer.json", "the run's tokenizer")):
        raise ExportError(f"--format {fmt}: {architecture} pools the text at the end-of-text token, but this run's "
                          f"tokenizer.json does not close captions with {EOS} (a run whose BPE was trained before "
                          "selfsup closed captions for text.pooling=last); expected a run trained with this version, "
                          "or with data.tokenizer a model's tokenizer.json")


def _write_hf(run_dir: Path, cfg: RunConfig, weights: dict[str, torch.Tensor], config: dict, processor: dict,
              out: Path) -> None:
    """processor: a family's own files (name -> JSON), replacing the default tokenizer_config.json."""
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if cfg.is_image:  # no tokenizer: AutoImageProcessor prepares a picture as our evaluation does
        (out / "preprocessor_config.json").write_text(json.dumps(_image_processor(cfg), indent=1))
        return
    if cfg.modality == "audio":  # no tokenizer: AutoFeatureExtractor prepares a waveform as our view does
        (out / "preprocessor_config.json").write_text(json.dumps(hubert.feature_extractor(cfg), indent=1))
        return
    write_tokenizer(run_dir, cfg, out)
    files = {"tokenizer_config.json": _tokenizer_config(cfg)} | processor
    if cfg.objective == "clm":  # generate() stops at our end-of-text token and pads with ours
        ids = {k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        files["generation_config.json"] = ids | {"max_length": cfg.model.context}
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=1))


def write_tokenizer(run_dir: Path, cfg: RunConfig, out: Path) -> None:
    """The run's tokenizer.json with the post-processor that makes transformers' default encoding (special tokens
    added) give the ids training fed the model: EOS + text (`opening_eos`), as documents were packed and `selfsup
    embed` reads; the captions of a media-text run whose tokenizer has a post-processor of its own (a CLIP or SigLIP
    from model.init) were made with that one (data/read/captions.py), which stays."""
    tok = load_tokenizer(run_dir / "tokenizer.json", "the run's tokenizer")
    (tok if cfg.pairs and tok.post_processor is not None else opening_eos(tok)).save(str(out / "tokenizer.json"))


def _tokenizer_config(cfg: RunConfig) -> dict:
    context = cfg.text.context if cfg.pairs else cfg.model.context
    return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS, "pad_token": PAD,
            "mask_token": MASK, "model_max_length": context, "add_prefix_space": False}


def _image_processor(cfg: RunConfig) -> dict:
    """BitImageProcessor settings that give the input our evaluation gives (data/read/image.py decoding, then
    views/augment.center_view): the shorter side resized to image.size by Pillow's bicubic, the centre square, / 255,
    the run's mean and std. The same tensor for a square picture, or wherever both crops fall on whole pixels; else
    theirs resizes the whole picture (the long side rounded down) and crops whole pixels, ours resizes the exact
    centre square, so the two squares can sit about a pixel apart. A large JPEG is decoded here at reduced scale.
    A grayscale run's processor takes grayscale (mode L) pictures: transformers' processors convert only to RGB."""
    size = cfg.image.size
    return {"image_processor_type": "BitImageProcessor", "do_convert_rgb": cfg.image.channels == 3,
            "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,  # PIL.Image.Resampling.BICUBIC
            "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": cfg.image.mean, "image_std": cfg.image.std}


def _special_ids(run_dir: Path) -> dict[str, int]:
    if not (run_dir / "tokenizer.json").is_file():  # image runs
        return {}
    tok = json.loads((run_dir / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
