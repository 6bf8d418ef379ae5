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

# A small GPT on the docstrings of Python's standard library: about 4 minutes of training on 2 CPU cores.
DEMO := model.dim=192 model.vocab_size=4096 train.batch_size=16 train.max_steps=800 sched.warmup_steps=50 optim.lr=0.002

demo: setup
	rm -rf runs/demo
	$(BIN)/selfsup train gpt-clm out_dir=runs/demo $(DEMO)
	@echo "--- a sample from the model:"
	$(BIN)/selfsup generate runs/demo --prompt "Return the " --max-new-tokens 48

test: setup
	$(BIN)/pytest

# Side-by-side benchmarks against Hugging Face transformers (optional extra).
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/clm_vs_hf.py

clean:
	rm -rf $(VENV) runs
