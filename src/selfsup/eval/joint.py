"""Zero-shot classification and cross-modal retrieval in the joint embedding space of a CLIP/SigLIP run (image,
audio or video with text). Media go through the same evaluation inputs as kNN and linear probes (probe/inputs.py);
texts through the run's tokenizer, as captions were in training.

Zero-shot (CLIP §3.1.4): each class name fills every prompt template; the unit embeddings of a class's prompts
are averaged and re-normalised into one classifier row; an item's prediction is the class of highest cosine.

Retrieval: identical captions are one text (generated or repeated captions are common), paired with every item
that carries it. Media→text: a hit at k when the item's caption is among the k nearest texts; text→media: when
one of the k nearest items carries that caption. Recall@1/5/10 in both directions, and their mean.

`joint_task` is `selfsup eval --task zeroshot|retrieval` on a run: its test data read, and the run beside a random
init of the same shape when asked.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from selfsup.config import ConfigError, RunConfig
from selfsup.data.labeled import Clips
from selfsup.data.read.captions import caption_arrays
from selfsup.eval.baseline import random_objective
from selfsup.eval.labeled import labeled_set
from selfsup.probe.inputs import encode, run_inputs
from selfsup.probe.metrics import accuracy, macro_f1

TEMPLATES = {
    "image": ("a photo of a {label}.", "a picture of a {label}.", "an image of the {label}.", "a {label}."),
    "audio": ("the sound of {label}.", "a recording of {label}.", "{label}."),
    "video": ("a video of {label}.", "a clip of {label}.", "{label}."),
}
KS = (1, 5, 10)


class JointMedia(nn.Module):
    """The media tower followed by its projection: (view outputs) -> (B, E) unit vectors."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective
        self.out_dim = objective.text_proj.out_features  # the joint width (a media tower without projection has it)
        self.train(objective.training)  # encode() restores this flag: it must be the objective's

    def forward(self, *args) -> Tensor:
        return self.objective.project_media(self.objective.model(*args))


@torch.no_grad()
def embed_texts(objective: nn.Module, tok: Tokenizer, texts: list[str], context: int, batch_size: int,
                device: torch.device) -> Tensor:
    """(N, E) unit vectors of texts on the CPU, row i for texts[i]."""
    objective.eval()
    ids, mask = caption_arrays(tok, texts, context)
    out = [objective.embed_text(torch.from_numpy(ids[s:s + batch_size]).to(device),
                                torch.from_numpy(mask[s:s + batch_size]).to(device)).float().cpu()
           for s in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0, objective.text_proj.out_features)


def class_embeddings(objective: nn.Module, tok: Tokenizer, classes: list[str], templates: list[str], context: int,
                     batch_size: int, device: torch.device) -> Tensor:
    """(K, E): per class, the re-normalised mean of its prompts' unit embeddings."""
    prompts = [t.format(label=c) for c in classes for t in templates]
    e = embed_texts(objective, tok, prompts, context, batch_size, device).view(len(classes), len(templates), -1)
    return torch.nn.functional.normalize(e.mean(dim=1), dim=-1)


