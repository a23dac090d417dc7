r"""Typed problem data: a module with named fields that is also a read-only mapping.

A problem's data is what its inner map and its criterion read. A domain types the part its
solvers need as fields (:class:`invcal.sparse.LassoData`: the design, the measurements and
the Lipschitz bound; :class:`invcal.imaging.ImagingData`: the operator, the basis, the
measurements, the step and the ℓ1 weights), and keeps what the criterion adds (validation
rows, fold weights, the truth, SURE's probes) in ``extra``, by name. Read as a mapping, the
fields and the extra entries are one namespace, so a criterion written for a dict of data
(``data["y"]``, ``data["A_val"]``) works unchanged; a missing name is a ``KeyError`` that
lists the names there are (and, for a renamed entry, its new name).

Both are pytrees (equinox modules): ``vmap`` over a leading batch axis of every leaf gives
one problem per fold or per SURE copy, and two problems built alike share compiled code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx

__all__ = ["AbstractData"]


class AbstractData(eqx.Module, Mapping):
    """Named fields plus ``extra`` entries, read as one mapping (see the module note).

    Subclasses declare their fields, list them in ``FIELDS`` and end with
    ``extra: dict = eqx.field(default_factory=dict)`` (declared there, not here, so that it
    stays the last, defaulted field); ``RENAMED`` maps old entry names to
    the field that replaced them (the ``KeyError`` names it)."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    RENAMED: ClassVar[dict[str, str]] = {}

    def __check_init__(self):
        clash = sorted(set(self.extra) & set(self.FIELDS))
        if clash:
            raise ValueError(f"{type(self).__name__}: {clash} are fields, not extra entries.")

    def __getitem__(self, key):
        if key in self.FIELDS:
            return getattr(self, key)
        try:
            return self.extra[key]
        except KeyError:
            hint = ""
            if key in self.RENAMED:
                hint = f" (it is now the field {self.RENAMED[key]!r})"
            raise KeyError(
                f"the problem's {type(self).__name__} has no entry {key!r}{hint}; it has "
                f"{sorted(self)}."
            ) from None

    def __iter__(self):
        return iter((*self.FIELDS, *self.extra))

    def __len__(self):
        return len(self.FIELDS) + len(self.extra)
