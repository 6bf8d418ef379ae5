"""The model card every export writes as README.md: the YAML metadata the Hugging Face Hub reads (library, license,
tags, datasets, base model), how the model was trained (recipe, steps, data seen, compute and energy, from
summary.json), its evaluations with their protocols (RUN_DIR/eval/*.json), how features are pooled, and a usage
snippet that loads the export as it was written.

    text = model_card(run_dir, cfg, fmt, folder, license="apache-2.0", datasets=["ORG/NAME"], name="ORG/NAME")
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from selfsup.config import RunConfig

PLACEHOLDER = "path/to/export"  # the snippet's model path when the export has no Hub name (tests put theirs here)


def model_card(run_dir: Path, cfg: RunConfig, fmt: str, folder: Path, license: str | None, datasets: list[str],
               name: str | None) -> str:
    """README.md for the export written in `folder` (its config.json says which transformers class loads it)."""
    architecture = _architecture(folder)
    meta = {"library_name": {"hf": "transformers", "onnx": "onnx", "open_clip": "open_clip"}.get(fmt, "selfsup"),
            "license": license,
            "tags": ["selfsup", "self-supervised", cfg.objective] + ([cfg.recipe] if cfg.recipe else []),
            "datasets": datasets or None, "base_model": _base_model(cfg), "pipeline_tag": _pipeline(cfg)}
    meta = {k: v for k, v in meta.items() if v}
    title = name or run_dir.name
    parts = [f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n", f"# {title}\n",
             f"A {_what(cfg)} pretrained with [selfsup](https://github.com/selfsup/selfsup) "
             f"(objective `{cfg.objective}`{f', recipe `{cfg.recipe}`' if cfg.recipe else ''})"
             + (f", exported as transformers' `{architecture}`" if architecture else "") + ".\n",
             "## Use\n", _usage(cfg, fmt, architecture, name or PLACEHOLDER),
             "## Training\n", _training(run_dir, cfg), "## Evaluation\n", _evaluations(run_dir)]
    return "\n".join(parts)


def _architecture(folder: Path) -> str | None:
    try:
        return (json.loads((folder / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def _base_model(cfg: RunConfig) -> str | None:
    """The Hub id a run started from (model.init=hf:ORG/NAME[@REV]); a local folder is no Hub id."""
    init = cfg.model.init or ""
    return init[3:].split("@")[0] if init.startswith("hf:") else None


def _pipeline(cfg: RunConfig) -> str:
    if cfg.objective == "clm":
        return "text-generation"
    if cfg.pairs:
        return "zero-shot-image-classification" if cfg.modality == "image" else "feature-extraction"
    return "image-feature-extraction" if cfg.modality in ("image", "video") else "feature-extraction"


def _what(cfg: RunConfig) -> str:
    if cfg.objective == "clm":
        return "causal language model"
    if cfg.pairs:
        return f"{cfg.modality}-text dual encoder"
    return f"{cfg.modality} encoder"


def _pooling(cfg: RunConfig) -> str:
    """How `selfsup embed` pools the trunk's hidden states into one vector, in words."""
    if cfg.modality == "image" and cfg.model.backbone != "vit":
        return "the mean over the last feature map (ResNetModel's pooler_output, flattened)"
    if cfg.modality == "audio":  # models/audio.py pools every clip so
        return "the mean over the tokens of real audio"
    first = {"image": "the class token", "text": "the first token (the end-of-text token that opens every "
                                                "document)"}.get(cfg.modality, "the first token")
    if cfg.model.pooling == "cls":
        return first
    if cfg.modality == "text":  # probe/inputs.py: the EOS that opens each text counts, padding does not
        return "the mean over the real tokens, the opening end-of-text token included"
    return "the mean over real tokens (patches, for images)"


