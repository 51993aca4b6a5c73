"""Progress of long loops as plain lines: done/total, rate and ETA, never a carriage-return bar.

Lines go to the job's log (through `logging`) and, when the rule's shell line opened file
descriptor 3 on Snakemake's own stderr (`3>&2 > {log} 2>&1`), to the Snakemake console too, so a
user sees a long job move without `tail -f` on its log. Descriptor 3 is taken as the process found
it, when this module is first imported (before a job opens any file): run by hand without `3>&2`,
the job's first file gets the number 3, and the annotation cache's SQLite file once got progress
lines over its header. The log gets a line at the start, at
every 10% and at the end; the console gets the start, a line at most every `every` seconds, and
the end, so a short job says two lines there and a long one keeps saying where it is.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("progress")

CONSOLE_FD = 3
T = TypeVar("T")


def _inherited_console() -> int | None:
    """A duplicate of descriptor 3 as inherited, or None: later files opened as 3 are not the console."""
    try:
        return os.dup(CONSOLE_FD)
    except OSError:
        return None


_CONSOLE = _inherited_console()


def console_open() -> bool:
    return _CONSOLE is not None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """`with Progress(total, "llama-7b shard 3", "sample") as p: ... p.update()`."""

    def __init__(self, total: int, label: str, unit: str = "item", every: float = 30.0, console: bool = True):
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.done = 0
        self.started = self.last_console = time.monotonic()
        self.last_tenth = 0
        self.console = console and console_open()

    def __enter__(self) -> Progress:
        self._say(f"{self.label}: 0/{self.total} {self.unit}s", self.console)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            elapsed = time.monotonic() - self.started
            self._say(f"{self.label}: {self.done}/{self.total} {self.unit}s done in {_duration(elapsed)}", self.console)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self.total:
            return  # the end is said on leaving
        now = time.monotonic()
        tenth = self.done * 10 // max(self.total, 1)
        to_console = self.console and now - self.last_console >= self.every
        if tenth > self.last_tenth or to_console:
            self.last_tenth = max(tenth, self.last_tenth)
            if to_console:
                self.last_console = now
            self._say(self.line(now), to_console)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        shown = f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}" if rate > 0 else "-"
        remaining = _duration(eta) if eta != float("inf") else "?"
        share = self.done / max(self.total, 1)
        return f"{self.label}: {self.done}/{self.total} {self.unit}s ({share:.0%}), {shown}, ETA {remaining}"

    def _say(self, text: str, to_console: bool) -> None:
        log.info(text)
        if to_console:
            try:
                os.write(_CONSOLE, f"[{time.strftime('%H:%M:%S')}] {text}\n".encode("utf8", "replace"))
            except OSError:
                self.console = False


def progress(items: Iterable[T], label: str, unit: str = "item", total: int | None = None,
             every: float = 30.0) -> Iterator[T]:
    """Iterate `items`, reporting progress like `Progress`."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with Progress(len(items) if total is None else total, label, unit, every) as bar:
        for item in items:
            yield item
            bar.update()


@contextlib.contextmanager
def bars_collapsed() -> Iterator[None]:
    """Within, what is written to stderr (a library's tqdm bar, which redraws its line with carriage returns)
    reaches the job's log once the block ends, each line as it last stood: a log holds lines, not redraws."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        sys.stderr.write("\n".join(line.rsplit("\r", 1)[-1] for line in captured.getvalue().split("\n")))
