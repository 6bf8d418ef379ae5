"""Training on several processes equals training on one with the whole batch: each contrastive, distillation,
masked and clustering objective (and a hybrid) with 2 gloo processes on the CPU gives the one-process loss, gradients and state
(queues, centres, BatchNorm statistics) to 1e-5; the trainer's two-process CLM and MLM runs log the one-process
losses; the data position
survives a change of world size; a run whose worker is killed resumes from its last complete checkpoint.

Augmentations draw different random numbers in one and in two processes, so the objective-level tests feed
fixed views (the centre view and its mirror image) instead; masks are drawn for the global batch
(batch_random.py), so masked objectives need no such help.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup import config
from selfsup.data.load.rows import RowLoader
from selfsup.models.sync_batchnorm import synchronize_batchnorm
from selfsup.objectives.build import build_objective
from selfsup.seed import seed_everything
from selfsup.views.augment import center_view
from tests.conftest import TINY, why_failed
from tests.test_alignment import _clips
from tests.test_train import losses
from tests.test_vision import TINY_VISION, digits_dir  # noqa: F401 (a fixture)

OBJECTIVES = ["simclr", "mocov2", "mocov3", "byol", "dino", "swav", "clip", "siglip", "simcse", "hybrid",
              "mae", "beit", "mlm", "plm", "hubert", "deepcluster"]
# masked objectives draw their masks for the global batch (batch_random.py): equal on any number of processes
RECIPES = {"mlm": "bert-mlm", "plm": "xlnet-plm", "hubert": "audio-mask"}
TEXT = ["model.context=16", "model.vocab_size=512"]
EXTRA = {"simcse": [*TEXT, "model.dropout=0", "simcse.mask_p=0.5"], "mlm": TEXT, "plm": TEXT,
         "beit": ["beit.codebook_size=8", "beit.codebook_images=8"],
         "deepcluster": ["deepcluster.clusters=3", "deepcluster.pca_dim=4"],
         "hubert": ["hubert.clusters=8", "hubert.kmeans_frames=400", "hubert.proj_dim=16", "audio.mean=0",
                    "audio.std=1"]}
# a hybrid whose terms are both deterministic under fixed views: what it adds is each term's global mean
HYBRID = ["objective=hybrid", "hybrid.terms=[{objective: simclr, weight: 0.7}, {objective: byol, weight: 0.3}]"]
SMALL = ["image.size=16", "image.channels=1", "image.mean=[0.4]", "image.std=[0.3]", "model.dim=32", "model.depth=2",
         "model.heads=2", "ssl.proj_hidden=32", "ssl.proj_dim=16", "ssl.pred_hidden=16", "ssl.queue_size=32",
         "dino.out_dim=32", "dino.bottleneck=16", "dino.head_bn=true", "swav.prototypes=8", "views.local_crops=0",
         "text.dim=32", "text.depth=1", "text.heads=2", "text.vocab_size=512", "text.context=8",
         "align.embed_dim=32"]  # align.local_loss and align.gather_with_grad at their defaults (on)
GLOBAL_BATCH = 8


class FixedViews(nn.Module):
    """Two deterministic views: the normalised centre view and its mirror image (float64, see _step)."""

    def forward(self, images):
        x = center_view(images, 16, [0.4], [0.3]).double()
        return [x, x.flip(-1)]


class FixedImage(nn.Module):
    def forward(self, images, lengths=None):
        return (center_view(images, 16, [0.4], [0.3]).double(),)


class Float64Audio(nn.Module):
    """The audio view's normalised log-mel in float64, as the rest of the objective runs here."""

    def __init__(self, view):
        super().__init__()
        self.inner = view

    def forward(self, mel, lengths=None):
        x, lengths = self.inner(mel, lengths)
        return x.double(), lengths


def _batch(name: str) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {"images": torch.randint(0, 256, (GLOBAL_BATCH, 1, 16, 16), generator=g, dtype=torch.uint8),
             "index": torch.arange(GLOBAL_BATCH)}
    if name in ("clip", "siglip"):
        batch = {"media": batch["images"], "text": torch.randint(3, 500, (GLOBAL_BATCH, 8), generator=g),
                 "text_mask": torch.ones(GLOBAL_BATCH, 8, dtype=torch.bool)}
    if name == "hubert":
        rows, lengths = _clips(GLOBAL_BATCH)
        batch = {"media": torch.from_numpy(rows), "lengths": torch.from_numpy(lengths)}
    if name in ("simcse", "mlm", "plm"):  # windows of three documents of random lengths, each opened by EOS
        tokens = torch.randint(10, 250, (GLOBAL_BATCH, 16), generator=g)
        tokens[:, 0] = 0
        tokens[torch.arange(GLOBAL_BATCH)[:, None], torch.randint(1, 16, (GLOBAL_BATCH, 2), generator=g)] = 0
        batch = {"tokens": tokens}
    return batch


