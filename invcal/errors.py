"""The command line's two kinds of failure, public so that the domains' commands
(``invcal.ode.command``, ``invcal.imaging.command``) can raise them without importing the
command line itself (the application layer; the domains point at the core only).

``invcal.cli.main`` reports either as one ``invcal: error:`` line: :class:`CommandError` with
exit status 2, :class:`RunFailed` with exit status 1."""

from __future__ import annotations

__all__ = ["CommandError", "RunFailed"]


class CommandError(Exception):
    """A mistake in the command line: reported as one ``invcal: error:`` line, exit 2."""


class RunFailed(Exception):
    """A computation failed (not a mistake in the command): one line, exit 1."""