def _usage(cfg: RunConfig, fmt: str, architecture: str | None, path: str) -> str:
    """A snippet that loads the export and computes what it is for; tests run it with `path` replaced."""
    if fmt == "open_clip":
        code = (f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{path}")\n'
                f'tokenizer = open_clip.get_tokenizer("local-dir:{path}")\n'
                'text = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)')
        return f"```python\nimport open_clip\n\n{code}\n```\n"
    if fmt == "onnx":
        return _onnx_usage(cfg, path)
    if fmt != "hf":
        return ("Weights and config for selfsup itself (`selfsup eval` and `selfsup embed` open this folder as they "
                f"open a run directory):\n\n```bash\nselfsup embed {path} inputs --out embeddings.npy\n```\n")
    if cfg.objective == "clm":
        code = (f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
                f'model = AutoModelForCausalLM.from_pretrained("{path}")\n'
                'ids = tokenizer("def ", return_tensors="pt").input_ids\n'
                "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))")
        return f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n{code}\n```\n"
    if cfg.modality == "text" and not cfg.pairs:
        pool = ("hidden[:, 0]" if cfg.model.pooling == "cls" else
                '(hidden * mask).sum(1) / mask.sum(1)')
        # BERT's dense+tanh pooler is not ours (AutoModel would build one, at random, for a BertForMaskedLM export)
        pooler = ", add_pooling_layer=False" if architecture in ("BertModel", "BertForMaskedLM") else ""
        code = (f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
                f'model = AutoModel.from_pretrained("{path}"{pooler}).eval()\n'
                'batch = tokenizer(["A first text.", "Another one, longer than the first."], padding=True, '
                'truncation=True, return_tensors="pt")  # EOS + text, cut at the training context\n'
                "with torch.no_grad():\n"
                "    hidden = model(**batch).last_hidden_state  # (B, T, D)\n"
                'mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)\n'
                f"embeddings = {pool}  # {_pooling(cfg)}")
        return (f"```python\nimport torch\nfrom transformers import AutoModel, AutoTokenizer\n\n{code}\n```\n\n"
                f"`embeddings` are what `selfsup embed` writes for these texts (model.pooling={cfg.model.pooling}).\n")
    if cfg.modality == "image" and not cfg.pairs and cfg.model.backbone == "vit":
        pooler = ", add_pooling_layer=False" if architecture == "ViTModel" else ""  # its dense+tanh pooler is not ours
        mode = "RGB" if cfg.image.channels == 3 else "L"
        code = (f'processor = AutoImageProcessor.from_pretrained("{path}")  # resize, centre crop, normalise\n'
                f'model = AutoModel.from_pretrained("{path}"{pooler}).eval()\n'
                f'images = [Image.new("{mode}", (64, 48), "white"), Image.new("{mode}", (40, 40), "gray")]\n'
                "with torch.no_grad():\n"
                '    hidden = model(**processor(images, return_tensors="pt")).last_hidden_state  # (B, 1 + T, D)\n'
                f"embeddings = {'hidden[:, 0]' if cfg.model.pooling == 'cls' else 'hidden[:, 1:].mean(1)'}  "
                f"# {_pooling(cfg)}")
        return ("```python\nimport torch\nfrom PIL import Image\nfrom transformers import AutoImageProcessor, "
                f"AutoModel\n\n{code}\n```\n")
    if cfg.modality == "audio" and not cfg.pairs:
        code = (f'extractor = AutoFeatureExtractor.from_pretrained("{path}")\n'
                f'model = AutoModel.from_pretrained("{path}").eval()\n'
                "rate = extractor.sampling_rate\n"
                "clips = [np.sin(np.arange(rate) * 0.05), np.sin(np.arange(rate // 2) * 0.2)]  # mono samples\n"
                'batch = extractor(clips, sampling_rate=rate, padding=True, return_tensors="pt")\n'
                "with torch.no_grad():\n"
                "    hidden = model(**batch).last_hidden_state  # (B, T, D)\n"
                'real = model._get_feature_vector_attention_mask(hidden.shape[1], batch["attention_mask"])\n'
                "mask = real.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)\n"
                f"embeddings = (hidden * mask).sum(1) / mask.sum(1)  # {_pooling(cfg)}")
        return ("```python\nimport numpy as np\nimport torch\nfrom transformers import AutoFeatureExtractor, "
                f"AutoModel\n\n{code}\n```\n")
    return (f"Load it with `AutoModel.from_pretrained(\"{path}\")` (transformers' `{architecture}`); features are "
            f"{_pooling(cfg)}, as `selfsup embed` computes them.\n")


