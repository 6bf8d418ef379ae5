"""Progress a person can watch, the same for every long job (training, evaluation, embedding, data cleaning,
decoding, tokenizing): a rich bar on a terminal; where output goes to a file or a pipe (a cluster job's
`> train.log`, where a bar draws nothing), plain lines flushed at once, such as

    decoding images 1,200/5,000 items  512 items/s  eta 7s
    step 120/2,000  loss 4.0525  3,412 tokens/s  eta 9m10s

    with Progress("decoding images", total=len(items), unit="items") as p:
        p.advance(len(chunk))              # a plain line at most every `every_s` seconds
    for batch in track(batches, "encoding", unit="batches"):  # the same around an iterable
        ...

`update(done, **fields)` sets the count and named texts shown after it (training: its loss and throughput);
every_s=0 prints a line at every update. Closing prints the final count unless the last line already showed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from rich.console import Console

EVERY_S = 10.0  # seconds between plain lines: a log a person can read, not one a line per batch


class Progress:
    def __init__(self, what: str, total: int | None = None, unit: str | None = None, done: int = 0,
                 every_s: float = EVERY_S, console: Console | None = None, transient: bool = True):
        """unit: what `done` counts, plural, for a measured rate (None: no rate; "bytes" are shown in kB, MB, GB); done: where a
        resumed job starts (the rate and ETA count from there); console: stderr unless given."""
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.console = console or Console(stderr=True)
        self.done = self.started_at = done
        self.fields: dict[str, str] = {}
        self.start = self.last_line = time.monotonic()
        self.shown = (done, {})  # what the last plain line showed
        self.bar = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar, TimeRemainingColumn

            self.bar = Bar(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[text]}"), TimeElapsedColumn(), TextColumn("eta"),
                           TimeRemainingColumn(), console=self.console, transient=transient)
            self.task = self.bar.add_task(what, total=total, completed=done, text="")
            self.bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int = 1, **fields: str) -> None:
        self.update(self.done + n, **fields)

    def update(self, done: int | None = None, **fields: str) -> None:
        if done is not None:
            self.done = done
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, text="  ".join([*self.fields.values(), *self._rate()]))
        elif time.monotonic() - self.last_line >= self.every_s:
            self._print_line()

    def say(self, text: str) -> None:
        """A line of its own (rich markup), above the bar on a terminal."""
        self.console.print(text)

    def line(self) -> str:
        """The plain line: what, count/total, the fields, the measured rate, the time left."""
        count = self._amount(self.done) + (f"/{self._amount(self.total)}" if self.total is not None else "")
        if self.unit not in (None, "bytes"):
            count += f" {self.unit}"
        parts = [f"{self.what} {count}", *self.fields.values(), *self._rate()]
        rate = self._per_s()
        if self.total is not None and rate > 0 and self.done < self.total:
            parts.append(f"eta {duration((self.total - self.done) / rate)}")
        return "  ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.shown != (self.done, self.fields):
            self._print_line()

    def _print_line(self) -> None:
        self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()
        self.last_line, self.shown = time.monotonic(), (self.done, dict(self.fields))

    def _per_s(self) -> float:
        elapsed = time.monotonic() - self.start
        return (self.done - self.started_at) / elapsed if elapsed > 0 else 0.0

    def _rate(self) -> list[str]:
        if self.unit is None or self.done == self.started_at:
            return []
        if self.unit == "bytes":
            return [f"{size(self._per_s())}/s"]
        return [f"{self._per_s():,.0f} {self.unit}/s"]

    def _amount(self, n: int) -> str:
        return size(n) if self.unit == "bytes" else f"{n:,}"


def track(items: Iterable, what: str, unit: str | None = None, console: Console | None = None) -> Iterator:
    """Each of `items`, counted as it is done (its total when it has a length)."""
    total = len(items) if hasattr(items, "__len__") else None
    with Progress(what, total, unit, console=console) as p:
        for item in items:
            yield item
            p.advance()


def size(n: float) -> str:
    """812 B, 12.3 kB, 4.1 MB, 2.0 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:.0f} B"


def duration(seconds: float) -> str:
    """9m10s, 2h05m, 7s."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
