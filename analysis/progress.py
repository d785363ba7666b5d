"""Progress bars for a terminal and for a log (Slurm output, CI): every bar of flowarena is made here.

`progress_bar(...)` takes tqdm's arguments. On a terminal (or in a notebook) it is tqdm. Anywhere
else (stderr sent to a file or a pipe) tqdm's carriage-return redraws would turn the log into one
huge line, so it is a `PlainProgress`: one plain line at most every `interval` seconds (30), e.g.

    qam cube-double-play-singletask-task1-v0 seed0: 12000/1500000 steps (1%), 41.3 steps/s,
    elapsed 0:04:50, ETA 9:59:59, loss=0.12 success=0.35                        (one line)

The rate is the average since the bar started, the ETA the remaining count at that rate, then the
postfix as tqdm would show it. The first line comes after one interval, so a bar shorter than that
prints nothing; closing a bar that printed adds its final line (unless leave=False).

Imports only tqdm and the standard library, so that both analysis/ (which never imports torch or
the harness) and harness/ (harness/progress.py) use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0  # at most one plain line this often
TERMINAL_INTERVAL_S = 1.0  # tqdm's redraw interval on a terminal


class PlainProgress:
    """The part of tqdm's interface flowarena uses, writing plain lines at most every `interval` s."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        *,
        initial: float = 0,
        unit: str = "it",
        leave: bool = True,
        file: IO[str] | None = None,
        interval: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        **_tqdm_only: Any,  # tqdm's display options (ncols, mininterval, dynamic_ncols...)
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.n = initial
        self.initial = initial
        self.unit = unit
        self.leave = leave
        self.file = file
        self.interval = interval
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self.postfix_str = ""
        self.start = clock()
        self.last_line_at = self.start
        self.printed_n: float | None = None
        self.closed = False

    # --- tqdm's interface -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last_line_at >= self.interval:
            self.last_line_at = now
            self.write_line(now)

    def set_postfix(
        self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix_str = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing: a line is due only when the interval has passed."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self.printed_n is not None and self.printed_n != self.n:
            self.write_line(self.clock())

    # --- the line -----------------------------------------------------------------------------
    def write_line(self, now: float) -> None:
        stream = self.file if self.file is not None else sys.stderr
        stream.write(self.line(now) + "\n")
        stream.flush()
        self.printed_n = self.n

    def line(self, now: float) -> str:
        """`desc: n/total units (p%), rate units/s, elapsed h:mm:ss, ETA h:mm:ss, k=v ...`."""
        elapsed = max(now - self.start, 0.0)
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        units = _plural(self.unit)
        if self.total:
            count = f"{_number(self.n)}/{_number(self.total)} {units} ({100 * self.n / self.total:.0f}%)"
            eta = _clock_time((self.total - self.n) / rate) if rate > 0 else "?"
        else:
            count, eta = f"{_number(self.n)} {units}", "?"
        parts = [count, f"{rate:.3g} {units}/s", f"elapsed {_clock_time(elapsed)}", f"ETA {eta}"]
        postfix = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        parts += [text for text in (postfix, self.postfix_str) if text]
        return f"{self.desc}: {', '.join(parts)}" if self.desc else ", ".join(parts)


Progress = tqdm | PlainProgress  # what progress_bar returns (for type hints)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    enabled: bool = True,
    file: IO[str] | None = None,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> Progress:
    """A bar on `file` (default: stderr at call time): tqdm on a terminal or in a notebook, plain
    lines every `interval` s (default PLAIN_INTERVAL_S) elsewhere, and a silent tqdm when not
    `enabled`. Takes tqdm's arguments (desc, total, initial, unit, leave...)."""
    stream = file if file is not None else sys.stderr
    if not enabled or kwargs.pop("disable", False):
        return tqdm(iterable, disable=True, file=stream, **kwargs)
    if _in_notebook():
        from tqdm.auto import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, file=stream, **kwargs)
    if is_terminal(stream):
        kwargs.setdefault("mininterval", TERMINAL_INTERVAL_S)
        return tqdm(iterable, file=stream, **kwargs)
    interval = PLAIN_INTERVAL_S if interval is None else interval
    return PlainProgress(iterable, file=stream, interval=interval, clock=clock, **kwargs)


def write(message: str, file: IO[str] | None = None) -> None:
    """A line on `file` (default stderr) that leaves a running terminal bar intact."""
    tqdm.write(message, file=file if file is not None else sys.stderr)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _plural(unit: str) -> str:
    return f"{unit}s" if len(unit) > 2 and unit.isalpha() and not unit.endswith("s") else unit


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def _clock_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
