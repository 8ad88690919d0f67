"""Progress bars: a live tqdm bar on a terminal, plain lines in a log.

A bar redraws itself with carriage returns, which a log file (`mugv demo > demo.log 2>&1`) keeps
as thousands of updates on one line. So when the bar's stream is not a terminal, progress is
printed as whole lines instead: one each LINE_INTERVAL_S seconds or each LINE_FRACTION of the
total, whichever comes first, and a last one when the work ends. Every progress bar in mugv is
made by `progress_bar` (or `track`, for a loop over a list).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

from tqdm import tqdm

LINE_INTERVAL_S = 30.0
LINE_FRACTION = 0.1

T = TypeVar("T")


def progress_bar(total: int | None, *, desc: str, unit: str, initial: int = 0, enabled: bool = True,
                 file: IO[str] | None = None) -> tqdm | LineProgress:
    """A progress bar over `total` units on `file` (default stderr): live on a terminal, lines in a log."""
    stream = file if file is not None else sys.stderr
    if enabled and not _is_terminal(stream):
        return LineProgress(total, desc=desc, unit=unit, initial=initial, file=stream)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=stream,
                dynamic_ncols=True)


def track(items: Sequence[T], *, desc: str, unit: str, enabled: bool = True) -> Iterator[T]:
    """The items of `items`, counted on a progress bar as each one's work ends."""
    with progress_bar(len(items), desc=desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


class LineProgress:
    """The part of tqdm's interface that mugv uses, printing a whole line now and then."""

    def __init__(self, total: int | None, *, desc: str, unit: str, initial: int = 0, file: IO[str],
                 interval_s: float = LINE_INTERVAL_S, fraction: float = LINE_FRACTION,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.file = desc, unit, file
        self.interval_s = interval_s
        self.every_n = fraction * total if total else float("inf")
        self.clock = clock
        self.start = self.printed_at = clock()
        self.printed_n = initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        finished = bool(self.total) and self.n >= self.total
        if finished or self.n - self.printed_n >= self.every_n or now - self.printed_at >= self.interval_s:
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        self.set_postfix_str(", ".join(f"{key}={value}" for key, value in values.items()))

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    @staticmethod
    def write(text: str) -> None:
        """A message between progress lines (tqdm.write's place)."""
        print(text, flush=True)

    def close(self) -> None:
        if self.n != self.printed_n:
            self._print(self.clock())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _print(self, now: float) -> None:
        counts = ("{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}" if self.total
                  else "{n_fmt} [{elapsed}")
        line = tqdm.format_meter(
            self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit, initial=self.initial,
            postfix=self.postfix or None, bar_format="{desc}: " + counts + ", {rate_fmt}{postfix}]",
        )
        print(line, file=self.file, flush=True)
        self.printed_at, self.printed_n = now, self.n
