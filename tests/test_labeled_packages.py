"""The package descriptions labeled by Section, read from a small status file made here (the machine's own apt lists
and dpkg database differ from machine to machine)."""

import json

import pytest

from selfsup.data.builtin.labeled_packages import build, stanzas
from selfsup.data.errors import DataError
from tests.test_cli import invoke


def _stanza(name: str, section: str, synopsis: str, long: str = "") -> str:
    body = "".join(f" {line}\n" for line in long.splitlines())
    return f"Package: {name}\nStatus: install ok installed\nSection: {section}\nDescription: {synopsis}\n{body}"


@pytest.fixture
def status(tmp_path):
    stanzas_ = []
    for i in range(30):
        stanzas_.append(_stanza(f"game{i}", "games", f"arcade game number {i} with levels",
                                f"Shoot the aliens in level {i}.\n.\nFun for all."))
        stanzas_.append(_stanza(f"sci{i}", "contrib/science", f"numerical solver {i} for equations"))
        if i < 20:
            stanzas_.append(_stanza(f"snd{i}", "sound", f"audio mixer {i} for the desktop"))
        if i < 5:  # a tiny Section: dropped
            stanzas_.append(_stanza(f"mail{i}", "mail", f"mail client {i} for the terminal"))
    stanzas_.append(_stanza("dup-a", "games", "a text under two Sections is ambiguous"))
    stanzas_.append(_stanza("dup-b", "science", "a text under two Sections is ambiguous"))
    stanzas_.append(_stanza("short", "games", "tiny"))
    stanzas_.append("Package: no-section\nDescription: a stanza without a Section is not labeled\n")
    path = tmp_path / "status"
    path.write_text("\n".join(stanzas_))
    return path


def test_stanzas_join_the_long_description_and_drop_the_archive_area(status):
    found = dict((text, section) for section, text in stanzas(status.read_text()))
    assert found["arcade game number 3 with levels Shoot the aliens in level 3. Fun for all."] == "games"
    assert found["numerical solver 3 for equations"] == "science"
    assert "a stanza without a Section is not labeled" not in found


def test_labeled_packages_are_balanced_disjoint_unambiguous_and_deterministic(status, tmp_path):
    summary = build(tmp_path / "a", classes=3, per_class=None, min_per_class=10, source=status)
    assert summary["source"] == str(status)
    assert summary["classes"] == ["games", "science", "sound"] and summary["per_class"] == 20  # mail (5) dropped
    train = [json.loads(line) for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 60 and 0 < len(test) < 25
    assert {r["text"] for r in train}.isdisjoint(r["text"] for r in test)
    texts = {r["text"] for r in train + test}
    assert "a text under two Sections is ambiguous" not in texts and "tiny" not in texts
    for split in ("train", "test"):
        assert sum(summary[split]["per_class"].values()) == summary[split]["examples"]
    build(tmp_path / "b", classes=3, per_class=None, min_per_class=10, source=status)
    assert (tmp_path / "b" / "test.jsonl").read_text() == (tmp_path / "a" / "test.jsonl").read_text()
    assert build(tmp_path / "c", classes=2, per_class=12, min_per_class=10, source=status)["classes"] == [
        "games", "science"]  # the two largest, capped


def test_labeled_packages_say_what_was_wrong(status, tmp_path):
    with pytest.raises(DataError, match="need at least 2 classes"):
        build(tmp_path, min_per_class=100, source=status)
    with pytest.raises(DataError, match="is not a file; expected a dpkg status file"):
        build(tmp_path, source=tmp_path / "missing")
    with pytest.raises(DataError, match="--classes 1: expected at least 2"):
        build(tmp_path, classes=1, source=status)


def test_cli_data_labeled_packages(status, tmp_path):
    text = invoke("data", "labeled-packages", "--out", tmp_path / "out", "--source", status, "--min-per-class", "10")
    assert "games" in text and "total" in text and (tmp_path / "out" / "train.jsonl").is_file()
