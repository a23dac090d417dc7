"""Screening a table's observations: values far outside the others, and observations whose
residual variance is zero.

A DV typed in the wrong unit (µg/L for mg/L) or with a slipped exponent makes the
population objective non-finite, and the failure then reads like a solver failure. The
screen finds such values first, so that a warning before the fit and the failure message
can name the row.

With a proportional error model, R = (σₚ·f)² is 0 where the prediction f is 0: a sample
taken before a dose reaches the observed compartment (at the time of an oral dose, before
it, or within the lag time Tlag), whose likelihood is then not defined (NONMEM stops there
too). :func:`zero_variance_observations` names those rows for the failure message, which
suggests the combined error model (an additive part keeps R > 0) or MDV=1.
"""

from __future__ import annotations

import numpy as np

from .events import Events

__all__ = [
    "OUTLIER_FACTOR",
    "describe_outliers",
    "describe_zero_variance",
    "outlying_observations",
    "zero_variance_observations",
]

#: An observation is outlying when its magnitude exceeds this factor times the largest of
#: the subject's other observations and this factor times the table's median magnitude.
#: Within one profile, concentrations span a few decades from Cmax down to the last sample,
#: but no real value exceeds every other value of its subject a hundredfold.
OUTLIER_FACTOR = 100.0


def outlying_observations(events: Events, factor: float = OUTLIER_FACTOR) -> list[dict]:
    """The observations whose |DV| exceeds ``factor`` times the largest |DV| of the other
    observations of the same subject and ``factor`` times the table's median |DV|.

    Each is a dict with ``row`` (the table's 1-based row, as errors quote it), ``id``,
    ``time``, ``dv`` and ``ratio`` (|DV| over the subject's largest other |DV|).
    Censored observations (DV holds a limit) are not screened.
    """
    obs = events.is_observation & ~events.is_censored & np.isfinite(events.dv)
    magnitude = np.abs(np.where(obs, events.dv, 0.0))
    if not obs.any():
        return []
    median = float(np.median(magnitude[obs]))
    found = []
    for sid in events.subjects:
        idx = np.flatnonzero(obs & (events.id == sid))
        if idx.size < 2:
            continue
        values = magnitude[idx]
        order = np.argsort(values)
        top, second = values[order[-1]], values[order[-2]]
        if top > factor * max(second, np.finfo(float).tiny) and top > factor * median:
            i = idx[order[-1]]
            found.append(
                {
                    "row": int(events.row[i]),
                    "id": sid,
                    "time": float(events.time[i]),
                    "dv": float(events.dv[i]),
                    "ratio": float(top / second) if second > 0 else float("inf"),
                }
            )
    return found


def describe_outliers(found: list[dict], limit: int = 5) -> str:
    """One sentence naming the outlying rows (at most ``limit``), or "" when none."""
    if not found:
        return ""
    parts = [
        f"row {o['row']} (ID {o['id']}, TIME {o['time']:g}): DV = {o['dv']:g}, "
        f"{o['ratio']:.3g}× the subject's largest other observation"
        for o in found[:limit]
    ]
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return (
        "the table has observations far outside the others: "
        + "; ".join(parts)
        + more
        + ". Check them for a unit or typing error (or exclude them with MDV=1)"
    )


def zero_variance_observations(events: Events, variance, obs_mask) -> list[int]:
    """Indices into ``events`` of the observations with residual variance 0. ``variance``
    (N, M): R at each subject's observations (the padded arrays' order: a subject's
    observation rows in table order); ``obs_mask`` (N, M): the observations the fit uses."""
    variance, mask = np.asarray(variance), np.asarray(obs_mask)
    out = []
    for n, (a, b) in enumerate(zip(*events.blocks(), strict=True)):
        rows = a + np.flatnonzero(events.is_observation[a:b])
        hit = np.flatnonzero(mask[n, : rows.size] & ~(variance[n, : rows.size] > 0))
        out += [int(rows[j]) for j in hit]
    return out


def describe_zero_variance(
    events: Events, rows: list[int], error: str, where: str = "the initial estimates"
) -> str:
    """One line naming the observations of :func:`zero_variance_observations` and the fix."""
    shown = ", ".join(
        f"row {int(events.row[i])} (ID {events.id[i]!r}, TIME {events.time[i]:g})" for i in rows[:6]
    ) + (f" and {len(rows) - 6} more" if len(rows) > 6 else "")
    return (
        f"with {error} error the residual variance (sigma_prop*IPRED)^2 is 0 where the "
        f"prediction is 0, so {len(rows)} observation(s) of {events.source} have no "
        f"likelihood: {shown} are predicted 0 at {where} (taken before a dose "
        "reaches the observed compartment: before or at an oral dose, or within the lag "
        "time). Use the combined error model (--error combined, error='combined': its "
        "additive part keeps the variance positive), or drop those observations (MDV=1)"
    )
