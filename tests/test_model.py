import math

import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.models.gpt import GPT
from selfsup.models.transformer import document_positions

CFG = ModelConfig(dim=32, depth=2, heads=4, context=16, vocab_size=300)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_vocab_padded_to_64_and_head_tied(model):
    assert model.vocab == 320 and model.embed.weight.shape == (320, 32)
    hidden = model(torch.zeros(2, 5, dtype=torch.long))
    assert hidden.shape == (2, 5, 32) and model.logits(hidden).shape == (2, 5, 320)
    assert sum(p.numel() for p in model.parameters()) == model.num_params()
    assert not any("head" in n for n, _ in model.named_parameters())  # the output head is the embedding


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    m = GPT(ModelConfig(dim=256, depth=8, heads=4, context=16, vocab_size=512))
    assert m.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].attn.out.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert m.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert (m.blocks[0].norm1.weight == 1).all()


def test_clip_init_scales_the_blocks_by_their_width():
    """model.weight_init=clip: open_clip's text-transformer init, in the text trunk and in a ViT."""
    from selfsup.models.transformer import Transformer
    from selfsup.models.vit import ViT

    torch.manual_seed(0)
    cfg = ModelConfig(dim=256, depth=8, heads=4, context=64, vocab_size=512, mlp="gelu", learned_positions=True,
                      weight_init="clip")
    for trunk in (Transformer(cfg, causal=True), ViT(cfg, image_size=32, channels=3)):
        b = trunk.blocks[0]
        for weight, std in ((b.attn.qkv.weight, 256 ** -0.5), (b.attn.out.weight, 256 ** -0.5 / 4),
                            (b.mlp.up.weight, 512 ** -0.5), (b.mlp.down.weight, 256 ** -0.5 / 4)):
            assert weight.std().item() == pytest.approx(std, rel=0.05)
    assert trunk.pos.std().item() == pytest.approx(0.02, rel=0.1)  # the ViT's positions stay GPT-2's
    text = Transformer(cfg, causal=True)
    assert text.positions.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert text.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_causal_future_tokens_do_not_change_past_logits(model):
    x = torch.randint(0, 300, (1, 12))
    y = x.clone()
    y[0, 7:] = torch.randint(0, 300, (5,))
    assert torch.allclose(model(x)[0, :7], model(y)[0, :7], atol=1e-6)
    assert not torch.allclose(model(x)[0, 7:], model(y)[0, 7:])


def test_documents_do_not_attend_to_each_other(model):
    x = torch.randint(1, 300, (1, 12))
    docs = torch.tensor([[0] * 5 + [1] * 7])
    y = x.clone()
    y[0, :5] = torch.randint(1, 300, (5,))  # change only the first document
    assert torch.allclose(model(x, docs)[0, 5:], model(y, docs)[0, 5:], atol=1e-6)
    # and the second document is computed as if it stood alone, at positions 0..6
    assert torch.allclose(model(x, docs)[0, 5:], model(x[:, 5:])[0], atol=1e-5)


def test_document_positions_restart():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [3, 3, 3, 3, 3, 3, 3, 3]])
    assert document_positions(docs).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], list(range(8))]


def test_too_long_sequence_is_a_clear_error(model):
    with pytest.raises(ValueError, match="longer than model.context=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_flops_per_token_follows_palm():
    m = GPT(CFG)
    assert m.flops_per_token() == 6 * m.num_params() + 12 * 2 * 32 * 16


@pytest.mark.parametrize("options", [
    {"learned_positions": True, "bias": "all", "mlp": "gelu_tanh", "norm": "layernorm"},  # GPT-2's block
    {"learned_positions": True, "bias": "all", "norm_position": "post", "mlp": "gelu", "norm": "layernorm"},  # BERT
])
def test_learned_positions_restart_at_each_document(options):
    torch.manual_seed(0)
    model = GPT(CFG.model_copy(update=options)).eval()
    x = torch.randint(1, 300, (1, 12))
    docs = torch.tensor([[0] * 5 + [1] * 7])
    assert torch.allclose(model(x, docs)[0, 5:], model(x[:, 5:])[0], atol=1e-5)  # positions 0..6 again
    assert model.rotary is None and model.positions.weight.shape == (16, 32)


def test_bias_options_name_which_layers_have_biases():
    def biases(bias):
        torch.manual_seed(0)
        model = GPT(CFG.model_copy(update={"bias": bias, "norm": "layernorm"}))
        found = {n.split(".", 2)[-1] if n.startswith("blocks.") else n
                 for n, _ in model.named_parameters() if n.endswith(".bias")}
        assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith(".bias"))  # they start at zero
        return found

    assert biases("none") == set()
    assert biases("qkv") == {"attn.qkv.bias"}  # Qwen2
    assert biases("all") == {"attn.qkv.bias", "attn.out.bias", "mlp.up.bias", "mlp.down.bias", "norm1.bias",
                             "norm2.bias", "norm.bias"}


def test_post_norm_and_layer_scale_blocks_compute_their_formulas():
    from selfsup.models.blocks import Block

    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    post = Block(32, 4, 64, "gelu", "layernorm", bias="all", post_norm=True).eval()
    h = post.norm1(x + post.attn(x, None, None, False))
    assert torch.allclose(post(x, None, None, False), post.norm2(h + post.mlp(h)), atol=1e-6)  # BERT's order
    scaled = Block(32, 4, 64, "gelu", "layernorm", layer_scale=0.1).eval()
    assert (scaled.scale1 == 0.1).all() and scaled.scale1.shape == (32,)
    h = x + 0.1 * scaled.attn(scaled.norm1(x), None, None, False)
    assert torch.allclose(scaled(x, None, None, False), h + 0.1 * scaled.mlp(scaled.norm2(h)), atol=1e-6)


def test_gelu_variants_are_the_published_ones():
    from selfsup.models.blocks import ACTIVATIONS

    x = torch.linspace(-4, 4, 101)
    gelu_new = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # GPT-2's formula
    assert torch.allclose(ACTIVATIONS["gelu_tanh"](x), gelu_new, atol=1e-6)
    assert torch.allclose(ACTIVATIONS["quick_gelu"](x), x * torch.sigmoid(1.702 * x))
    assert not torch.allclose(ACTIVATIONS["gelu"](x), gelu_new, atol=1e-6)  # exact GELU differs from both
