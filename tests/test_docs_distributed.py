"""docs/distributed.md and its examples stay true: the sbatch script trains (run with bash, a fake `srun` and
`scontrol`, one node of 2 CPU workers under torchrun), the PyTorchJob manifest parses and runs `selfsup train`,
the guide shows the sbatch script as it is, and every config key the guide names exists."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from selfsup.config import all_keys

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "distributed.md"
SBATCH = ROOT / "docs" / "examples" / "train.sbatch"
PYTORCHJOB = ROOT / "docs" / "examples" / "pytorchjob.yaml"

FAKE_SCONTROL = """#!/bin/sh
# scontrol show hostnames NODELIST: one host per line; this fake allocation has one node
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: unexpected: $*" >&2; exit 2; }
echo 127.0.0.1
"""
FAKE_SRUN = """#!/bin/sh
# one node: skip srun's own options, then run the command once, as srun's single task
while [ "${1#-}" != "$1" ]; do shift; done
exec "$@"
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sbatch_example_trains_on_two_processes(corpus, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    _script(fake / "scontrol", FAKE_SCONTROL)
    _script(fake / "srun", FAKE_SRUN)
    venv_bin = Path(sys.executable).parent  # torchrun and python of the environment running the tests
    env = {**os.environ, "PATH": os.pathsep.join([str(fake), str(venv_bin), os.environ["PATH"]]),
           "OMP_NUM_THREADS": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_ID": "4242", "SLURM_GPUS_ON_NODE": "2", "MASTER_PORT": str(_free_port())}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NPROC_PER_NODE", "SLURM_CPUS_PER_TASK"):
        env.pop(key, None)
    out = tmp_path / "run"
    tiny = [f"data.path={corpus}", "model.dim=32", "model.depth=2", "model.heads=2", "model.context=32",
            "model.vocab_size=512", "train.batch_size=4", "train.max_steps=4", "train.log_every=1",
            "train.eval_batches=2", "sched.warmup_steps=1", f"out_dir={out}"]
    r = subprocess.run(["bash", str(SBATCH), "gpt-clm", *tiny], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    assert "selfsup: 1 node(s) x 2 worker(s), rendezvous 127.0.0.1:" in r.stdout
    assert "global batch 8 = 4 per process × 1 accumulated × 2 process(es)" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert summary["batch"]["processes"] == 2 and summary["batch"]["global_batch"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if "loss" in r) == [1, 2, 3, 4]
    assert (out / "model.safetensors").is_file()


def test_pytorchjob_example_runs_selfsup_train_under_torchrun():
    job = yaml.safe_load(PYTORCHJOB.read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    for spec in specs.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the training operator finds the container and port by name
        assert any(p["name"] == "pytorchjob-port" for p in container["ports"])
        command = " ".join(container.get("command", []) + container.get("args", []))
        assert "torchrun" in command and "-m selfsup train" in command
        assert "--rdzv-endpoint" in command and "$MASTER_ADDR:$MASTER_PORT" in command
        overrides = [w for w in command.split() if re.fullmatch(r"[a-z_]+(\.[a-z_]+)*=\S+", w)]
        assert overrides and all(w.split("=")[0] in all_keys() for w in overrides), overrides


def test_guide_shows_the_sbatch_script_as_it_is():
    assert SBATCH.read_text() in GUIDE.read_text()


def test_every_config_key_in_the_guide_exists():
    text = "\n".join(p.read_text() for p in (GUIDE, SBATCH, PYTORCHJOB))
    keys = set(all_keys())
    named = set(re.findall(r"\bdist\.[a-z_]+", text))  # every dist.* key, wherever it is mentioned
    named |= set(re.findall(r"(?<![\w.-])([a-z_]+\.[a-z_]+)=", text))  # any section.key given a value
    assert {"dist.strategy", "dist.nproc_per_node", "dist.lr_scaling", "train.activation_checkpointing"} <= named
    assert sorted(named - keys) == []
