"""Sampling text from a trained causal LM: temperature, then top-k, one token at a time."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from selfsup.data.read.tokenizer import eos_id


@torch.no_grad()
def generate(model, tok: Tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
             top_k: int | None = 50, seed: int | None = None) -> str:
    """The prompt followed by up to `max_new_tokens` sampled tokens; stops at EOS. The context window slides
    when the text outgrows model.context. temperature 0 means greedy."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device)
    if seed is not None:
        g.manual_seed(seed)
    eos = eos_id(tok)
    ids = [eos] + tok.encode(prompt, add_special_tokens=False).ids  # EOS opens a document, as in training
    vocab = tok.get_vocab_size()
    for _ in range(max_new_tokens):
        idx = torch.tensor([ids[-model.cfg.context:]], device=device)  # (1, T)
        logits = model.logits(model(idx)[0, -1])[:vocab].float()  # (V,) padded rows never sampled
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, vocab)).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g))
        if nxt == eos:
            break
        ids.append(nxt)
    return tok.decode(ids[1:])
