"""hf: ids: model.init=hf:ORG/NAME[@REVISION] and data.path=hf:datasets/ORG/NAME read huggingface_hub's cache,
laid out here as the library lays it out (and checked by the library itself); nothing is downloaded. The run records
the commit it started from, and its summary, report and `selfsup inspect` say so."""

import hashlib
import json
import os
from types import SimpleNamespace

import pytest
import torch

from selfsup.config import ConfigError
from selfsup.train.continual import load_config
from tests.test_cli import invoke
from tests.test_init_llama import SMALL, batch, holding, llama_folder, squeeze

huggingface_hub = pytest.importorskip("huggingface_hub")
transformers = pytest.importorskip("transformers")

MAIN, OLD = "a" * 40, "b" * 40  # commits


def cached(cache, repo, folder, commit, refs=(), kind="models"):
    """`folder`'s files as commit `commit` of `repo` in a huggingface_hub cache: each file's bytes once under blobs/,
    linked from snapshots/<commit>/; refs/<name> holds the commit a branch or tag names."""
    root = cache / f"{kind}--{repo.replace('/', '--')}"
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return root / "snapshots" / commit


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline huggingface_hub whose cache is tmp_path/hub (the library reads both settings at import, so its
    constants are set too)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    for name, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def models(corpus, tmp_path_factory):
    """Two tiny Llamas: the one on main, and an older commit with other weights (tagged v1)."""
    root = tmp_path_factory.mktemp("models")
    main = llama_folder(root / "main", corpus)
    old = llama_folder(root / "old", corpus, tie_word_embeddings=False)
    return main, old


def test_a_cached_model_is_the_snapshot_huggingface_hub_resolves(hub, models):
    from selfsup.models.hf.folder import resolve

    (folder, _), (old, _) = models
    snap = cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    cached(hub, "org/tiny-llama", old, OLD, refs=["v1"])
    theirs = huggingface_hub.snapshot_download("org/tiny-llama", local_files_only=True)
    assert resolve("hf:org/tiny-llama") == snap and str(snap) == theirs  # the library reads our layout as its own
    assert resolve("hf:org/tiny-llama@v1").name == OLD and resolve(f"hf:org/tiny-llama@{OLD}").name == OLD
    assert resolve(f"hf:org/tiny-llama@{MAIN}") == snap


def test_train_from_a_hub_id_records_its_commit(hub, models, corpus, tmp_path):
    from selfsup.inspect import inspect_path
    from selfsup.rundir import open_run

    (folder, hf), _ = models
    snap = cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    out = tmp_path / "run"
    text = invoke("train", "gpt-clm", "model.init=hf:org/tiny-llama", f"data.path={corpus}", f"out_dir={out}",
                  *SMALL, "optim.lr=1e-9")  # two steps that barely move: the run still is the model it started from
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    started = {"path": "hf:org/tiny-llama", "commit": MAIN, "sha256": sha}
    assert squeeze(f"model.init: hf:org/tiny-llama (commit {MAIN}, weights sha256 {sha})") in squeeze(text)
    assert json.loads((out / "history.jsonl").read_text().splitlines()[0])["started_from"] == started
    assert json.loads((out / "summary.json").read_text())["started_from"] == started
    assert f"started from hf:org/tiny-llama (commit {MAIN}, weights sha256 {sha})" in (out / "report.html").read_text()
    assert ("started from", f"hf:org/tiny-llama (commit {MAIN}, weights sha256 {sha})") in inspect_path(str(out))[1]
    assert "init: hf:org/tiny-llama" in (out / "config.yaml").read_text()
    assert (out / "config.yaml").read_text().count(str(snap / "tokenizer.json")) == 1  # data.tokenizer
    _, objective, _ = open_run(out, torch.device("cpu"))
    x = batch(folder)
    with torch.no_grad():
        assert torch.allclose(objective.model.logits(objective.model(x))[..., :320], hf(input_ids=x).logits, atol=1e-4)


def test_a_revision_names_a_tag_or_commit(hub, models, corpus):
    from selfsup.models.gpt import GPT
    from selfsup.models.hf.init import load_init

    (folder, _), (old, hf_old) = models
    cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    cached(hub, "org/tiny-llama", old, OLD, refs=["v1"])
    for revision in ("v1", OLD):
        cfg = load_config("gpt-clm", [f"model.init=hf:org/tiny-llama@{revision}", f"data.path={corpus}"])
        assert cfg.model.tied is False  # the older commit's config
        ours = GPT(cfg.model).eval()
        started, _ = load_init(cfg, holding(ours))
        assert started["commit"] == OLD
        x = batch(old)
        with torch.no_grad():
            assert torch.allclose(ours.logits(ours(x))[..., :320], hf_old(input_ids=x).logits, atol=1e-4)


def test_what_is_not_cached_offline_is_one_line(hub, models, corpus):
    (folder, _), _ = models
    cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    for source in ("hf:org/absent", "hf:org/tiny-llama@v9"):
        with pytest.raises(ConfigError) as e:
            load_config("gpt-clm", [f"model.init={source}", f"data.path={corpus}"])
        assert str(e.value) == (f"model.init '{source}': HF_HUB_OFFLINE=1 and not in the Hugging Face cache ({hub}); "
                                "download it once online (the same command with the network), or point model.init "
                                "at a local folder")
    with pytest.raises(ConfigError, match=r"model.init 'hf:datasets/org/x': expected a model id, "
                                          r"hf:ORG/NAME\[@REVISION\]"):
        load_config("gpt-clm", ["model.init=hf:datasets/org/x", f"data.path={corpus}"])
    with pytest.raises(ConfigError, match="model.init 'hf:a//b': 'a//b' is no repository id"):
        load_config("gpt-clm", ["model.init=hf:a//b", f"data.path={corpus}"])


