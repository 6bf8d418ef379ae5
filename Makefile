# The two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-vision demo-multimodal demo-hybrid test faults bench clean

setup: $(VENV)/.installed

# torch first and pinned: pip then keeps the build it finds (a CPU wheel here) instead of pulling CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Small models on the docstrings of Python's standard library, 2 CPU cores: a GPT (about 4 minutes of training),
# then the recommended text encoder, contriever (two crops of one module's docstrings are positives; about 7
# minutes); the encoder probed (kNN, linear) on the docstrings labeled by package, beside a random init of its shape.
# The masked-LM encoder, which does not beat its random init on this budget, is in demo-hybrid.
SMALL := model.dim=192 model.vocab_size=4096 train.batch_size=16 sched.warmup_steps=50 optim.lr=0.002
TEXT_PROBE := --train runs/labeled/train.jsonl --test runs/labeled/test.jsonl --baseline random

demo: setup
	rm -rf runs/demo runs/demo-text
	$(BIN)/selfsup train gpt-clm out_dir=runs/demo $(SMALL) train.max_steps=800
	@echo "--- a sample from the GPT:"
	$(BIN)/selfsup generate runs/demo --prompt "Return the " --max-new-tokens 48
	$(BIN)/selfsup train contriever out_dir=runs/demo-text
	$(BIN)/selfsup data labeled-docstrings --out runs/labeled
	$(BIN)/selfsup eval runs/demo-text --task knn $(TEXT_PROBE)
	$(BIN)/selfsup eval runs/demo-text --task linear $(TEXT_PROBE)

# The nine image objectives on scikit-learn's bundled handwritten digits (1,287 training images at 16x16, labels
# hidden), a ViT of dim 128, 4 layers, patch 4, 300 steps of 128 images each (about 1-2 minutes per recipe on
# 2 CPU cores); each then probed (kNN and linear) beside a random-init ViT of the same shape and raw pixels.
# Teacher momentum and frozen phases are the recipes' own, fitted to 300 steps (budget.py; the printed config says
# how): hand-set ones (momentum 0.99, 30 frozen steps) did no better for DINO and SwAV, and 4 kNN points better
# for BYOL at this batch, none at its own (BENCHMARKS.md, "demo-vision without its hand-set teacher"). No local crops: at 16 px they would be 8 px, 2x2
# patches. SwAV: more prototypes than embedding dimensions (else the projection can turn orthogonal to all of
# them) and milder jitter than its recipe's 0.8 strength.
VISION := image.size=16 image.channels=1 model.dim=128 model.depth=4 model.heads=4 views.flip_p=0 \
	views.crop_scale=[0.3,1.0] views.local_crops=0 train.batch_size=128 train.max_steps=300 sched.warmup_steps=30 \
	ssl.proj_hidden=512 ssl.pred_hidden=512 ssl.queue_size=512 dino.out_dim=1024
VISION_swav := swav.prototypes=256 views.jitter=[0.4,0.4,0,0]
VISION_RECIPES := simclr mocov2 mocov3 byol dino mae beit swav deepcluster
PROBE := --train runs/digits/train --test runs/digits/test --baseline random --baseline pixels

demo-vision: setup
	rm -rf runs/vision
	$(BIN)/selfsup data digits --out runs/digits
	@$(foreach r,$(VISION_RECIPES),echo "--- $(r)" && $(BIN)/selfsup train $(r) out_dir=runs/vision/$(r) $(VISION) $(VISION_$(r)) && \
		$(BIN)/selfsup eval runs/vision/$(r) --task knn $(PROBE) && \
		$(BIN)/selfsup eval runs/vision/$(r) --task linear $(PROBE) && ) true
	$(BIN)/selfsup compare $(addprefix runs/vision/,$(VISION_RECIPES))

# Media-text alignment and audio on data made here (digits with generated captions, synthetic tones, moving digits,
# synthetic speech):
# towers of dim 128 (4 media blocks, 2 text blocks), 300 steps each, 1000 for video (about 1-3 minutes per recipe on
# 2 CPU cores); zero-shot and retrieval beside a random init (video: zero-shot by direction, which needs the order of
# the frames, and by digit); the HuBERT encoder (its recipe's units k-means of MFCCs, the paper's first iteration:
# log-mel units leave it below its random init, BENCHMARKS.md "Audio representations") by kNN and a linear probe on the
# vowels of the synthetic speech set's held-out voices.
MM := model.dim=128 model.depth=4 model.heads=4 text.dim=128 text.depth=2 text.heads=4 train.max_steps=300 \
	sched.warmup_steps=30 optim.lr=0.001
MM_IMAGE := $(MM) image.size=16 image.channels=1 train.batch_size=128
MM_VIDEO := $(MM) image.size=16 image.channels=1 video.frames=4 video.cache_frames=8 train.batch_size=32 \
	train.max_steps=1000
MM_AUDIO := $(MM) train.batch_size=64

