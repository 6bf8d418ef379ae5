"""How long the `selfsup` command takes to answer what needs no work: help, the recipe list, a config error.

    python bench/cli_startup.py [--runs 5] [SRC_DIR ...]

Each command runs `--runs` times in a fresh process (python -m selfsup, PYTHONPATH=SRC_DIR) and the median wall
time is printed per command; with several source folders (e.g. the old tree from `git archive HEAD~1 src | tar -x
-C /tmp/before`, then src) a column each, side by side. Default: this checkout's src. Imports only the standard
library, so that it times the command and not itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["--help", "recipes", "train --help", "train gpt-clm model.dimm=3"]


def wall(src: Path, command: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selfsup", *command.split()], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="*", type=Path, default=[Path(__file__).resolve().parents[1] / "src"])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"median wall seconds of {args.runs} runs, {sys.executable}")
    print(f"{'command':<36}" + "".join(f"{str(s):>24}" for s in args.src))
    for command in COMMANDS:
        medians = [statistics.median(wall(src, command) for _ in range(args.runs)) for src in args.src]
        print(f"{'selfsup ' + command:<36}" + "".join(f"{m:>24.2f}" for m in medians), flush=True)


if __name__ == "__main__":
    main()
