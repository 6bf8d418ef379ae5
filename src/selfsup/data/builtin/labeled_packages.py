"""A second real labeled text set on every Debian machine: package descriptions labeled by their archive Section
(libs, python, games, science, ...). Its texts are not in the built-in pretraining corpus (the stdlib docstrings),
so it measures transfer, where the labeled docstrings are transductive.

    selfsup data labeled-packages --out DIR   ->   DIR/train.jsonl, DIR/test.jsonl  ({"text", "label"})

Where the records come from: `apt-cache dumpavail` (every package the apt lists know, tens of thousands, their
one-line synopsis) when apt has lists, else dpkg's status database (/var/lib/dpkg/status: the installed packages,
hundreds, with their long descriptions), or a file given as `source` in either's format (RFC 822-style stanzas).

Construction, deterministic for a given source:
  * a text is a package's Description: the synopsis, then the long description's lines (" ." paragraph breaks
    dropped); the Section loses its archive area ("contrib/games" is "games");
  * a text found under more than one Section is dropped (its label would be ambiguous), duplicates inside a
    Section count once, texts under `min_chars` characters are dropped;
  * Sections with fewer than `min_per_class` texts are dropped; of the rest the `classes` largest are kept, each
    capped at the count of the smallest of them (or `per_class`), keeping the texts whose salted SHA-1 comes first;
  * the split is labeled_docstrings.write_splits': by a hash of the text, test_fraction of it to test.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from selfsup.data.builtin.labeled_docstrings import balanced, write_splits
from selfsup.data.errors import DataError

DPKG_STATUS = Path("/var/lib/dpkg/status")


def read_source(source: str | Path | None = None) -> tuple[str, str]:
    """(where the records came from, their text): `source` if given, else apt-cache dumpavail, else dpkg status."""
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"--source '{path}' is not a file; expected a dpkg status file or apt-cache dumpavail's "
                            "output")
        return str(path), path.read_text(encoding="utf-8", errors="replace")
    if shutil.which("apt-cache"):
        done = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, errors="replace")
        if done.returncode == 0 and "\nPackage:" in done.stdout:
            return "apt-cache dumpavail", done.stdout
    if DPKG_STATUS.is_file():
        return str(DPKG_STATUS), DPKG_STATUS.read_text(encoding="utf-8", errors="replace")
    raise DataError("neither apt-cache dumpavail nor /var/lib/dpkg/status is on this machine; expected a Debian-"
                    "based system, or --source FILE in dpkg's status format")


def stanzas(text: str):
    """(Section, Description) of each stanza that has both; continuation lines (leading space) joined."""
    for block in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        name = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and name is not None:
                fields[name].append(line.strip())
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = [value.strip()]
        if "Section" in fields and "Description" in fields:
            lines = [w for w in fields["Description"] if w and w != "."]
            yield fields["Section"][0].split("/")[-1], " ".join(lines)


def labeled_packages(text: str, classes: int = 12, per_class: int | None = 400, min_per_class: int = 50,
                     min_chars: int = 20) -> dict[str, list[str]]:
    """label -> texts, at most `classes` labels, balanced."""
    found: dict[str, set[str]] = defaultdict(set)
    for section, description in stanzas(text):
        if len(description) >= min_chars:
            found[section].add(description)
    return balanced(found, classes, per_class, min_per_class, lambda kept: DataError(
        f"{kept} Section(s) have at least {min_per_class} package descriptions; need at least 2 classes (lower "
        "--min-per-class)"))


def build(out_dir: str | Path, classes: int = 12, per_class: int | None = 400, min_per_class: int = 50,
          test_fraction: float = 0.2, source: str | Path | None = None) -> dict:
    """Write out_dir/train.jsonl and out_dir/test.jsonl; return counts per split and class, and the source."""
    if classes < 2:
        raise DataError(f"--classes {classes}: expected at least 2")
    where, text = read_source(source)
    data = labeled_packages(text, classes, per_class, min_per_class)
    return dict(source=where, **write_splits(out_dir, data, test_fraction))
