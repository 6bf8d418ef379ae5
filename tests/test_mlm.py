import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.data.read.tokenizer import EOS, IGNORE, MASK, PAD, train_bpe
from selfsup.models.encoder import Encoder
from selfsup.objectives.mlm import MaskedLM
from selfsup.seed import seed_everything
from selfsup.views.masking import MaskingTable, mask_tokens
from tests.conftest import docstrings


@pytest.fixture(scope="module")
def tok():
    import argparse, json, pathlib

    return train_bpe(docstrings(argparse, json, pathlib), 400)


@pytest.fixture(scope="module")
def table(tok):
    return MaskingTable(tok, 448)


def _batch(tok, n=64, T=64):
    eos, pad = tok.token_to_id(EOS), tok.token_to_id(PAD)
    ids = tok.encode(" ".join(["Return the number of items in the given container, or raise an error."] * 40)).ids
    rows = torch.tensor([ids[i:i + T] for i in range(n)])
    rows[:, 0] = eos
    rows[:, 30] = eos
    rows[::2, -8:] = pad
    return rows, rows != pad


def test_80_10_10_split_and_specials_untouched(tok, table):
    seed_everything(0)
    tokens, pad_mask = _batch(tok)
    counts = torch.zeros(4)
    chosen_share = []
    for _ in range(40):
        inputs, labels = mask_tokens(tokens, table, 0.15, pad_mask=pad_mask)
        chosen = labels != IGNORE
        special = table.special[tokens]
        assert not chosen[special].any() and not chosen[~pad_mask].any()  # never specials, never padding
        assert (inputs[special] == tokens[special]).all() and (inputs[~chosen] == tokens[~chosen]).all()
        assert (labels[chosen] == tokens[chosen]).all()
        assert not table.special[inputs[chosen & (inputs != table.mask_id)]].any()  # replacements are ordinary
        chosen_share.append(chosen.sum() / (~special & pad_mask).sum())
        masked = inputs[chosen] == table.mask_id
        same = inputs[chosen] == tokens[chosen]
        counts += torch.tensor([masked.sum(), (~masked & ~same).sum(), (same & ~masked).sum(), chosen.sum()])
    assert sum(chosen_share) / len(chosen_share) == pytest.approx(0.15, abs=0.01)
    mask, rand, keep, total = counts.tolist()
    assert mask / total == pytest.approx(0.8, abs=0.02)
    assert rand / total == pytest.approx(0.1, abs=0.02)  # a random token may equal the original: counted as kept
    assert keep / total == pytest.approx(0.1, abs=0.02)


def test_masking_is_new_every_batch(tok, table):
    tokens, _ = _batch(tok)
    assert not torch.equal(mask_tokens(tokens, table)[1], mask_tokens(tokens, table)[1])


def test_table_knows_the_specials(tok, table):
    for name in (EOS, PAD, MASK):
        assert table.special[tok.token_to_id(name)]
    assert table.special[tok.get_vocab_size():].all()  # padded embedding rows are never drawn
    assert table.mask_id == tok.token_to_id(MASK)


def test_whole_word_masking_takes_words_whole(tok, table):
    seed_everything(1)
    tokens, pad_mask = _batch(tok)
    word_start = table.word_start[tokens] | table.special[tokens]
    word_start[:, 1:] |= table.special[tokens[:, :-1]]
    for _ in range(10):
        _, labels = mask_tokens(tokens, table, 0.15, whole_word=True, pad_mask=pad_mask)
        chosen = labels != IGNORE
        # a continuation token is chosen exactly when the token before it (same word) is
        cont = ~word_start[:, 1:] & pad_mask[:, 1:]
        assert torch.equal(chosen[:, 1:][cont], chosen[:, :-1][cont])
    assert chosen.any()


def test_loss_counts_only_the_chosen_tokens(tok, table):
    seed_everything(0)
    enc = Encoder(ModelConfig(dim=32, depth=2, heads=2, context=64, vocab_size=400, norm="layernorm", mlp="geglu"))
    obj = MaskedLM(enc, table, tok.token_to_id(EOS))
    tokens, pad_mask = _batch(tok, n=8)
    seed_everything(5)
    out = obj({"tokens": tokens, "pad_mask": pad_mask})
    seed_everything(5)
    _, labels = mask_tokens(tokens, table, 0.15, pad_mask=pad_mask)
    assert out.count == (labels != IGNORE).sum() and out.units == tokens.numel()
    assert 0.5 * torch.log(torch.tensor(448.0)) < out.loss / out.count < 2 * torch.log(torch.tensor(448.0))
    out.loss.backward()
    assert obj.head.bias.grad.abs().sum() > 0 and enc.embed.weight.grad.abs().sum() > 0
