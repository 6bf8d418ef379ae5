"""A labeled text set with its own unlabeled corpus, on every machine selfsup runs on: docstrings of the installed
libraries selfsup depends on (torch, numpy, scipy, scikit-learn, sympy, ...) labeled by their library, and the
rest of those libraries' docstrings, unlabeled, to pretrain on. Unlike the labeled docstrings (whose texts are in
the built-in corpus), no labeled text is in the unlabeled corpus: pretraining on OUT/unlabeled and probing on
OUT/train.jsonl, OUT/test.jsonl measures transfer to texts the encoder never saw.

    selfsup data labeled-libraries --out DIR   ->   DIR/train.jsonl, DIR/test.jsonl  ({"text", "label"})
                                                    DIR/unlabeled/<library>/<module path>.txt

Construction, deterministic for given installed versions:
  * docstrings are read with `ast` (nothing imported) from each library's source files, test suites left out;
  * a labeled text has at least `min_chars` characters and is found in one library only (its label would be
    ambiguous otherwise); each library is capped at the count of the smallest (or `per_class`) in a hash order,
    and the split is labeled_docstrings.write_splits': by a hash of the text;
  * the unlabeled corpus is one file per source file: its docstrings (module, classes and functions, then
    methods: ast.walk's order), blank-line separated, less every labeled text (train and test alike) and every
    docstring that repeats one, whole or within it, up to case, punctuation and wrapping. Train on it with
    data.document=file (as the contriever recipe does) for one document per module.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from selfsup.data.builtin.labeled_docstrings import balanced, write_splits
from selfsup.data.builtin.package_docs import package_files, package_root
from selfsup.data.builtin.stdlib_docs import docstrings
from selfsup.data.errors import DataError

# selfsup's own dependencies (networkx comes with torch, rich with typer): installed wherever selfsup is. Each
# has at least 500 docstrings of 40 characters or more that no other of them has.
LIBRARIES = ("huggingface_hub", "kornia", "matplotlib", "networkx", "numpy", "pydantic", "rich", "scipy",
             "sklearn", "sympy", "torch")


def _roots(libraries: list[str], out_dir: Path) -> dict[str, Path]:
    """label -> source folder for every library, checked before any is read: a library folder that holds out_dir,
    or is inside it, is refused (what this writes never lands among what it reads), and so are two that would share
    a label (a folder's own name, as '.' or '..' resolve to)."""
    roots, target = {}, out_dir.expanduser().resolve()
    for name in libraries:
        root = package_root(name).resolve()
        label = root.name
        if not label:
            raise DataError(f"library '{name}' is the file system's root; expected a package or a source folder")
        if root == target or root in target.parents or target in root.parents:
            raise DataError(f"--out '{out_dir}' overlaps the library '{label}' at '{root}'; expected a folder "
                            "outside the sources it reads")
        if label in roots:
            raise DataError(f"'{roots[label]}' and '{root}' would both be labeled '{label}'; expected folders of "
                            "different names")
        roots[label] = root
    return roots


def _norm(text: str) -> str:
    """Lower-case words and digits, one space apart: copies that differ in case, punctuation or wrapping match."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def _holds_a_labeled_text(labeled: set[str], key_len: int = 24):
    """A test for docstrings that repeat a labeled text, whole or inside a longer docstring, up to case, punctuation
    and wrapping: the unlabeled corpus drops them too (else pretraining would see test texts). Inside a longer one,
    from a word's start; a labeled text of under key_len normalized characters only whole."""
    whole = {_norm(t) for t in labeled}
    by_start = defaultdict(list)  # the first key_len characters of a normalized labeled text -> those texts
    for n in whole:
        by_start[n[:key_len]].append(n)

    def holds(doc: str) -> bool:
        n = _norm(doc)
        if n in whole:
            return True
        starts = [0] + [m.end() for m in re.finditer(" ", n)]
        return any(n.startswith(t, i) for i in starts for t in by_start.get(n[i:i + key_len], ()))
    return holds


def build(out_dir: str | Path, libraries: list[str] | None = None, per_class: int | None = 500,
          min_chars: int = 40, test_fraction: float = 0.2) -> dict:
    """Write out_dir/unlabeled/, then out_dir/train.jsonl and out_dir/test.jsonl; return counts per split and
    class, and the unlabeled corpus's file and text counts (and how many repeated a labeled text)."""
    libraries = list(libraries or LIBRARIES)
    if len(set(libraries)) < 2:
        raise DataError(f"libraries {libraries}: expected at least 2 different ones")
    if per_class is not None and per_class < 1:
        raise DataError(f"--per-class {per_class}: expected at least 1")
    pool = Path(out_dir) / "unlabeled"
    if pool.exists() and any(pool.iterdir()):
        raise DataError(f"'{pool}' already holds files; expected a new --out folder (or remove that one), so that "
                        "the unlabeled corpus holds these libraries only")
    files = {label: {path.relative_to(root): list(docstrings(path)) for path in package_files(root)}
             for label, root in _roots(libraries, Path(out_dir)).items()}
    found = {lib: {d for docs in by_file.values() for d in docs if len(d) >= min_chars}
             for lib, by_file in files.items()}
    def no_text_of_its_own() -> DataError:
        owners = Counter(t for texts in found.values() for t in texts)
        alone = sorted(lib for lib, texts in found.items() if all(owners[t] > 1 for t in texts))
        return DataError(f"{', '.join(alone)}: no docstring of at least {min_chars} characters found in it alone; "
                         "expected a library with docstrings of its own (or a lower --min-chars)")
    data = balanced(found, len(found), per_class, 1, lambda kept: no_text_of_its_own())
    if len(data) < len(found):
        raise no_text_of_its_own()
    labeled = set().union(*data.values())
    holds = _holds_a_labeled_text(labeled)
    tmp = pool.with_name("unlabeled.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a build cut off before its rename below
    n_files = n_texts = n_copies = 0
    for lib, by_file in files.items():
        for rel, docs in by_file.items():
            kept = [d for d in docs if d not in labeled and not holds(d)]
            n_copies += sum(d not in labeled for d in docs) - len(kept)
            if kept:
                path = tmp / lib / rel.with_suffix(".txt")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
                n_files += 1
                n_texts += len(kept)
    if pool.exists():
        pool.rmdir()  # empty, checked above
    tmp.rename(pool)
    summary = write_splits(out_dir, data, test_fraction)  # after the corpus: no splits without their corpus
    return dict(unlabeled=dict(path=str(pool), files=n_files, texts=n_texts, copies_left_out=n_copies), **summary)
