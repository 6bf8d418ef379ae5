"""Tokens per second of tokenizing a corpus into shards (`selfsup data tokenize`): one worker process vs every core,
beside tokenizing in the main process with tokenizers' own threads (data.workers=0, what every run did before).

The corpus is made here from what is on every machine that has selfsup: the sources and docs of installed packages
(.py .pyi .c .h .hpp .cpp .md .rst .txt .html .js .json .yaml .xml under the venv, /usr/lib, /usr/share and
/usr/include; each file once, in sorted order), concatenated up to --size bytes into 100 MB .txt parts under
--corpus (made once, then reused). Documents are paragraphs (data.document=paragraph: blocks between blank lines).
A byte-level BPE of --vocab tokens is trained once on the first 20 MB, so the timed runs measure tokenizing alone,
as `--tokenizer` runs it: hashing the files (the shards' identity), reading, splitting, encoding, writing.

Each setting tokenizes the whole corpus once, in its own child process; wall time, CPU time (the child and its
workers) and the load average before it are recorded. On a machine shared with other jobs the CPU figures (tokens
per CPU-second) carry over better than the wall-clock ones.

    .venv/bin/python bench/tokenize_throughput.py                       # 1 GB corpus, workers 0, 1 and all cores
    .venv/bin/python bench/tokenize_throughput.py --size 2e8            # a 200 MB slice on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF, getrusage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine_info, run_child, write_json  # noqa: E402

ROOTS = (sys.prefix, "/usr/lib", "/usr/share", "/usr/include")
SUFFIXES = {".py", ".pyi", ".c", ".h", ".hpp", ".cpp", ".md", ".rst", ".txt", ".html", ".js", ".json", ".yaml",
            ".xml"}
PART = 100 << 20  # bytes a corpus file


def build_corpus(folder: Path, size: int) -> int:
    """Installed sources and docs concatenated into `folder`/part-NNN.txt up to `size` bytes; the bytes written."""
    if (done := folder / "done.json").is_file() and json.loads(done.read_text())["size"] == size:
        return json.loads(done.read_text())["written"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    seen, written, part, handle = set(), 0, 0, None
    for root in ROOTS:
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(d, name)
                if os.path.splitext(name)[1] not in SUFFIXES or not os.path.isfile(path):
                    continue
                try:
                    st = os.stat(path)
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                    with open(path, "rb") as f:
                        data = f.read(size - written)
                except OSError:
                    continue
                if handle is None or handle.tell() >= PART:
                    handle and handle.close()
                    handle = open(folder / f"part-{part:03d}.txt", "wb")
                    part += 1
                handle.write(data + b"\n\n")  # a blank line: the next file starts a new paragraph
                written += len(data) + 2
                if written >= size:
                    handle.close()
                    done.write_text(json.dumps({"size": size, "written": written}))
                    return written
    handle.close()
    done.write_text(json.dumps({"size": size, "written": written}))
    return written


def train_tokenizer(corpus: Path, vocab: int, out: Path) -> None:
    """A byte-level BPE as a run trains one, on the corpus's first 20 MB of documents."""
    from collections import Counter

    from selfsup.data.read.text import read_documents
    from selfsup.data.read.tokenizer import train_bpe

    def first(docs, chars: int):
        for d in docs:
            chars -= len(d)
            if chars < 0:
                return
            yield d

    docs = read_documents(sorted(corpus.glob("part-*.txt")), Counter(), 200_000, document="paragraph")
    train_bpe(first(docs, 20 << 20), vocab).save(str(out))


def child(corpus: str, tokenizer: str, workers: int, out: str) -> dict:
    """One setting, timed: tokens.tokenize as `selfsup data tokenize CORPUS --tokenizer T --workers W` runs it."""
    from selfsup.config import DataConfig
    from selfsup.data.cache.tokens import tokenize

    load = os.getloadavg()[0]
    shutil.rmtree(out, ignore_errors=True)
    t0, main0, self0, kids0 = time.perf_counter(), time.thread_time(), _cpu(RUSAGE_SELF), _cpu(RUSAGE_CHILDREN)
    meta = tokenize(DataConfig(path=corpus, document="paragraph", tokenizer=tokenizer, workers=workers), None,
                    Path(out), log=lambda s: None)
    wall, main = time.perf_counter() - t0, time.thread_time() - main0
    own, kids = _cpu(RUSAGE_SELF) - self0, _cpu(RUSAGE_CHILDREN) - kids0
    tokens = sum(meta["tokens"].values())
    shutil.rmtree(out, ignore_errors=True)
    # What cannot be shared out: the main thread, and with workers the main process's other threads too (the
    # pool's pickling). On an idle machine with enough cores the time falls to about this share of the CPU time.
    serial = own if workers else main
    return dict(workers=workers, wall_s=wall, tokens=tokens, documents=sum(meta["documents"].values()),
                tokens_per_s=tokens / wall, cpu_s=own + kids, main_thread_cpu_s=main, process_cpu_s=own,
                workers_cpu_s=kids, tokens_per_cpu_s=tokens / (own + kids), serial_cpu_s=serial,
                ceiling_tokens_per_s=tokens / serial, load_before=load, load_after=os.getloadavg()[0])


def _cpu(who) -> float:
    r = getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=float, default=1e9, help="corpus bytes (default 1e9)")
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/selfsup-tokenize-bench"), help="where it is made")
    ap.add_argument("--vocab", type=int, default=32768, help="BPE tokens (default 32768)")
    ap.add_argument("--workers", default=None, help="comma-separated settings (default 0,1,cores)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # internal: one setting in a fresh process
    args = ap.parse_args()
    if args.child:
        corpus, tokenizer, workers, out = args.child
        print(json.dumps(child(corpus, tokenizer, int(workers), out)))
        return
    cores = len(os.sched_getaffinity(0))
    settings = [int(w) for w in (args.workers or f"0,1,{cores}").split(",")]
    text = args.corpus / f"corpus-{int(args.size)}"
    written = build_corpus(text, int(args.size))
    tokenizer = args.corpus / f"tokenizer-{args.vocab}.json"
    if not tokenizer.is_file():
        t0 = time.perf_counter()
        train_tokenizer(text, args.vocab, tokenizer)
        print(f"BPE of {args.vocab} tokens trained on the first 20 MB in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"corpus: {written / 1e6:,.0f} MB in {text}; machine: {cores} cores, load {os.getloadavg()[0]:.1f}",
          flush=True)
    rows = []
    for w in settings:
        r = run_child(__file__, ["--child", str(text), str(tokenizer), str(w), str(args.corpus / "shards")],
                      timeout=24 * 3600)
        rows.append(r)
        print(f"workers {w}: {r['tokens']:,} tokens in {r['wall_s']:.0f} s = {r['tokens_per_s'] / 1e6:.2f} M "
              f"tokens/s; {r['cpu_s']:.0f} CPU-s ({r['tokens_per_cpu_s'] / 1e6:.2f} M tokens per CPU-s), "
              f"{r['serial_cpu_s']:.0f} of them serial (ceiling {r['ceiling_tokens_per_s'] / 1e6:.2f} M tokens/s); "
              f"load {r['load_before']:.1f} before, {r['load_after']:.1f} after", flush=True)
    path = write_json("tokenize_throughput.json", dict(machine=machine_info(), corpus_bytes=written,
                                                       vocab=args.vocab, rows=rows))
    print(f"written {path}")


if __name__ == "__main__":
    main()
