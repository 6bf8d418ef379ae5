import math
import os

import pytest
import torch
from rich.console import Console

from selfsup import config
from selfsup.config import ModelConfig
from selfsup.models.encoder import Encoder
from selfsup.seed import seed_everything
from selfsup.objectives.plm import (PermutationLM, factorisation_order, most_targets, permutation_masks,
                                    sample_spans, sample_targets)
from selfsup.train import trainer
from tests.conftest import TINY

EOS, PAD, MASK = 0, 1, 2
P = 1 / 6


def specials(vocab=320):
    s = torch.zeros(vocab, dtype=torch.bool)
    s[[EOS, PAD, MASK]] = True
    return s


def objective(context=16, doc_mask=True, max_span=5):
    seed_everything(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, context=context, vocab_size=300, mlp="geglu", norm="layernorm")
    return PermutationLM(Encoder(cfg), specials(), EOS, P, max_span, doc_mask)


def words(B=2, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (B, T), generator=g)


def target_logits(obj, tokens, order):
    """(B, M, V) logits of every query row, and the (B, M) positions of those rows."""
    _, hidden, rows, valid = obj.two_stream(tokens, order)
    return obj.head(hidden) @ obj.model.embed.weight.t() + obj.head.bias, rows, valid


# ------------------------------------------------------------------------------------------- no leaks


def fixed_order(T=16):
    """Targets at 3, 4, 9 and 12, predicted in the order 9, 3, 12, 4; every other token is context."""
    order = torch.full((1, T), -1)
    for rank, t in enumerate((9, 3, 12, 4)):
        order[0, t] = rank
    return order


def test_a_target_never_sees_its_own_token_nor_later_targets():
    obj = objective().eval()
    tokens, order = words(1), fixed_order()
    base, rows, valid = target_logits(obj, tokens, order)
    assert rows[0, :4].tolist() == [3, 4, 9, 12] and valid[0].tolist() == [True] * 4 + [False] * (rows.shape[1] - 4)
    row = {t: i for i, t in enumerate(rows[0, :4].tolist())}

    def logits_after(position, new_id):
        changed = tokens.clone()
        changed[0, position] = new_id
        return target_logits(obj, changed, order)[0]

    # its own token: the prediction does not move at all
    for t in (3, 4, 9, 12):
        after = logits_after(t, 7 if tokens[0, t] != 7 else 8)
        assert torch.equal(after[0, row[t]], base[0, row[t]]), t
    # target 4 comes last, so changing it moves nobody; 12 comes after 9 and 3, so they do not move
    after = logits_after(4, 7)
    assert torch.equal(after[0, :4], base[0, :4])
    after = logits_after(12, 7)
    assert torch.equal(after[0, [row[9], row[3]]], base[0, [row[9], row[3]]])
    assert not torch.allclose(after[0, row[4]], base[0, row[4]])  # ... but 4, after it, reads it
    # a context token moves every prediction
    after = logits_after(0, 7 if tokens[0, 0] != 7 else 8)
    for t in (3, 4, 9, 12):
        assert not torch.allclose(after[0, row[t]], base[0, row[t]]), t


def test_no_leak_through_the_drawn_targets_and_order():
    """The same through forward's own draw: re-seeding draws the same targets and order, and the loss of each
    target (the cross-entropy of its own label) is blind to that label's input token."""
    obj = objective().eval()
    tokens = words(2)

    def draw(t):
        seed_everything(5)
        targets = sample_targets(t, obj.special, obj.p, obj.max_span)
        order = factorisation_order(targets)
        return order, target_logits(obj, t, order)[0]

    order, base = draw(tokens)
    targets = order >= 0
    assert targets.any(dim=1).all()
    b, t = targets.nonzero()[0].tolist()  # one target
    changed = tokens.clone()
    changed[b, t] = 7 if tokens[b, t] != 7 else 8
    order2, after = draw(changed)
    assert torch.equal(order, order2)  # the draw does not depend on the (non-special) token values
    row = int((order[b] >= 0)[:t].sum())  # rows come in position order
    assert torch.equal(after[b, row], base[b, row])
    context = (~targets[b]).nonzero()[0, 0].item()
    changed = tokens.clone()
    changed[b, context] = 7 if tokens[b, context] != 7 else 8
    assert not torch.allclose(draw(changed)[1][b, row], base[b, row])


