"""Ctrl-C and SIGTERM in the ``invcal`` command: one line, exit 130 / 143, at any moment.

The handler is installed by ``invcal/__init__.py`` before anything heavy is imported, but
only when this process *is* the command (the ``invcal`` script or ``python -m invcal``): a
library imported into a user's program leaves its signals alone. Importing JAX takes about a
second, and an interrupt there used to print a raw ``KeyboardInterrupt`` traceback.

This module imports nothing but the standard library, so that it is ready before JAX is.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

__all__ = ["exit_on_interrupt", "install", "is_the_command"]


def exit_on_interrupt(signum, frame):  # pragma: no cover - runs in a separate process
    """One line, then exit 128 + signum at once. results.json is always whole (every write
    is atomic), so nothing is lost by not unwinding; unwinding through JAX's threads at
    interpreter exit is what crashed (9 of 22 interrupts during compilation ended in a
    segmentation fault after the message)."""
    word = "interrupted" if signum == signal.SIGINT else "terminated"
    try:
        sys.stderr.write(f"invcal: {word} (a run continues from its last step with --resume).\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them


def install() -> None:
    """Handle SIGINT and SIGTERM as :func:`exit_on_interrupt` says (main thread only)."""
    signal.signal(signal.SIGINT, exit_on_interrupt)
    signal.signal(signal.SIGTERM, exit_on_interrupt)


def is_the_command() -> bool:
    """Whether this process runs the ``invcal`` command: the console script (``argv[0]`` is
    ``.../invcal``) or ``python -m invcal`` (``sys.orig_argv`` holds ``-m invcal``)."""
    if Path(sys.argv[0] if sys.argv else "").stem == "invcal":
        return True
    orig = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == "invcal" for a, b in zip(orig, orig[1:], strict=False))