demo-multimodal: setup
	rm -rf runs/mm
	$(BIN)/selfsup data digits --out runs/digits
	$(BIN)/selfsup data tones --out runs/tones
	$(BIN)/selfsup data moving-digits --out runs/moving-digits
	$(BIN)/selfsup data speech --out runs/speech
	@$(foreach r,clip siglip,echo "--- $(r)" && $(BIN)/selfsup train $(r) out_dir=runs/mm/$(r) $(MM_IMAGE) && \
		$(BIN)/selfsup eval runs/mm/$(r) --task zeroshot --test runs/digits/test --baseline random \
			--prompt "a handwritten {label}" --prompt "the digit {label}" --prompt "the number {label}" && \
		$(BIN)/selfsup eval runs/mm/$(r) --task retrieval --test runs/digits/test.jsonl --baseline random && ) true
	$(BIN)/selfsup train clap out_dir=runs/mm/clap $(MM_AUDIO)
	$(BIN)/selfsup eval runs/mm/clap --task zeroshot --test runs/tones/test --baseline random \
		--prompt "a {label}" --prompt "the sound of {label}" --prompt "{label}"
	$(BIN)/selfsup eval runs/mm/clap --task retrieval --test runs/tones/test.jsonl --baseline random
	$(BIN)/selfsup train videoclip out_dir=runs/mm/videoclip $(MM_VIDEO)
	$(BIN)/selfsup eval runs/mm/videoclip --task zeroshot --test runs/moving-digits/test --baseline random \
		--prompt "a digit moving {label}" --prompt "a number going {label}"
	$(BIN)/selfsup eval runs/mm/videoclip --task zeroshot --test runs/moving-digits/test.jsonl --baseline random \
		--prompt "the digit {label}" --prompt "a {label} moving"
	$(BIN)/selfsup eval runs/mm/videoclip --task retrieval --test runs/moving-digits/test.jsonl --baseline random
	$(BIN)/selfsup train audio-mask out_dir=runs/mm/audio-mask data.path=runs/speech/train $(MM_AUDIO)
	$(BIN)/selfsup eval runs/mm/audio-mask --task knn --train runs/speech/train --test runs/speech/test --baseline random
	$(BIN)/selfsup eval runs/mm/audio-mask --task linear --train runs/speech/train --test runs/speech/test \
		--baseline random

# Hybrids beside their single parts on the same budget (model, batch, steps): MAE, SimCLR and MAE + SimCLR on the
# digits with demo-vision's settings (kNN and linear probes), then MLM, SimCSE and MLM + SimCSE on the stdlib
# docstrings with demo's settings (linear probe on the docstrings labeled by package). About 25 minutes on 2 cores.
HYBRID_VISION := mae simclr hybrid-mae-contrastive
HYBRID_TEXT := bert-mlm simcse hybrid-mlm-contrastive

demo-hybrid: setup
	rm -rf runs/hybrid
	$(BIN)/selfsup data digits --out runs/digits
	$(BIN)/selfsup data labeled-docstrings --out runs/labeled
	@$(foreach r,$(HYBRID_VISION),echo "--- $(r)" && $(BIN)/selfsup train $(r) out_dir=runs/hybrid/$(r) $(VISION) && \
		$(BIN)/selfsup eval runs/hybrid/$(r) --task knn $(PROBE) && \
		$(BIN)/selfsup eval runs/hybrid/$(r) --task linear $(PROBE) && ) true
	@$(foreach r,$(HYBRID_TEXT),echo "--- $(r)" && $(BIN)/selfsup train $(r) out_dir=runs/hybrid/$(r) $(SMALL) \
		train.max_steps=700 && $(BIN)/selfsup eval runs/hybrid/$(r) --task linear --train runs/labeled/train.jsonl \
		--test runs/labeled/test.jsonl --baseline random && ) true
	$(BIN)/selfsup compare $(addprefix runs/hybrid/,$(HYBRID_VISION) $(HYBRID_TEXT))

# Two pytest-xdist workers, one per core of a 2-core machine: 7.5 minutes of tests instead of 13.5 (each worker,
# and what it starts, computes on one thread; tests/conftest.py). A test file stays on one worker, so a module's
# trained-run fixture is built once (8.5 minutes when files are split). TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# tests/faults/ with many more trials than `make test` runs (1): kill -9 at seeded random moments, mid-step and
# mid-checkpoint-write, then resume; ends with a line of trials, kills, kills during checkpoint writes and identical
# resumes. A trial starts selfsup 2-4 times: FAULT_TRIALS=5 (15 trials) took 3.5 minutes on 2 quiet cores and 12 on
# busy ones, so the default 30 (90 trials) takes about 20-75 minutes.
FAULT_TRIALS ?= 30
faults: setup
	SELFSUP_FAULT_TRIALS=$(FAULT_TRIALS) $(BIN)/pytest tests/faults/

# Side-by-side benchmarks against Hugging Face transformers (optional extra) and open_clip's losses. open_clip
# without its dependencies: they include torchvision, which this CPU torch cannot run; the benchmark loads only
# open_clip/loss.py, which needs torch alone.
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/pip install -q --no-deps open-clip-torch==3.3.0
	$(BIN)/python bench/clm_vs_hf.py
	$(BIN)/python bench/clip_loss.py

clean:
	rm -rf $(VENV) runs