def test_an_unreachable_hub_falls_back_to_the_cache(hub, models, monkeypatch):
    from selfsup.models.hf.folder import resolve

    (folder, _), _ = models
    snap = cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # refused at once
    # its 5 retries without their 23 s of back-off: the module's own `time` (only its sleep is used), not time.sleep
    monkeypatch.setattr(huggingface_hub.utils._http, "time", SimpleNamespace(sleep=lambda seconds: None))
    assert resolve("hf:org/tiny-llama") == snap
    with pytest.raises(ConfigError, match="'hf:org/absent': the Hub could not be reached and not in the Hugging "
                                          "Face cache"):
        resolve("hf:org/absent")


def test_a_cached_dataset_is_read_as_its_folder(hub, corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selfsup.config import DataConfig
    from selfsup.data.cache.tokens import prepare
    from selfsup.data.errors import DataError
    from selfsup.data.read.text import source_files

    folder = tmp_path / "corpus"
    lines = (corpus / "a.txt").read_text().splitlines()
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": lines[:40]}), folder / "data" / "train-00000.parquet")
    (folder / "data" / "more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[40:]))
    (folder / "README.md").write_text("a dataset card: not data")
    snap = cached(hub, "org/corpus", folder, MAIN, refs=["main"], kind="datasets")
    assert huggingface_hub.snapshot_download("org/corpus", repo_type="dataset", local_files_only=True) == str(snap)
    files = source_files("hf:datasets/org/corpus")
    assert files == [snap / "data" / "more.jsonl", snap / "data" / "train-00000.parquet"]
    assert source_files(f"hf:datasets/org/corpus@{MAIN}") == files
    ours, theirs = (prepare(DataConfig(path=p), 512, log=lambda s: None)
                    for p in (str(folder), "hf:datasets/org/corpus"))
    assert theirs.content == ours.content and theirs.meta["documents"] == ours.meta["documents"]  # what the files hold
    out = tmp_path / "run"
    invoke("train", "gpt-clm", "data.path=hf:datasets/org/corpus", f"out_dir={out}", *SMALL, "model.dim=32",
           "model.depth=1", "model.heads=2", "model.vocab_size=512")
    assert json.loads((out / "identity.json").read_text())["data"] == ours.content
    with pytest.raises(DataError) as e:
        source_files("hf:datasets/org/absent")
    assert str(e.value) == (f"data.path 'hf:datasets/org/absent': HF_HUB_OFFLINE=1 and not in the Hugging Face cache "
                            f"({hub}); download it once online (the same command with the network), or point "
                            "data.path at a local folder")
    with pytest.raises(DataError, match=r"data.path 'hf:org/corpus': expected a dataset id, "
                                        r"hf:datasets/ORG/NAME\[@REVISION\]"):
        source_files("hf:org/corpus")


def test_only_the_files_selfsup_reads_are_asked_for(hub, models, tmp_path, monkeypatch):
    """The shards the index names, at the commit the first call resolved; never the repository's other copies."""
    import shutil

    from selfsup.models.hf.folder import FILES, resolve

    (folder, hf), _ = models
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    shutil.copyfile(folder / "tokenizer.json", sharded / "tokenizer.json")
    (sharded / "consolidated.safetensors").write_bytes((folder / "model.safetensors").read_bytes())  # a 2nd copy
    shards = sorted(set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) > 1
    cached(hub, "org/sharded", sharded, MAIN, refs=["main"])
    asked, download = [], huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: asked.append((kw["revision"], kw["allow_patterns"])) or download(repo, **kw))
    resolve("hf:org/sharded")
    assert asked == [(None, FILES), (MAIN, shards)]


def test_a_resumed_run_reads_the_commit_it_started_from(hub, models, corpus, tmp_path):
    (folder, _), (old, _) = models
    cached(hub, "org/tiny-llama", folder, MAIN, refs=["main"])
    out = tmp_path / "run"
    invoke("train", "gpt-clm", "model.init=hf:org/tiny-llama", f"data.path={corpus}", f"out_dir={out}", *SMALL)
    cached(hub, "org/tiny-llama", old, OLD, refs=["main"])  # main moved on: another commit, an untied head
    assert load_config("gpt-clm", ["model.init=hf:org/tiny-llama", f"data.path={corpus}"]).model.tied is False
    for command in (["gpt-clm", "model.init=hf:org/tiny-llama", f"data.path={corpus}", f"out_dir={out}", *SMALL],
                    [str(out)]):  # the same command again, or the run directory
        cfg = load_config(command[0], command[1:])
        assert cfg.model.tied is True and cfg.data.tokenizer.endswith(f"{MAIN}/tokenizer.json")
    said = invoke("train", out, "train.max_steps=3")
    assert squeeze(f"resuming from {out / 'checkpoints' / 'step-00000002'}") in squeeze(said)
