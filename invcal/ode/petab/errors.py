"""The errors of the PEtab import: a malformed problem, and a model the import cannot handle."""

from __future__ import annotations

__all__ = ["PEtabError", "UnsupportedModelError"]


class PEtabError(ValueError):
    """A malformed PEtab problem: a missing or unreadable table, a row that names something
    undefined, a formula that does not parse. The message names the file (and the row)."""


class UnsupportedModelError(PEtabError):
    """A valid SBML model with a construct the import does not handle (events, algebraic
    rules, delays, ...). The message names the construct and the file."""