def _tokenizer():
    """A byte-level BPE whose EOS is id 0, as the windows above assume."""
    from selfsup.data.read.tokenizer import eos_id, train_bpe

    tok = train_bpe(["a few words to learn merges from"] * 4, 300)
    assert eos_id(tok) == 0
    return tok


def _step(name: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """One forward and backward of `name` on this rank's rows of the global batch: loss sum, count, gradients
    (summed over the processes) and the objective's buffers. In float64: a gradient shared by the whole batch
    (the ViT's class token) sums terms that BatchNorm makes cancel, and in fp32 the order of that sum alone
    moves it by ~1e-5 of its size; float64 shows the split into processes changes nothing else."""
    seed_everything(0)
    if name == "hybrid":
        cfg = config.load("simclr", [*SMALL, *HYBRID])
    else:
        cfg = config.load(RECIPES.get(name, name), [*SMALL, *EXTRA.get(name, [])])
    batch = _batch(name)
    tok = _tokenizer() if name in ("simcse", "mlm", "plm") else None
    images = batch["images"].numpy() if name in ("beit", "deepcluster") else None  # what they fit on
    objective = build_objective(cfg, tok, images=images, clips=_clips(GLOBAL_BATCH) if name == "hubert" else None)
    if name == "simcse":  # dropout and masking draw per process: the two views are the same window
        objective.mask_p = 0.0
    # one process too: the same BatchNorm arithmetic on both sides (vs torch's own: see the test below)
    synchronize_batchnorm(objective, torch.device("cpu"))
    objective.double()
    for part in objective.terms.values() if name == "hybrid" else [objective]:
        if hasattr(part, "views"):
            part.views = FixedViews()
        elif name in ("clip", "siglip"):
            part.view = FixedImage()
        elif name == "hubert":
            part.view = Float64Audio(part.view)
    objective.train()
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    out = objective({k: v[rows] for k, v in batch.items()})
    out.loss.backward()
    result = {"loss": out.loss.detach().reshape(1), "count": torch.tensor([float(out.count)])}
    for n, p in objective.named_parameters():
        if p.grad is not None:
            result[f"grad/{n}"] = p.grad
    result.update({f"buffer/{n}": b.float() for n, b in objective.named_buffers() if b.is_floating_point()})
    if world > 1:
        for k, v in result.items():
            if not k.startswith("buffer/"):
                dist.all_reduce(v)
    return {k: v.detach().contiguous() for k, v in result.items()}


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for name in OBJECTIVES:
            result = _step(name, rank, world)
            if rank == 0:
                save_file(result, f"{out}/{name}.safetensors")
            # every process's buffers must agree: they are the same queue, centre, running statistics
            for k, v in result.items():
                if k.startswith("buffer/"):
                    other = v.clone()
                    dist.broadcast(other, 0)
                    assert torch.equal(other, v), (name, k)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    mp.spawn(_worker, args=(2, f"file://{out}/rendezvous", str(out)), nprocs=2, join=True)
    return {name: load_file(out / f"{name}.safetensors") for name in OBJECTIVES}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_processes_equal_one_with_the_whole_batch(name, two_process_results):
    one, two = _step(name, 0, 1), two_process_results[name]
    assert set(one) == set(two)
    torch.testing.assert_close(two["loss"] / two["count"], one["loss"] / one["count"], rtol=0, atol=1e-5)
    grads = [k for k in one if k.startswith("grad/")]
    assert grads, "no gradients"
    for k in grads:  # mean-loss gradients: summed over the processes and divided by the global count
        torch.testing.assert_close(two[k] / two["count"], one[k] / one["count"], rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    for k in one:
        if k.startswith("buffer/"):
            torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_global_batchnorm_in_one_process_is_batchnorm():
    """Alone, GlobalBatchNorm computes what BatchNorm does: output, gradients (to fp32 rounding) and statistics."""
    torch.manual_seed(0)
    x = torch.randn(16, 6, 5) * 3 + 1
    reference = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(6))
    ours = synchronize_batchnorm(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(6)), torch.device("cpu"))
    ours.load_state_dict(reference.state_dict())
    assert type(ours[1]).__name__ == "GlobalBatchNorm"
    outputs = []
    for net in (reference, ours):
        y = net(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append((y, net[0].weight.grad, net[1].running_mean, net[1].running_var))
    for a, b in zip(*outputs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    ours.eval()
    torch.testing.assert_close(ours(x), reference.eval()(x))


# ------------------------------------------------------------------------------------- the trainer, end to end


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "selfsup", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLM = ["model.dim=32", "model.depth=2", "model.heads=2", "model.context=32", "model.vocab_size=512",
       "optim.lr=0.003", "sched.warmup_steps=2", "train.max_steps=6", "train.log_every=1", "train.eval_every=3",
       "train.eval_batches=2", "data.workers=0"]


# bert-mlm: masks are drawn for each global micro-batch, so one process accumulates micro-batches of the same 4 rows
@pytest.mark.parametrize("recipe, one_process", [("gpt-clm", ["train.batch_size=8"]),
                                                 ("bert-mlm", ["train.batch_size=4", "train.grad_accum=2"])])
def test_two_process_training_logs_the_one_process_losses(recipe, one_process, corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = _cli("train", recipe, f"data.path={corpus}", f"out_dir={one}", *CLM, *one_process)
    assert r.returncode == 0, why_failed(r)
    r = _cli("train", recipe, f"data.path={corpus}", f"out_dir={two}", *CLM, "train.batch_size=2",
             "train.grad_accum=2", "dist.nproc_per_node=2", f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}")
    assert r.returncode == 0, why_failed(r)
    assert "global batch 8 = 2 per process × 2 accumulated × 2 process(es)" in r.stdout  # DDP's no_sync too
    a, b = losses(one), losses(two)
    assert sorted(b) == list(range(1, 7))
    for step, loss in a.items():
        assert b[step] == pytest.approx(loss, abs=1e-5), step
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["tokens_seen"] == s1["tokens_seen"] == 6 * 8 * 32
    assert s2["val_loss"] == pytest.approx(s1["val_loss"], abs=1e-5)
    assert s2["batch"]["processes"] == 2 and s2["batch"]["global_batch"] == 8
    assert not (two / "checkpoints" / "step-00000006" / "rng.safetensors").stat().st_size == 0
    assert "rank1/torch" in load_file(two / "checkpoints" / "step-00000006" / "rng.safetensors")


def test_data_position_is_global_so_a_run_resumes_with_another_world_size():
    """Sample ids: 3 steps on 2 processes, then the rest on 1 (and on 4), visit exactly what 1 process would."""
    rows = np.arange(37)
    straight = RowLoader({"x": rows}, seed=3)
    expected = np.concatenate([straight.next_batch(8)["x"].numpy() for _ in range(10)])
    ranks = [RowLoader({"x": rows}, seed=3) for _ in range(2)]
    for r, loader in enumerate(ranks):
        loader.shard(r, 2)
    seen = [np.concatenate([loader.next_batch(4)["x"].numpy() for loader in ranks]) for _ in range(3)]
    assert ranks[0].state() == ranks[1].state()
    for world in (1, 4):
        resumed = [RowLoader({"x": rows}, seed=3) for _ in range(world)]
        for r, loader in enumerate(resumed):
            loader.load_state(ranks[0].state())
            loader.shard(r, world)
        later = [np.concatenate([loader.next_batch(8 // world)["x"].numpy() for loader in resumed])
                 for _ in range(7)]
        np.testing.assert_array_equal(np.concatenate(seen + later), expected)


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{task}/children"
        if os.path.exists(path):
            out += [int(c) for c in open(path).read().split()]
    return out


def test_killed_worker_then_resume_from_the_last_complete_checkpoint(corpus, tmp_path):
    args = [*CLM, "train.batch_size=4", "train.max_steps=12", "train.checkpoint_every=4", "dist.nproc_per_node=2"]
    full = tmp_path / "full"
    r = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={full}", *args,
             f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}")
    assert r.returncode == 0, why_failed(r)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "train", "gpt-clm", f"data.path={corpus}",
                             f"out_dir={out}", *args, f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and max(losses(out), default=0) >= 5):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before step 5"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)  # one worker dies: the launcher stops the other and fails
    assert proc.wait(timeout=60) != 0
    assert (out / "checkpoints" / "step-00000004").is_dir()
    r = _cli("train", str(out), f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}")  # the same command resumes
    assert r.returncode == 0, why_failed(r)
    assert "resuming from" in r.stdout
    after, expected = losses(out), losses(full)
    assert sorted(after) == list(range(1, 13))
    for step, loss in expected.items():
        assert after[step] == pytest.approx(loss, abs=1e-6), step


@pytest.mark.parametrize("strategy", ["fsdp", "hsdp"])  # hsdp on one machine: a 1 × 2 mesh
def test_sharded_training_logs_the_one_process_losses_writes_shards_and_resumes_on_one_process(strategy, corpus,
                                                                                              tmp_path):
    one, two = tmp_path / "one", tmp_path / strategy
    r = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={one}", *CLM, "train.batch_size=8")
    assert r.returncode == 0, why_failed(r)
    r = _cli("train", "gpt-clm", f"data.path={corpus}", f"out_dir={two}", *CLM, "train.batch_size=4",
             "train.checkpoint_every=3", "dist.nproc_per_node=2", f"dist.strategy={strategy}",
             f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}")
    assert r.returncode == 0, why_failed(r)
    a, b = losses(one), losses(two)
    for step, loss in a.items():
        assert b[step] == pytest.approx(loss, abs=1e-5), step
    shards = sorted(p.name for p in (two / "checkpoints" / "step-00000006" / "sharded").iterdir())
    assert "__0_0.distcp" in shards and "__1_0.distcp" in shards  # each process wrote its part
    # the consolidated model is the one-process model
    full, single = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    assert set(full) >= set(single)
    for k in single:
        torch.testing.assert_close(full[k], single[k], rtol=0, atol=1e-5)
    # resumed on one process from the shards, it continues (the data position and optimizer state carried over)
    r = _cli("train", str(two), "train.max_steps=8", "dist.nproc_per_node=1")
    assert r.returncode == 0, why_failed(r)
    assert "resuming from" in r.stdout and sorted(losses(two)) == list(range(1, 9))
    assert json.loads((two / "summary.json").read_text())["tokens_seen"] == 8 * 8 * 32 - 2 * 4 * 32


@pytest.mark.parametrize("recipe", ["byol", "dino"])
def test_fsdp_with_a_momentum_teacher_logs_the_ddp_losses(recipe, digits_dir, tmp_path):
    """The teacher's shards follow the student's as DDP's whole teacher follows its student: with the same world
    size and seeds each process sees the same views under both strategies, so the losses must agree."""
    runs = {s: tmp_path / s for s in ("ddp", "fsdp")}
    for strategy, out in runs.items():
        r = _cli("train", recipe, f"data.path={digits_dir / 'train'}", f"out_dir={out}", *TINY_VISION,
                 "views.local_crops=0", "train.batch_size=8", "train.max_steps=4", "train.log_every=1",
                 "dist.nproc_per_node=2", f"dist.strategy={strategy}", f"dist.rdzv_endpoint=127.0.0.1:{_free_port()}")
        assert r.returncode == 0, why_failed(r)
    a, b = losses(runs["ddp"]), losses(runs["fsdp"])
    assert sorted(b) == list(range(1, 5))
    for step, loss in a.items():
        assert b[step] == pytest.approx(loss, abs=1e-5), step


def test_two_nodes_of_one_process_on_loopback(corpus, tmp_path):
    endpoint = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "nodes"
    common = ["train", "gpt-clm", f"data.path={corpus}", f"out_dir={out}", *CLM, "train.batch_size=4",
              "dist.nnodes=2", f"dist.rdzv_endpoint={endpoint}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "selfsup", *common, f"dist.node_rank={rank}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["batch"]["processes"] == 2
    assert sorted(losses(out)) == list(range(1, 7))


def test_activation_checkpointing_changes_no_gradient():
    from selfsup.train.parallel import blocks, checkpoint_activations

    grads = []
    for recompute in (False, True):
        seed_everything(0)
        objective = build_objective(config.load("mae", SMALL)).double()
        assert len(blocks(objective)) == 2 + 2  # the encoder's and the decoder's
        if recompute:
            checkpoint_activations(objective)
        objective.views = FixedViews()
        seed_everything(1)  # the same masks
        objective({"images": _batch("mae")["images"], "index": torch.arange(GLOBAL_BATCH)}).loss.backward()
        grads.append({n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=0, atol=1e-6)
