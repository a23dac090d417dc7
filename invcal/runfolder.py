"""A run folder belongs to one run: checked and locked before any work starts.

``claim_run_folder(out, ...)`` makes the folder (or says in one line why it cannot), takes an
exclusive lock on ``out/.invcal.lock`` for as long as the run lasts (a second run on the same
folder, in this process or another, is refused), and refuses a folder that holds files no
invcal run wrote, or a finished run that the command neither resumes nor explicitly
replaces. The lock is an ``fcntl.flock`` on an open file: the operating system releases it
when the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

__all__ = ["RunFolderError", "claim_run_folder", "LOCK_FILE"]

LOCK_FILE = ".invcal.lock"
RESULTS_FILE = "results.json"
# What runs write into their folder (report.py's figures, the landscape's grid, atomic
# writes' temporary files): a folder holding only these is a previous run's.
_RUN_SUFFIXES = (".png",)
_RUN_NAMES = {RESULTS_FILE, "report.md", "landscape", LOCK_FILE}

# Paths this process holds locks on (flock conflicts between two opens in one process too):
# the command line claims the folder, then tune() inside it claims it again.
_held: set[str] = set()


class RunFolderError(ValueError):
    """The output folder cannot be used for this run (one line, before any work)."""


def _foreign(entries) -> list[str]:
    return sorted(
        e.name
        for e in entries
        if e.name not in _RUN_NAMES
        and not e.name.startswith(".results-")
        and not e.name.endswith(_RUN_SUFFIXES)
    )


@contextlib.contextmanager
def claim_run_folder(out, *, resume: bool = False, overwrite: bool = True, flag: str = "--out"):
    """Hold ``out`` for one run (see the module docstring). ``overwrite=False`` refuses a
    folder that holds a previous run unless ``resume``; files that no run wrote are always
    refused. Raises :class:`RunFolderError` naming ``flag`` and the reason."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{flag} {out} is a file, not a folder; pass a folder for the run.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"{flag} {out} cannot be made ({e.strerror or e}); pass a folder you can write."
        ) from None
    key = str(out.resolve())
    if key in _held:  # this process holds it already (the CLI around tune)
        yield out
        return
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(
            f"{flag} {out} is not writable ({e.strerror or e}); pass a folder you can write."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunFolderError(
                f"{flag} {out} is in use by another run (process {other}); wait for it to "
                "finish or pass another folder."
            ) from None
        entries = list(os.scandir(out))
        foreign = _foreign(entries)
        has_run = (out / RESULTS_FILE).exists()
        if foreign and not has_run:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise RunFolderError(
                f"{flag} {out} holds files that no invcal run wrote ({shown}); a run would "
                "write over them. Pass a new or empty folder."
            )
        if has_run and not resume and not overwrite:
            raise RunFolderError(
                f"{flag} {out} holds a previous run ({_describe(out / RESULTS_FILE)}); "
                "--resume continues it, --overwrite replaces it, or pass another folder."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held.add(key)
        try:
            yield out
        finally:
            _held.discard(key)
    finally:
        os.close(fd)  # releases the lock


def _describe(path: Path) -> str:
    try:
        prev = json.loads(path.read_text())
        return f"problem {prev.get('problem')!r}, {len(prev.get('history') or [])} steps"
    except (OSError, ValueError, AttributeError):
        return "unreadable results.json"
