"""A dependency-free text progress bar for the outer loop.

:class:`ProgressBar` is a ``progress(step, total, row)`` callable as :func:`invcal.tune` and
:func:`invcal.grid_search` expect. On a terminal it redraws one line in place; on a pipe or a
log file (no TTY) it writes plain lines, at most one every ``min_interval`` seconds plus the
first and the last, so logs stay readable and short.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping

from .history import HistoryRow

__all__ = ["ProgressBar", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``42.0`` → ``"42s"``, ``125`` → ``"2m05s"``, ``4000`` → ``"1h06m"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(float(seconds), 0.0)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m}m{r:02d}s"
    h, r = divmod(int(round(s)), 3600)
    return f"{h}h{r // 60:02d}m"


def _number(v) -> str:
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return f"{f:.4g}" if math.isfinite(f) else str(f)


class ProgressBar:
    """``bar = ProgressBar(label="tune"); tune(..., progress=bar); bar.close()``.

    Each update shows step/total, the criterion and |grad| of the last row, the elapsed
    time and an ETA. The ETA uses the pace of the steps taken in this session after the
    first (which usually pays for compilation); on a resumed run the elapsed time continues
    from the row's ``elapsed``.
    """

    def __init__(self, *, label: str = "", stream=None, width: int = 24, min_interval: float = 2.0):
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = int(width)
        self.min_interval = float(min_interval)
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self._t0 = time.perf_counter()
        self._first = None  # (time, step) of the first update in this session
        self._last_print = -math.inf
        self._line_len = 0
        self._open = False

    def line(
        self,
        step: int,
        total: int,
        row: HistoryRow | dict | None = None,
        *,
        now: float | None = None,
    ) -> str:
        """The text of one update (no newline, no carriage return)."""
        now = time.perf_counter() if now is None else now
        # a criterion value is shown for a row that has one (a progress call without one,
        # e.g. a search's start, shows the bar alone)
        shows_value = isinstance(row, HistoryRow) or (isinstance(row, Mapping) and "value" in row)
        row = HistoryRow.from_json(row)
        total = max(int(total), 1)
        step = min(max(int(step), 0), total)
        filled = int(round(self.width * step / total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = row.elapsed
        if elapsed is None:
            elapsed = now - self._t0
        eta = math.nan
        if self._first is not None:
            t1, s1 = self._first
            if step > s1:
                eta = (now - t1) / (step - s1) * (total - step)
            elif step == total:
                eta = 0.0
        parts = [f"[{bar}] {step:>{len(str(total))}}/{total}"]
        if shows_value:
            parts.append(f"E={_number(row.value)}")
        if row.grad_norm is not None:
            parts.append(f"|g|={_number(row.grad_norm)}")
        if row.accepted is False:
            parts.append("(rejected)")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        parts.append("done" if step >= total else f"ETA {format_seconds(eta)}")
        prefix = f"{self.label} " if self.label else ""
        return prefix + "  ".join(parts)

    def __call__(self, step: int, total: int, row: HistoryRow | dict | None = None) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, int(step))
        text = self.line(step, total, row, now=now)
        if self.tty:
            pad = " " * max(self._line_len - len(text), 0)
            self.stream.write("\r" + text + pad)
            self._line_len = len(text)
            self._open = True
        else:
            last = int(step) >= int(total)
            if not (last or now - self._last_print >= self.min_interval):
                return
            self.stream.write(text + "\n")
            self._last_print = now
        self.stream.flush()

    def close(self) -> None:
        """End the in-place line (a newline on a terminal); safe to call twice."""
        if self.tty and self._open:
            self.stream.write("\n")
            self.stream.flush()
        self._open = False
