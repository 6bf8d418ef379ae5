"""The exported tokenizer round-trips: transformers' AutoTokenizer + AutoModel + the pooling the export states give
the vectors of `selfsup embed`, with no special token added by hand."""

import numpy as np
import pytest
import torch

from tests.test_cli import invoke, run  # noqa: F401  (the trained GPT run)
from tests.test_export import mlm_run  # noqa: F401  (the trained masked-LM run)

transformers = pytest.importorskip("transformers")

TEXTS = ["Return the number of items.", "Open a file.",
         "Split the path into a pair (head, tail) where tail is everything after the final slash; either part may "
         "be empty, and the head keeps its trailing slash only when it is the root."]  # longer than model.context


@pytest.mark.parametrize("which, pooling", [("mlm_run", None), ("run", "mean")])
def test_auto_tokenizer_and_model_give_selfsup_embed(which, pooling, request, tmp_path):
    """ModernBERT pools as its config's classifier_pooling says; the Llama decoder by the mean over real tokens
    (a causal model's first token sees only itself), as `selfsup embed` does."""
    run_dir = request.getfixturevalue(which)
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    invoke("embed", run_dir, src, "--out", tmp_path / "emb.npy", "--device", "cpu")
    invoke("export", run_dir, "--format", "hf", "--out", tmp_path / "hf")

    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModel.from_pretrained(tmp_path / "hf", attn_implementation="sdpa").eval()
    batch = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    assert (batch["input_ids"][:, 0] == tok.convert_tokens_to_ids("<|endoftext|>")).all()  # EOS opens each text
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, D)
    kind = pooling or model.config.classifier_pooling
    w = batch["attention_mask"][..., None].float()  # (B, T, 1)
    got = hidden[:, 0] if kind == "cls" else (hidden * w).sum(1) / w.sum(1)
    np.testing.assert_allclose(got.numpy(), np.load(tmp_path / "emb.npy"), atol=1e-5)


def test_causal_export_carries_its_generation_config(run, tmp_path):
    invoke("export", run, "--format", "hf", "--out", tmp_path / "hf")
    gen = transformers.GenerationConfig.from_pretrained(tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (tok.eos_token_id, tok.eos_token_id,
                                                                       tok.pad_token_id)
    assert tok.eos_token_id != tok.pad_token_id