def test_content_stream_is_the_encoder_when_nothing_is_a_target():
    """With no targets the content mask is the document mask, so the content stream must be the encoder's own
    forward: the block arithmetic in two_stream matches Block's."""
    obj = objective().eval()
    tokens = words(2)
    tokens[:, 6] = EOS
    content = obj.two_stream(tokens, torch.full_like(tokens, -1))[0]
    expected = obj.model(tokens, obj.doc_ids(tokens))  # (B, T, D)
    assert torch.allclose(obj.model.norm(content), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ masks


def test_masks():
    seed_everything(0)
    tokens = words(3, 16)
    tokens[:, 5] = EOS
    tokens[1, 11] = EOS
    targets = sample_targets(tokens, specials(), P, 5)
    order = factorisation_order(targets)
    doc_ids = torch.cumsum(tokens == EOS, dim=1)
    content, query = permutation_masks(order, doc_ids)
    assert content.shape == query.shape == (3, 1, 16, 16) and content.dtype == torch.bool
    content, query = content[:, 0], query[:, 0]
    eye = torch.eye(16, dtype=torch.bool).expand(3, 16, 16)
    assert content[eye].all()  # every token's content sees itself
    assert not query[eye].any()  # no query sees its own token
    other_doc = doc_ids[:, :, None] != doc_ids[:, None, :]
    assert not content[other_doc].any() and not query[other_doc].any()
    same_doc = ~other_doc
    is_target = targets[:, None, :].expand(3, 16, 16)  # [b, i, j]: key j is a target
    # context tokens see all context of their document both ways, no target
    context_rows = (~targets)[:, :, None].expand(3, 16, 16)
    assert torch.equal(content[context_rows], (same_doc & ~is_target)[context_rows])
    # a target's query sees all context of its document and exactly the targets earlier in the order
    target_rows = targets[:, :, None].expand(3, 16, 16)
    earlier = order[:, None, :] < order[:, :, None]
    assert torch.equal(query[target_rows], (same_doc & (~is_target | earlier))[target_rows])
    assert torch.equal(content[target_rows], (query | eye)[target_rows])


def test_order_puts_targets_last_in_a_uniform_random_order():
    targets = torch.zeros(2000, 6, dtype=torch.bool)
    targets[:, [1, 2, 4]] = True
    order = factorisation_order(targets)
    assert (order[:, [0, 3, 5]] == -1).all() and (order[:, [1, 2, 4]] >= 0).all()
    firsts = order[:, [1, 2, 4]].argmin(dim=1).bincount(minlength=3).float() / 2000  # who is predicted first
    assert torch.allclose(firsts, torch.full((3,), 1 / 3), atol=0.05)


# ---------------------------------------------------------------------------------------------- sampling


def test_span_sampling_share_lengths_and_specials():
    seed_everything(0)
    tokens = torch.randint(3, 300, (64, 512))
    special_at = torch.rand(tokens.shape) < 0.05
    tokens[special_at] = torch.randint(0, 3, (int(special_at.sum()),))
    targets = sample_targets(tokens, specials(), P, 5)
    assert not targets[special_at].any()  # specials are never targets
    plain = sample_targets(torch.randint(3, 300, (64, 512)), specials(), P, 5)
    assert plain.float().mean().item() == pytest.approx(P, abs=0.01)
    start, end = sample_spans(64, 512, P, 5)
    lengths = (end - start)[end < 512]  # spans not cut by the end of the row
    assert lengths.min() == 1 and lengths.max() == 5
    assert torch.allclose(lengths.bincount()[1:].float() / len(lengths), torch.full((5,), 0.2), atol=0.02)
    assert (start[:, 1:] >= end[:, :-1]).all()  # in order and disjoint: each span in its own context
    assert plain.sum(dim=1).max() <= most_targets(512, P, 5)
    # pad positions are never targets either
    pad_mask = torch.ones(4, 64, dtype=torch.bool)
    pad_mask[:, 40:] = False
    assert not sample_targets(torch.randint(3, 300, (4, 64)), specials(), P, 5, pad_mask)[~pad_mask].any()
    # drawn anew every call
    assert not torch.equal(sample_targets(tokens, specials(), P, 5), targets)


def test_most_targets_is_an_exact_bound():
    assert most_targets(16, P, 5) == 6  # e.g. a span of 1 in [0, 6), then one of 5 at offset 0 of the next context
    assert most_targets(6, P, 1) == 1 and most_targets(7, P, 1) == 2
    seed_everything(0)
    drawn = sample_targets(torch.randint(3, 300, (20000, 16)), specials(), P, 5).sum(dim=1)
    assert drawn.max() <= 6


# ------------------------------------------------------------------------------------ construction, loss


def test_odd_context_is_a_clear_error():
    cfg = ModelConfig(dim=32, depth=2, heads=2, context=15, vocab_size=300)
    with pytest.raises(ValueError, match="even"):
        PermutationLM(Encoder(cfg), specials(), EOS)


def test_loss_count_gradients_and_training():
    obj = objective()
    tokens = words(4)
    tokens[:, 7] = EOS
    seed_everything(3)
    out = obj({"tokens": tokens})
    seed_everything(3)
    n_targets = sample_targets(tokens, obj.special, obj.p, obj.max_span).sum()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.count == n_targets > 0 and out.units == 4 * 16
    out.loss.backward()
    named = dict(obj.named_parameters())
    for name in ("query", "model.embed.weight", "model.blocks.0.attn.qkv.weight", "model.blocks.1.mlp.up.weight",
                 "model.blocks.1.attn.out.weight", "model.norm.weight", "head.dense.weight", "head.bias"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    # a few steps on one batch (fixed targets and order) lower its loss
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        seed_everything(3)
        out = obj({"tokens": tokens})
        opt.zero_grad()
        (out.loss / out.count).backward()
        opt.step()
        losses.append(out.loss.item() / out.count.item())
    assert losses[-1] < losses[0] - 0.5


def test_padding_and_a_fragment_of_targets_stay_finite():
    """A window's leading fragment can be all targets (no EOS opens it): its first target reads nothing and must
    not turn the loss into NaN; padding rows of the query stream neither."""
    obj = objective()
    tokens = words(1)
    tokens[0, 2] = EOS  # fragment [0, 2)
    order = torch.full_like(tokens, -1)
    order[0, 0], order[0, 1] = 1, 0
    _, hidden, rows, valid = obj.two_stream(tokens, order)
    assert torch.isfinite(hidden).all() and valid[0].tolist() == [True, True] + [False] * (rows.shape[1] - 2)
    # target 1 is first in the order and reads nothing; target 0 reads target 1 only
    changed = tokens.clone()
    changed[0, 5] = 7 if tokens[0, 5] != 7 else 8
    assert torch.equal(obj.two_stream(changed, order)[1][0, :2], hidden[0, :2])  # other document: no effect
    hidden.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in obj.parameters() if p.grad is not None)


def test_bf16_autocast_loss_is_fp32():
    obj = objective()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj({"tokens": words(2)})
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_flops_count_the_query_stream_on_its_rows_only():
    obj = objective(context=16)
    trunk = obj.model.flops_per_token()
    assert trunk < obj.flops_per_token() < 2 * trunk  # more than the encoder, less than running it twice


# --------------------------------------------------------------------------------------------- end to end


def test_trains_through_the_trainer(corpus, tmp_path):
    cfg = config.load("xlnet-plm", [f"data.path={corpus}", f"out_dir={tmp_path / 'run'}", *TINY,
                                    "train.max_steps=4"])
    assert cfg.objective == "plm" and cfg.model.norm == "layernorm" and cfg.model.mlp == "geglu"
    summary = trainer.train(cfg, Console(file=open(os.devnull, "w")))
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert math.isfinite(summary["val_loss"])
