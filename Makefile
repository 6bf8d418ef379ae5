# The two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch first and pinned: pip then keeps the build it finds (a CPU wheel here) instead of pulling CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Small models on the docstrings of Python's standard library, 2 CPU cores: a GPT (about 4 minutes of training),
# then a masked-LM encoder (about 2.5 minutes); both probed on the docstrings labeled by package, beside a random init.
SMALL := model.dim=192 model.vocab_size=4096 train.batch_size=16 sched.warmup_steps=50 optim.lr=0.002

demo: setup
	rm -rf runs/demo runs/demo-mlm
	$(BIN)/selfsup train gpt-clm out_dir=runs/demo $(SMALL) train.max_steps=800
	@echo "--- a sample from the GPT:"
	$(BIN)/selfsup generate runs/demo --prompt "Return the " --max-new-tokens 48
	$(BIN)/selfsup train bert-mlm out_dir=runs/demo-mlm $(SMALL) train.max_steps=700
	$(BIN)/selfsup data labeled-docstrings --out runs/labeled
	$(BIN)/selfsup eval runs/demo-mlm --task linear --train runs/labeled/train.jsonl --test runs/labeled/test.jsonl --baseline random
	$(BIN)/selfsup eval runs/demo --task linear --train runs/labeled/train.jsonl --test runs/labeled/test.jsonl --baseline random

test: setup
	$(BIN)/pytest

# Side-by-side benchmarks against Hugging Face transformers (optional extra).
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/clm_vs_hf.py

clean:
	rm -rf $(VENV) runs