def _training(run_dir: Path, cfg: RunConfig) -> str:
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        s = {}
    unit = s.get("unit", "item")
    rows = [("recipe", cfg.recipe or "-"), ("objective", cfg.objective),
            ("model", f"dim {cfg.model.dim}, depth {cfg.model.depth}, heads {cfg.model.heads}"),
            ("started from", cfg.model.init or cfg.continual.parent or "random initialisation"),
            ("data", cfg.data.path)]
    if s:
        cost = s.get("cost") or {}
        rows += [("steps", f"{s.get('steps', '-'):,}"), (f"{unit}s seen", f"{s.get(f'{unit}s_seen', 0):,}"),
                 ("global batch", str((s.get("batch") or {}).get("global_batch", "-"))),
                 ("precision, device", f"{s.get('precision')}, {s.get('device')}"),
                 ("wall time", f"{s.get('wall_time_s', 0) / 3600:.2f} h"),
                 ("training compute", f"{cost.get('total_flops', 0):.3g} FLOPs"),
                 ("energy", f"{cost.get('energy_kwh', 0):.3g} kWh ({cost.get('power_source', 'power assumed')})")]
        if s.get("val_loss") is not None:
            rows.append(("validation loss", f"{s['val_loss']:.4f}"
                         + (f" (perplexity {s['val_ppl']:.2f})" if s.get("val_ppl") else "")))
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _evaluations(run_dir: Path) -> str:
    """A line per RUN_DIR/eval/*.json: the headline figure of the model and of each baseline beside it, and the
    protocol as `selfsup eval` stated it."""
    from selfsup.eval.compare import headline

    lines = []
    for f in sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []:
        try:
            r = json.loads(f.read_text())
        except ValueError:
            continue
        figures = [(m, headline(r, m)) for m in ("pretrained", "random", "pixels")]
        shown = ", ".join(f"{m} {h}" for m, h in figures if h) or f"see eval/{f.name}"
        protocol = r.get("protocol", "as selfsup eval states it")
        lines.append(f"- **{f.stem}**: {shown}. Protocol: {protocol}")
    return "\n".join(lines) + "\n" if lines else "No evaluation was run (`selfsup eval RUN_DIR --task ...`).\n"


def _onnx_usage(cfg: RunConfig, path: str) -> str:
    """onnxruntime on the text graph (a text run's, or a media-text run's text tower), fed as onnx.json says."""
    about = ("Graphs for onnxruntime; `onnx.json` gives each graph's inputs (named axes are dynamic), outputs, "
             "pooling and how to prepare its inputs (image size, mean and std; audio's log-mel settings).\n")
    if cfg.modality != "text" and not cfg.pairs:
        return about
    graph, output = ("text.onnx", "embeddings") if cfg.pairs else ("model.onnx", "features")
    context = cfg.text.context if cfg.pairs else cfg.model.context
    code = (f'tokenizer = Tokenizer.from_file("{path}/tokenizer.json")  # opens each text with <|endoftext|>\n'
            'pad = tokenizer.token_to_id("<|pad|>")\n'
            'tokenizer.enable_padding(pad_id=pad if pad is not None else tokenizer.token_to_id("<|endoftext|>"))\n'
            f"tokenizer.enable_truncation({context})\n"
            'batch = tokenizer.encode_batch(["A first text.", "Another one, longer than the first."])\n'
            'feeds = {"input_ids": np.array([e.ids for e in batch], dtype=np.int64),\n'
            '         "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64)}\n'
            f'session = onnxruntime.InferenceSession("{path}/{graph}")\n'
            f'embeddings = session.run(["{output}"], feeds)[0]  # (B, D): '
            + ("unit vectors in the joint space" if cfg.pairs else "mean over real tokens" if cfg.objective == "clm"
               else _pooling(cfg)))
    imports = "import numpy as np\nimport onnxruntime\nfrom tokenizers import Tokenizer"
    return f"{about}\n```python\n{imports}\n\n{code}\n```\n"

