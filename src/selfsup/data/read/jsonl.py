"""One line of a .jsonl file as a JSON value, safely: the one parser of every selfsup reader of .jsonl (text
documents, pairs and captions, labeled evaluation sets, the cleaning tools).

    record = json_line(line)      # the parsed value, or None when the line cannot be used

None, for the caller to skip and count as its bad JSON, when the line is not valid UTF-8 or not JSON, when it
nests deeper than the parser can follow (a line of ten thousand '[' raises RecursionError in Python's json), or
when a top-level string holds an unpaired surrogate ("\\ud800" is valid JSON, but no UTF-8 writer or tokenizer
takes it, so it would stop a run later, far from its line). Only top-level strings are checked: they are what
readers take (`text`, `label`, a media path); nested values are never read.
"""

from __future__ import annotations

import json


def json_line(line: str | bytes):
    """The JSON value of one line, or None (see the module docstring)."""
    try:
        if isinstance(line, bytes):
            line = line.decode("utf-8")  # strict: json.loads would let encoded surrogates through
        value = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    strings = value.values() if isinstance(value, dict) else [value]
    if any(isinstance(s, str) and not _encodable(s) for s in strings):
        return None
    return value


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
