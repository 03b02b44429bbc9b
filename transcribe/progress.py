"""Progress of a long run between its log lines: a tqdm bar on a terminal, plain lines in a log.

Two helpers, one rule. `bar(...)` is for every long loop of the other commands (`data`,
`evaluate`, `learning-curve`, `lr-sweep`, `search`, `baseline`, `ablation`, `transfer`): it is
tqdm on a terminal and, when the stream is not one, a `Lines` counter with tqdm's calls that
prints one plain line every PLAIN_EVERY_SECONDS and one at the end, never a '\r'. `Progress`
below is training's, whose fraction follows two budgets.

A run ends at whichever budget is spent first, its steps or its seconds (`--max-seconds`), so
the bar's fraction is `run_fraction` = max(step / steps, elapsed / max_seconds), the same
quantity the learning-rate schedule follows (training.get_lr), and its ETA is to that end.
When the stream is not a terminal (`make demo > log`), a tqdm bar would write one '\\r' frame
after another into the file; instead one plain line is printed every PLAIN_EVERY_STEPS steps or
PLAIN_EVERY_SECONDS seconds, whichever comes first.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

from tqdm import tqdm

PLAIN_EVERY_STEPS = 500     # a fast GPU run: one line per 500 steps, not a flood
PLAIN_EVERY_SECONDS = 30.0  # a slow CPU run: never silent for more than half a minute
BAR_UNITS = 1000            # the bar counts thousandths of the run


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable: Iterable | None = None, total: float | None = None, desc: str = "", unit: str = "it",
        disable: bool = False, stream: TextIO | None = None, every_seconds: float | None = None, **tqdm_kw: Any):
    """tqdm(iterable, total, desc, unit, ...) on a terminal; otherwise `Lines`, which takes the same
    calls (iteration, update, set_postfix_str, close, `with`) and prints plain lines instead of frames.
    `stream`: sys.stderr by default, looked up at call time (so redirections and tests see it)."""
    stream = stream if stream is not None else sys.stderr
    if disable or is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream, **tqdm_kw)
    return Lines(iterable, total, desc, unit, stream, every_seconds, tqdm_kw.get("initial", 0),
                 bool(tqdm_kw.get("unit_scale")))


class Lines:
    """A progress counter for logs: `desc: n/total unit (pct%) | elapsed | rate | ETA [| postfix]`,
    printed when PLAIN_EVERY_SECONDS have passed since the last line, and once at close."""

    def __init__(self, iterable: Iterable | None, total: float | None, desc: str, unit: str, stream: TextIO,
                 every_seconds: float | None = None, initial: float = 0, unit_scale: bool = False):
        self.iterable, self.desc, self.unit, self.stream, self.unit_scale = iterable, desc, unit, stream, unit_scale
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.every = PLAIN_EVERY_SECONDS if every_seconds is None else every_seconds
        self.start = self.last = time.monotonic()
        self.printed_at: float | None = None  # n of the last line printed
        self.postfix = ""
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def _size(self, v: float) -> str:
        return tqdm.format_sizeof(v) if self.unit_scale else f"{v:,.0f}"

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        sep = "" if self.unit_scale else " "  # 4.00MB as tqdm writes it; 7 photo
        text = f"  {head}{self._size(self.n)}"
        if self.total:
            text += f"/{self._size(self.total)}{sep}{self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f"{sep}{self.unit}"
        speed = self._size(rate) if self.unit_scale or rate >= 10 else f"{rate:.2g}"  # 0.031 trial/s, not 0
        text += f" | {elapsed:.0f} s | {speed}{sep}{self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f" | ETA {(self.total - self.n) / rate:.0f} s"
        return text + (f" | {self.postfix}" if self.postfix else "")

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last, self.printed_at = time.monotonic(), self.n

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.printed_at != self.n and self.n > self.initial:  # the end, unless just printed
                self._print()


def run_fraction(step: int, elapsed: float, steps: int, max_seconds: float) -> float:
    """Fraction of the run done, 0..1: by steps, or by seconds when a time budget is set."""
    by_steps = step / steps if steps > 0 else 1.0
    by_time = elapsed / max_seconds if max_seconds > 0 else 0.0
    return min(1.0, max(by_steps, by_time))


class Progress:
    """`update(step, elapsed, loss)` after each step; `write(line)` for the run's own log lines."""

    def __init__(self, steps: int, max_seconds: float, batch_size: int, step: int = 0, elapsed: float = 0.0,
                 stream: TextIO | None = None, every_steps: int | None = None,
                 every_seconds: float | None = None):
        self.steps, self.max_seconds, self.batch_size = steps, max_seconds, batch_size
        self.stream = stream if stream is not None else sys.stderr
        self.every_steps = PLAIN_EVERY_STEPS if every_steps is None else every_steps
        self.every_seconds = PLAIN_EVERY_SECONDS if every_seconds is None else every_seconds
        self.loss: float | None = None
        self.last = (step, elapsed)           # (step, seconds) of the last line (plain) or rate sample
        self.rate_from = (step, elapsed)      # img/s over the steps since the previous line / refresh
        self.img_s: float | None = None
        self.bar = None
        if is_terminal(self.stream):
            self.bar = tqdm(total=BAR_UNITS, initial=self._units(step, elapsed), file=self.stream,
                            dynamic_ncols=True, bar_format="{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    def _units(self, step: int, elapsed: float) -> int:
        return int(BAR_UNITS * run_fraction(step, elapsed, self.steps, self.max_seconds))

    def _rate(self, step: int, elapsed: float) -> None:
        s0, t0 = self.rate_from
        if step > s0 and elapsed > t0:
            self.img_s = (step - s0) * self.batch_size / (elapsed - t0)
            self.rate_from = (step, elapsed)

    def eta(self, step: int, elapsed: float) -> tuple[float | None, str]:
        """(seconds left, which budget ends the run): the step count or the time budget."""
        by_steps = None
        if self.img_s:
            by_steps = (self.steps - step) * self.batch_size / self.img_s
        if self.max_seconds > 0 and (by_steps is None or self.max_seconds - elapsed < by_steps):
            return max(0.0, self.max_seconds - elapsed), "time budget"
        return by_steps, "steps"

    def update(self, step: int, elapsed: float, loss: float | None = None) -> None:
        if loss is not None:
            self.loss = loss
        if self.bar is not None:
            units = self._units(step, elapsed)
            if units > self.bar.n:
                self.bar.update(units - self.bar.n)
            if step - self.last[0] >= 20 or loss is not None:  # postfix refreshes are cheap but not free
                self._rate(step, elapsed)
                self.last = (step, elapsed)
                self.bar.set_postfix_str(self._fields(step), refresh=False)
            return
        if step - self.last[0] >= self.every_steps or elapsed - self.last[1] >= self.every_seconds:
            self._rate(step, elapsed)
            self.last = (step, elapsed)
            left, which = self.eta(step, elapsed)
            eta = "" if left is None else f" | ETA {left:.0f} s ({which})"
            pct = 100 * run_fraction(step, elapsed, self.steps, self.max_seconds)
            print(f"  {self._fields(step)} | {pct:.0f}% | {elapsed:.0f} s{eta}", file=self.stream, flush=True)

    def _fields(self, step: int) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        img_s = "-" if self.img_s is None else f"{self.img_s:.0f}"
        return f"step {step}/{self.steps}, loss {loss}, {img_s} img/s"

    def write(self, line: str) -> None:
        """A log line of the run: above the bar on a terminal, to stdout otherwise."""
        if self.bar is not None:
            self.bar.write(line)  # stdout, like the lines of a run without a bar
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