def zeroshot(objective: nn.Module, tok: Tokenizer, inputs, items, labels: Tensor, classes: list[str],
             templates: list[str], context: int, batch_size: int, device: torch.device, progress=None) -> dict:
    media = encode(JointMedia(objective), inputs, items, batch_size, device, progress)  # (N, E)
    weights = class_embeddings(objective, tok, classes, templates, context, batch_size, device)  # (K, E)
    scores = media @ weights.t()  # (N, K)
    pred = scores.argmax(dim=1)
    k5 = min(5, len(classes))
    top5 = (scores.topk(k5, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()
    return dict(accuracy=accuracy(pred, labels), top5=top5, top5_k=k5, macro_f1=macro_f1(pred, labels, len(classes)),
                chance=1 / len(classes),
                protocol=(f"zero-shot: cosine between the item's joint embedding and each class's mean of "
                          f"{len(templates)} prompt embeddings ({' | '.join(templates)}); "
                          f"{inputs.describe(objective.model)}"))


def retrieval(objective: nn.Module, tok: Tokenizer, inputs, items, captions: list[str], context: int,
              batch_size: int, device: torch.device, progress=None) -> dict:
    media = encode(JointMedia(objective), inputs, items, batch_size, device, progress)  # (N, E)
    texts = sorted(set(captions))
    index = {t: i for i, t in enumerate(texts)}
    own = torch.tensor([index[c] for c in captions])  # (N,) each item's caption
    text = embed_texts(objective, tok, texts, context, batch_size, device)  # (U, E)
    sims = media @ text.t()  # (N, U)
    # media -> text: the rank of the item's own caption among all U texts
    own_score = sims.gather(1, own[:, None])  # (N, 1)
    m2t_rank = (sims > own_score).sum(dim=1)  # (N,)
    # text -> media: the rank of the best-scoring item that carries the text
    carried = own[:, None] == torch.arange(len(texts))[None, :]  # (N, U)
    best = sims.masked_fill(~carried, float("-inf")).max(dim=0).values  # (U,)
    t2m_rank = (sims > best[None, :]).sum(dim=0)  # (U,)
    m2t = {k: (m2t_rank < k).float().mean().item() for k in KS}
    t2m = {k: (t2m_rank < k).float().mean().item() for k in KS}
    mean = float(np.mean(list(m2t.values()) + list(t2m.values())))
    return dict(media_to_text=m2t, text_to_media=t2m, mean_recall=mean, items=len(captions), texts=len(texts),
                protocol=(f"retrieval over {len(captions)} items and {len(texts)} distinct captions (identical "
                          "captions are one text, paired with every item carrying it); cosine in the joint space; "
                          f"{inputs.describe(objective.model)}"))


def joint_task(task: str, run_dir, cfg: RunConfig, objective: nn.Module, tok: Tokenizer, test_path: str,
               templates: list[str], baselines: list[str], device: torch.device, batch_size: int,
               progress=None) -> dict:
    """zeroshot / retrieval in the joint space of the run (and of a random init): the result written to
    RUN_DIR/eval/<task>.json. `progress(iterable, what)` wraps each model's encoding."""
    from selfsup.data.cache.media import prepare_media, settings

    models = {"pretrained": objective}
    if "random" in baselines:
        models["random"] = random_objective(cfg, tok, device)
    context = cfg.text.context
    wrap = (lambda name: (lambda it: progress(it, f"encoding ({name})"))) if progress else (lambda name: None)
    results = {}
    if task == "zeroshot":
        test_set, inputs = labeled_set(cfg, objective, tok, test_path)
        for name, model in models.items():
            results[name] = zeroshot(model, tok, inputs, test_set.items, test_set.labels, test_set.classes,
                                     templates, context, batch_size, device, progress=wrap(name))
        data = dict(test=test_set.counts(), skipped=test_set.skipped)
    else:
        media = prepare_media(test_path, cfg.modality, settings(cfg.modality, cfg), 0.0, cfg.data.cache_dir,
                              log=lambda s: None, captions=True, allow_outside=cfg.data.allow_outside,
                              image_field=cfg.data.image_field, caption_field=cfg.data.caption_field)
        split = media.train
        if split.captions is None:
            raise ConfigError(f"--test '{test_path}' has no captions; retrieval needs pairs (a .jsonl "
                              f"with '{cfg.modality}' and 'text', or .tar shards with .txt)")
        inputs = run_inputs(cfg, objective, tok)
        items = split.rows if cfg.modality == "image" else Clips(split.rows, split.lengths)
        for name, model in models.items():
            results[name] = retrieval(model, tok, inputs, items, split.captions, context, batch_size, device,
                                      progress=wrap(name))
        data = dict(test=dict(path=test_path, items=len(split.captions)), skipped=media.meta["skipped"])
    return dict(task=task, run_dir=str(run_dir), recipe=cfg.recipe, objective=cfg.objective,
                protocol=results["pretrained"]["protocol"], data=data, **results)
