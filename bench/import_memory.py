"""What `model.init` costs for a large Hugging Face model: import time and the memory it adds beside the model.

    python bench/import_memory.py [--dim 1024 --depth 24 --heads 16 --hidden 2816 --vocab 32000] [--folder DIR]

Saves a random LlamaForCausalLM of that shape with transformers (default ~341M parameters, 1.4 GB in fp32) unless
--folder already holds one, then in a fresh process builds our decoder, records its resident memory, imports the
weights with `load_init`, and prints the import's wall time and how much the peak resident memory rose above the
built model, as a share of the weights' size (the contract: the import never holds a second copy of them). Then
the same for `safetensors.torch.load_file` of every file, each tensor copied (what an import that reads all weights
into tensors of its own first pays), in its own fresh process. Memory is private (anonymous) resident memory, sampled
every millisecond: the file pages safetensors maps are page cache, shared and evictable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import anonymous_bytes


class Peak:
    """The highest anonymous memory seen while the block runs, sampled every millisecond by a thread."""

    def __enter__(self) -> Peak:
        self.before = self.high = anonymous_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.high = max(self.high, anonymous_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.high = max(self.high, anonymous_bytes())

    @property
    def rise(self) -> int:
        return self.high - self.before


def make(folder: Path, a) -> None:
    import torch
    import transformers

    from selfsup.data.read.tokenizer import train_bpe

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=a.dim, num_hidden_layers=a.depth, num_attention_heads=a.heads,
                                      intermediate_size=a.hidden, vocab_size=a.vocab, max_position_embeddings=256)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    train_bpe(["a small corpus for a tokenizer"] * 10, 300).save(str(folder / "tokenizer.json"))


def measure(folder: Path, how: str) -> dict:
    import torch

    from selfsup.train.continual import load_config

    if how == "load_file":
        from safetensors.torch import load_file

        from selfsup.models.hf.folder import weight_files
        start = time.perf_counter()
        with Peak() as watch:
            tensors = {}
            for f in weight_files(folder):
                tensors |= {k: v.clone() for k, v in load_file(str(f)).items()}  # what an import keeps: a copy
        return {"seconds": time.perf_counter() - start, "rise": watch.rise}
    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    cfg = load_config("gpt-clm", [f"model.init={folder}", "model.context=256"])
    holder = torch.nn.ModuleDict({"model": GPT(cfg.model)})
    start = time.perf_counter()
    with Peak() as watch:
        load_init(cfg, holder)
    return {"seconds": time.perf_counter() - start, "rise": watch.rise,
            "params": sum(p.numel() for p in holder.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser()
    for key, value in {"dim": 1024, "depth": 24, "heads": 16, "hidden": 2816, "vocab": 32000}.items():
        ap.add_argument(f"--{key}", type=int, default=value)
    ap.add_argument("--folder", type=Path, default=Path("bench/out/llama-import"))
    ap.add_argument("--measure", choices=["load_init", "load_file"])
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.folder, a.measure)))
        return
    if not (a.folder / "config.json").is_file():
        a.folder.mkdir(parents=True, exist_ok=True)
        make(a.folder, a)
    size = sum(f.stat().st_size for f in a.folder.glob("*.safetensors"))
    print(f"weights: {size / 1e9:.2f} GB in {a.folder}")
    for how in ("load_init", "load_file"):
        out = subprocess.run([sys.executable, __file__, "--folder", str(a.folder), "--measure", how],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        extra = f", {r['params'] / 1e6:.0f}M parameters" if "params" in r else ""
        print(f"{how:10s} {r['seconds']:6.2f} s; peak private memory above the built model +{r['rise'] / 1e9:.2f} GB "
              f"({r['rise'] / size:.0%} of the weights){extra}")


if __name__ == "__main__":
    main()
