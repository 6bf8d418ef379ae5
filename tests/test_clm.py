import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ModelConfig
from selfsup.data.read.tokenizer import IGNORE
from selfsup.models.gpt import GPT
from selfsup.objectives.clm import CausalLM
from selfsup.train.step import accumulate

EOS = 0


def objective(doc_mask=True):
    torch.manual_seed(0)
    return CausalLM(GPT(ModelConfig(dim=32, depth=2, heads=2, context=16, vocab_size=300)), EOS, doc_mask)


def test_loss_is_next_token_cross_entropy_summed_in_fp32():
    obj = objective(doc_mask=False)
    tokens = torch.randint(1, 300, (3, 17))
    out = obj({"tokens": tokens})
    logits = obj.model.logits(obj.model(tokens[:, :-1]))  # the plain head, then the plain loss
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="sum")
    assert out.count == 3 * 16 and out.units == 3 * 16
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, expected)


def test_shift_happens_exactly_once():
    """A model that copies its input as its prediction scores perfectly only if targets are inputs shifted by one."""
    obj = objective(doc_mask=False)
    tokens = torch.arange(1, 18).repeat(2, 1)  # target t+1 = input t + 1

    class Oracle(torch.nn.Module):
        out_weight = torch.eye(320)  # logits = hidden @ I

        def forward(self, idx, doc_ids=None):
            return F.one_hot(idx + 1, 320).float() * 100

    obj.model = Oracle()
    assert obj({"tokens": tokens}).loss.item() < 1e-6


def test_bf16_autocast_loss_is_fp32():
    obj = objective()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj({"tokens": torch.randint(1, 300, (2, 17))})
    assert out.loss.dtype == torch.float32


def test_eos_opens_a_document():
    """With doc_mask, tokens after an EOS never see tokens before it."""
    obj = objective().eval()
    a = torch.randint(1, 300, (1, 17))
    a[0, 6] = EOS
    b = a.clone()
    b[0, :6] = torch.randint(1, 300, (6,))
    logits = {}
    for name, t in (("a", a), ("b", b)):
        doc_ids = torch.cumsum(t[:, :-1] == EOS, dim=1)
        logits[name] = obj.model(t[:, :-1], doc_ids)
    assert torch.allclose(logits["a"][0, 6:], logits["b"][0, 6:], atol=1e-6)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_grad_accum_divides_by_tokens_of_the_whole_step():
    """grad_accum=4 × batch 8 equals grad_accum=1 × batch 32, also when micro-batches hold different numbers of
    valid tokens (dividing each micro-batch by its own count would weight them wrongly)."""
    torch.manual_seed(1)
    tokens = torch.randint(1, 300, (32, 17))
    labels = tokens.clone()
    for k, valid in enumerate([16, 12, 8, 4]):  # valid targets per row of micro-batch k
        labels[8 * k:8 * k + 8, 1 + valid:] = IGNORE
    one, four = objective(), objective()
    four.load_state_dict(one.state_dict())
    loss1, tok1, _ = accumulate(one, [{"tokens": tokens, "labels": labels}], torch.device("cpu"), "fp32")
    micro = [{"tokens": tokens[i:i + 8], "labels": labels[i:i + 8]} for i in range(0, 32, 8)]
    loss4, tok4, _ = accumulate(four, micro, torch.device("cpu"), "fp32")
    assert tok1 == tok4 == 32 * 16
    assert loss1 == pytest.approx(loss4, rel=1e-6)
    for g1, g4 in zip(_grads(one), _grads(four)):
        assert torch.allclose(g1, g4, atol=1e-7, rtol=1e-5)
    # the per-micro-batch mean (the common bug) gives different gradients here
    wrong = objective()
    for b in micro:
        out = wrong(b)
        (out.loss / out.count / 4).backward()
    assert not all(torch.allclose(g1, gw, atol=1e-7, rtol=1e-5) for g1, gw in zip(_grads(one), _grads(wrong)))


def test_linear_cross_entropy_equals_the_plain_loss_and_gradients():
    from selfsup.objectives.losses import linear_cross_entropy, token_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(70, 16, requires_grad=True)
    y = torch.randint(0, 70, (50,))
    y[::7] = IGNORE
    plain, n_plain = token_cross_entropy(h @ w.t(), y)
    plain.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    fused, n_fused = linear_cross_entropy(h, w, y, chunk=16)  # chunks that do not divide N
    (fused * 3).backward()  # the upstream gradient scales both
    assert n_plain == n_fused == 50 - 8
    assert torch.allclose(fused, plain, rtol=1e-6)
    assert torch.allclose(h.grad, 3 * gh, atol=1e-5) and torch.allclose(w.grad, 3 * gw, atol=1e-5)


def test_linear_cross_entropy_under_bf16_autocast_is_close():
    from selfsup.objectives.losses import linear_cross_entropy, token_cross_entropy

    torch.manual_seed(0)
    h, w, y = torch.randn(64, 32), torch.randn(100, 32) * 0.1, torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = linear_cross_entropy(h, w, y)
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, token_cross_entropy(h @ w.t(), y)[0], rtol=2e-2)
