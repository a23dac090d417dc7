r"""Occasions of a subject (the table's OCC column) for inter-occasion variability (IOV).

A subject observed on several occasions (dosing periods, visits) may have parameters that
vary between occasions around its own values (Karlsson & Sheiner 1993): on occasion k of
subject i the parameters with IOV are

    φᵢₖ = μ + Bᵢβ + Sηᵢ + Tκᵢₖ,     ηᵢ ~ N(0, Ω),  κᵢₖ ~ N(0, Π) independently per occasion,

with Π = diag(π²) over the parameters T that have IOV, the same Π on every occasion
(NONMEM's ``$OMEGA BLOCK(1) SAME``). The κᵢₖ are further random effects of the subject: the
likelihood integrates over (ηᵢ, κᵢ₁, …, κᵢₖ) together, so FOCEI and Laplace take them as
part of the subject's MAP problem, with the block-diagonal prior diag(Ω, Π, …, Π).

Each row carries its occasion (OCC, an integer); a subject's occasions are numbered by the
rank of their OCC values (OCC 1, 2 → indices 0, 1; OCC 2, 5 → 0, 1), so a value that
comes back later (1, 2, 1) is the same occasion and the same κ. The parameters switch at the
first record of a new occasion: the state carries over (a washout is the table's business),
a record's dose and its lag time use its own occasion's parameters, and an observation the
parameters of the occasion it falls in. Subjects with fewer occasions than the most of any
subject (K) are padded with occasions that no record uses: their κ has no data, stays at 0,
and contributes exactly nothing to FOCEI or Laplace (½ log|Π| from the prior's
normalization cancels ½ log|Π⁻¹| from the curvature).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["occasion_index", "occasions_present"]


def occasion_index(events) -> tuple[np.ndarray, int]:
    """(per row, the index of its occasion within its subject; K, the most occasions of any
    subject). ``ValueError`` naming the row for a missing or non-integer OCC, or naming the
    table when it has no OCC column."""
    if events.occ is None:
        raise ValueError(
            f"{events.source} has no OCC column; inter-occasion variability (--iov) needs the "
            "occasion of every row (an integer: 1, 2, ...)."
        )
    occ = np.asarray(events.occ, dtype=float)
    for i, v in enumerate(occ):
        if not math.isfinite(v):
            raise ValueError(
                f"{events.where(i)}: OCC is missing; with inter-occasion variability (--iov) "
                "every row needs its occasion (an integer: 1, 2, ...)."
            )
        if not float(v).is_integer():
            raise ValueError(
                f"{events.where(i)}: OCC is {v:g}, not an integer; occasions are numbered "
                "by integers (1, 2, ...)."
            )
    index = np.zeros(occ.shape[0], dtype=np.int32)
    most = 1
    for a, b in zip(*events.blocks(), strict=True):
        values, inverse = np.unique(occ[a:b], return_inverse=True)
        index[a:b] = inverse
        most = max(most, values.size)
    return index, most


def occasions_present(events) -> np.ndarray:
    """(N, K) bool: whether subject i (ordered as ``events.subjects``) has occasion k."""
    index, K = occasion_index(events)
    out = np.zeros((events.n_subjects, K), bool)
    for n, (a, b) in enumerate(zip(*events.blocks(), strict=True)):
        out[n, np.unique(index[a:b])] = True
    return out
