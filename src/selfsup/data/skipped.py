"""What a reader skipped: counted by reason (a plain Counter, as training counts it), and, in a `Skipped`, each
skipped input's name beside its reason, for `selfsup embed` to list (names only, never contents).

    skipped = Skipped()
    skip(skipped, "corrupt image", "cats/3.png")          # a whole file
    skip(skipped, "no image in tar sample", "a.tar", "000007")   # a key inside it: tar key, line, row index
"""

from __future__ import annotations

from collections import Counter


class Skipped(Counter):
    """A Counter of skips by reason that also lists each one as (file, key, reason), in the order met."""

    def __init__(self):
        super().__init__()
        self.named: list[tuple[str, str | int | None, str]] = []


def skip(skipped: Counter, reason: str, file: str, key: str | int | None = None) -> None:
    """Count one skipped input under `reason`; a `Skipped` also lists it: `file` under the data path, `key` inside
    it (a tar sample's key, a line number, a row index) or None for the whole file."""
    skipped[reason] += 1
    if isinstance(skipped, Skipped):
        skipped.named.append((file, key, reason))
