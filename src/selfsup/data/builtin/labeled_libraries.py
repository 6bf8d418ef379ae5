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
  * the unlabeled corpus is one file per source file: its docstrings in source order, blank-line separated,
    less every labeled text (train and test alike). Train on it with data.document=file (as the contriever
    recipe does) for one document per module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selfsup.data.builtin.labeled_docstrings import balanced, write_splits
from selfsup.data.builtin.package_docs import package_files, package_root
from selfsup.data.builtin.stdlib_docs import docstrings
from selfsup.data.errors import DataError

# selfsup's own dependencies (networkx comes with torch, rich with typer): installed wherever selfsup is. Each
# has at least 500 docstrings of 40 characters or more that no other of them has.
LIBRARIES = ("huggingface_hub", "kornia", "matplotlib", "networkx", "numpy", "pydantic", "rich", "scipy",
             "sklearn", "sympy", "torch")


def read_libraries(libraries: list[str], out_dir: Path) -> dict[str, dict[Path, list[str]]]:
    """library -> source file (relative to the library's folder) -> its docstrings in source order; a library
    folder that holds out_dir, or is inside it, is refused (what this writes never lands among what it reads)."""
    out, target = {}, out_dir.expanduser().resolve()
    for name in libraries:
        root = package_root(name)
        where = root.resolve()
        if where == target or where in target.parents or target in where.parents:
            raise DataError(f"--out '{out_dir}' overlaps the library '{Path(name).name}' at '{where}'; expected a "
                            "folder outside the sources it reads")
        label = Path(name).name
        if label in out:
            raise DataError(f"two libraries would both be labeled '{label}'; expected folders of different names")
        out[label] = {path.relative_to(root): list(docstrings(path)) for path in package_files(root)}
    return out


def build(out_dir: str | Path, libraries: list[str] | None = None, per_class: int | None = 500,
          min_chars: int = 40, test_fraction: float = 0.2) -> dict:
    """Write out_dir/train.jsonl, out_dir/test.jsonl and out_dir/unlabeled/; return counts per split and class,
    and the unlabeled corpus's file and text counts."""
    libraries = list(libraries or LIBRARIES)
    if len(set(libraries)) < 2:
        raise DataError(f"libraries {libraries}: expected at least 2 different ones")
    pool = Path(out_dir) / "unlabeled"
    if pool.exists() and any(pool.iterdir()):
        raise DataError(f"'{pool}' already holds files; expected a new --out folder (or remove that one), so that "
                        "the unlabeled corpus holds these libraries only")
    files = read_libraries(libraries, Path(out_dir))
    found = {lib: {d for docs in by_file.values() for d in docs if len(d) >= min_chars}
             for lib, by_file in files.items()}
    data = balanced(found, len(found), per_class, 0, lambda kept: DataError(
        f"{kept} of the libraries have docstrings of at least {min_chars} characters; need at least 2"))
    summary = write_splits(out_dir, data, test_fraction)
    labeled = set().union(*data.values())
    tmp = pool.with_name("unlabeled.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a build cut off before its rename below
    n_files = n_texts = 0
    for lib, by_file in files.items():
        for rel, docs in by_file.items():
            kept = [d for d in docs if d not in labeled]
            if kept:
                path = tmp / lib / rel.with_suffix(".txt")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
                n_files += 1
                n_texts += len(kept)
    if pool.exists():
        pool.rmdir()  # empty, checked above
    tmp.rename(pool)
    return dict(unlabeled=dict(path=str(pool), files=n_files, texts=n_texts), **summary)
