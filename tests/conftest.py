"""Shared fixtures: a small real corpus (Python's own docstrings) and an isolated cache per test session."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest

TINY = [  # a model small enough that a few steps take well under a second on 2 cores
    "model.dim=32", "model.depth=2", "model.heads=2", "model.context=32", "model.vocab_size=512",
    "train.batch_size=4", "train.eval_batches=2", "optim.lr=0.003", "sched.warmup_steps=2",
]


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny problems: on shared, busy cores a second BLAS/OpenMP thread costs 10-100x in waiting.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["SELFSUP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """Under pytest-xdist (`make test` runs two workers) a worker, and the processes it starts, compute on one
    thread: two workers of two threads each on two cores would wait on each other."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def why_failed(r) -> str:
    """A failed multi-process run's stderr: the workers' last lines, which the launcher's long traceback after
    them would push out of a plain tail, then the launcher's summary of which worker failed and how."""
    workers, _, launcher = r.stderr.rpartition("Traceback (most recent call last)")
    return workers[-2500:] + "\n[launcher] ..." + launcher[-1500:]


def docstrings(*modules) -> list[str]:
    docs = []
    for module in modules:
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc and obj.__doc__ and len(doc) > 40:
                docs.append(doc.replace("\n", " "))
    return sorted(set(docs))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A folder with a .txt (a document per line) and a .jsonl, about 150 KB of real English."""
    import argparse, collections, json as json_mod, pathlib, subprocess, textwrap

    docs = docstrings(argparse, collections, json_mod, pathlib, subprocess, textwrap, inspect, os)
    root = tmp_path_factory.mktemp("corpus")
    half = len(docs) // 2
    (root / "a.txt").write_text("\n".join(docs[:half]) + "\n")
    (root / "sub").mkdir()
    (root / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[half:]))
    return root
