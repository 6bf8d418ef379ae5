"""`hf:` ids: a repository of the Hugging Face Hub as the local snapshot folder huggingface_hub keeps in its cache
(HF_HUB_CACHE, default ~/.cache/huggingface/hub), holding only the files asked for. Online, missing files are
downloaded (a cached file is not fetched again); offline (HF_HUB_OFFLINE=1, or the Hub cannot be reached) the cache
alone answers. A snapshot folder is named by the commit it holds, which is what a run records.

    folder = snapshot("hf:org/tiny-llama@v1", ["config.json"], "model.init", ConfigError)   # .../snapshots/<commit>
    folder = snapshot("hf:datasets/org/corpus", ["*.parquet"], "data.path", DataError)

Every failure is one line (`error`) naming the id, what was wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

DATASETS = "datasets/"  # hf:datasets/ORG/NAME names a dataset repository, as the Hub's own URLs do


def form(kind: str) -> str:
    """How an id of this repository kind is spelt, for messages."""
    return f"hf:{DATASETS if kind == 'dataset' else ''}ORG/NAME[@REVISION]"


def parse(source: str) -> tuple[str, str, str | None]:
    """'hf:[datasets/]ORG/NAME[@REVISION]' -> (kind: model or dataset, ORG/NAME, REVISION or None)."""
    name, _, revision = source.removeprefix("hf:").partition("@")
    kind = "dataset" if name.startswith(DATASETS) else "model"
    return kind, name.removeprefix(DATASETS), revision or None


def commit(folder: Path) -> str:
    """The commit a snapshot folder holds: its name."""
    return folder.name


def snapshot(source: str, patterns: list[str], what: str, error: type[Exception], kind: str = "model",
             revision: str | None = None) -> Path:
    """The snapshot folder of `source` (an id of a `kind` repository) with the files matching `patterns` (fnmatch, as
    huggingface_hub matches them). what: the setting that named it (model.init, data.path); revision: instead of the
    id's own (a commit already resolved, so a second call sees the same files)."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    found, repo, rev = parse(source)
    if found != kind or not repo:
        raise error(f"{what} '{source}': expected a {kind} id, {form(kind)}")
    rev = revision or rev
    try:
        return Path(huggingface_hub.snapshot_download(repo, repo_type=kind, revision=rev, allow_patterns=patterns))
    except errors.HFValidationError as e:
        raise error(f"{what} '{source}': '{repo}' is no repository id ({_first(e)}); expected {form(kind)}") from None
    except errors.RevisionNotFoundError:
        raise error(f"{what} '{source}': the Hub has no revision '{rev}' of {repo}; expected a branch, tag or "
                    "commit of it") from None
    except errors.RepositoryNotFoundError:  # gated ones too
        raise error(f"{what} '{source}': the Hub has no {kind} {repo} that this machine may read; check the name, "
                    "or log in (`hf auth login`, or HF_TOKEN) for a private or gated one") from None
    except errors.LocalEntryNotFoundError as e:  # offline (or the Hub unreachable) and not in the cache
        why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        partly = "only partly " if isinstance(e, errors.IncompleteSnapshotError) else "not "
        raise error(f"{what} '{source}': {why} and {partly}in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
                    f"download it once online (the same command with the network), or point {what} at a local "
                    "folder") from None
    except (errors.HfHubHTTPError, OSError) as e:
        raise error(f"{what} '{source}': {repo} could not be fetched ({_first(e)}); expected the Hub to serve it "
                    f"(check the network and HF_ENDPOINT), or point {what} at a local folder") from None


def _first(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
