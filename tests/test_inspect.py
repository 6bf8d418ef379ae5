"""`selfsup inspect PATH`: a text folder (txt, jsonl, parquet), an image folder with class sub-folders, a pairs
.jsonl and a tiny trained run each print what selfsup sees; a missing path and an empty folder answer in one line
(model folders: tests/test_inspect_model.py); a text folder is inspected without importing torch."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfsup import cli
from selfsup.inspect import inspect_path


def rows_of(path, kind=None):
    return dict(inspect_path(str(path), kind)[1])


@pytest.fixture
def text_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("the first line of plain text " * 20 + "\nsecond line\n\nthird line\n")
    (d / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}", "label": "ab"[i % 2], "id": i})
                                         for i in range(5)) + "\n")
    pq.write_table(pa.table({"text": ["p1", "p2", "p3", "p4"], "n": [1, 2, 3, 4]}), d / "c.parquet")
    return d


def test_a_text_folder(text_folder):
    r = rows_of(text_folder)
    assert r["read as"].startswith("text (guessed")
    assert r["files"].startswith("3, ")
    assert "1 .txt" in r["by suffix"] and "1 .jsonl" in r["by suffix"] and "1 .parquet" in r["by suffix"]
    assert r["rows"] == "3 lines, 5 .jsonl lines, 4 Parquet rows"  # blank lines are not rows
    assert r["fields of b.jsonl"] == "text, label, id"
    assert r["classes of b.jsonl"] == "2: a (3), b (2)"
    assert r["schema of c.parquet"] == "text: string, n: int64"
    first = r["first document"]
    assert first.startswith("'the first line of plain text") and first.endswith("…'") and len(first) < 210


def test_a_text_folder_is_inspected_without_torch(text_folder):
    code = ("import sys\nfrom selfsup.cli import main\nsys.argv = ['selfsup', 'inspect', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(text_folder)], capture_output=True, text=True,
                          timeout=60)
    assert "Parquet rows" in proc.stdout and proc.stdout.splitlines()[-1] == "False", proc.stderr


def test_an_image_folder_with_classes(tmp_path):
    from PIL import Image

    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 10), (i, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    r = rows_of(tmp_path / "imgs")
    assert r["read as"].startswith("image (guessed")
    assert r["files"].startswith("5, ") and r["by suffix"].startswith("5 .png")
    assert r["images"] == "5 image files"
    assert r["classes (sub-folders)"] == "2: cat (3), dog (2)"
    assert r["first image"] == "0.png: 12×10, mode RGB"


def test_a_pairs_jsonl(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "text": "a black square"}, {"image": "gone.png", "text": "nothing"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = rows_of(tmp_path / "pairs.jsonl")
    assert r["read as"].startswith("pairs (guessed")
    assert r["pairs"] == "2 .jsonl lines"
    assert r["fields of pairs.jsonl"] == "image, text"
    assert r["first pair"] == "image: a.png (found); caption: 'a black square'"
    forced = rows_of(tmp_path / "pairs.jsonl", "text")  # --kind reads it otherwise, and says so
    assert forced["read as"] == "text (--kind)" and forced["rows"] == "2 .jsonl lines"
    out = CliRunner().invoke(cli.app, ["inspect", str(tmp_path / "pairs.jsonl"), "--kind", "text"]).output
    assert "text (--kind)" in out and "'a black square'" in out


def test_a_trained_run(tmp_path, one_thread):
    from rich.console import Console

    from selfsup.train import trainer
    from tests.test_train import cfg_for

    (tmp_path / "c.txt").write_text("\n".join(f"line {i} of a small corpus of words" for i in range(200)))
    run = tmp_path / "run"
    trainer.train(cfg_for(tmp_path / "c.txt", run, "train.max_steps=2"), Console(file=open("/dev/null", "w")))
    title, rows = inspect_path(str(run))
    r = dict(rows)
    assert title == f"run directory {run}"
    assert (r["recipe"], r["objective"]) == ("gpt-clm", "clm")
    assert r["model"] == "dim 32, depth 2, heads 2, context 32"
    assert r["parameters"].endswith("(in model.safetensors)") and int(r["parameters"].split()[0].replace(",", ""))
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(run / "tokenizer.json")).get_vocab_size()  # a small corpus learns < 512
    assert r["tokenizer"] == f"vocab {vocab:,}; special tokens <|endoftext|> <|pad|> <|mask|>"
    assert r["steps done"] == "2 (latest checkpoint)"
    assert r["latest checkpoint"] == "checkpoints/step-00000002, verified"
    assert r["data fingerprint"].endswith(f"(of {tmp_path / 'c.txt'})")
    assert r["sessions"].startswith("1; ") and r["status"] == "finished after 2 steps"
    out = CliRunner().invoke(cli.app, ["inspect", str(run)]).output
    assert "latest checkpoint" in out and "finished after 2 steps" in out


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "nope", "'{p}/nope' does not exist; expected a data file or folder, or a run directory"),
    (lambda p: p, "'{p}' is an empty folder; expected data files in it (or a run directory)"),
])
def test_errors_are_one_line(tmp_path, make, expected):
    path = make(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "selfsup", "inspect", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: " + expected.format(p=tmp_path)


def test_npz_tar_and_audio(tmp_path):
    import io
    import tarfile
    import wave

    import numpy as np
    from PIL import Image

    d = tmp_path / "shards"
    d.mkdir()
    np.savez(d / "a.npz", images=np.zeros((7, 8, 8, 3), np.uint8), labels=np.zeros(7, np.int64))
    with tarfile.open(d / "b.tar", "w") as tar:
        for key in ("s0", "s1", "s2"):
            png = io.BytesIO()
            Image.new("RGB", (4, 4)).save(png, "png")
            for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    r = rows_of(d)
    assert r["read as"].startswith("image (guessed") and r["images"] == "7 images in .npz, 3 samples in .tar shards"
    assert r["first image"] == "a.npz (a .npz file: its images are read when the cache is built)"

    for cls in ("hum", "beep"):
        (tmp_path / "sounds" / cls).mkdir(parents=True)
        with wave.open(str(tmp_path / "sounds" / cls / "0.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    r = rows_of(tmp_path / "sounds")
    assert r["read as"].startswith("audio (guessed") and r["clips"] == "2 files"
    assert r["classes (sub-folders)"] == "2: beep (1), hum (1)" and r["first clip"].startswith("0.wav, 1.6 KB")


def test_large_inputs_are_counted_in_their_first_files(tmp_path, monkeypatch):
    from selfsup.data import inspect as data_inspect

    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("a line\n" * 100)  # 700 bytes each
    monkeypatch.setattr(data_inspect, "COUNT_BYTES", 1000)
    assert rows_of(tmp_path)["rows in the first 1 of 3 files"] == "100 lines"


def test_what_a_run_would_not_read_is_said(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\nnot json\n')
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    r = rows_of(tmp_path)
    assert r["rows"] == "2 .jsonl lines, 1 unreadable files"
    assert r["fields of a.jsonl"] == "body" and r["schema of b.parquet"] == "unreadable as Parquet"
    assert r["first document"] == "none readable (skipped: 1 no text field, 1 bad json, 1 unreadable file)"
