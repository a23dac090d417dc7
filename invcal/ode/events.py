r"""NONMEM-style event tables → validated event data → padded per-subject arrays.

A table has one row per record, grouped by subject and sorted by time within a subject
(Beal, Sheiner, Boeckmann & Bauer, *NONMEM Users Guides*, Part V):

| column | meaning | default when the column is absent |
|---|---|---|
| ID | subject identifier (rows of a subject are contiguous) | required |
| TIME | time of the record, ≥ 0, non-decreasing within a subject | required |
| DV | observed value on observation rows (``.`` or empty: missing) | required |
| AMT | dose amount on dose rows | 0 |
| EVID | 0 observation, 1 dose, 2 other (no observation, no dose) | 1 where AMT > 0, else 0 |
| CMT | dose compartment, 1-based index into the model's states | 1 |
| MDV | 1: the row has no observation | 1 where EVID ≠ 0, else 0 |
| RATE | 0: bolus; > 0: zero-order infusion of AMT at RATE (duration AMT/RATE) | 0 |
| CENS | 1: the observation is below the limit of quantification, DV holds the limit | 0 |
| LLOQ | limit of quantification: DV < LLOQ (or missing) is censored at LLOQ | none |
| ADDL | additional doses after a dose row, each II after the previous one | 0 |
| II | the interdose interval of ADDL and SS (> 0 where ADDL > 0 or SS > 0) | 0 |
| SS | 1: at steady state of AMT every II before this dose (state reset); 2: added | 0 |
| OCC | the occasion of the row, an integer (inter-occasion variability: :mod:`.occasions`) | none |

Every other column is a covariate (its value on a subject's first row is the subject's
baseline covariate), unless ``covariates=`` lists the allowed ones; a column whose name
looks like a misspelt reserved one (``Time``, ``AMT_``) is refused either way.

:func:`read_events` checks the table and names the offending row in every error;
:func:`subject_arrays` turns it into the padded arrays the solvers vmap over: each subject's
timeline is cut into solve segments at doses and infusion starts and ends, a segment carrying
the bolus jump applied at its start and the infusion rates during it, and each observation
knows its segment (a dose and an observation at the same time: the record order decides
whether the observation sees the dose, as in NONMEM).
"""

from __future__ import annotations

import csv
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import equinox as eqx
import jax
import numpy as np

from ..compilation_cache import to_device

__all__ = ["Events", "SubjectArrays", "holdout_rows", "read_events", "subject_arrays"]

REQUIRED = ("ID", "TIME", "DV")
OPTIONAL = ("AMT", "EVID", "CMT", "MDV", "RATE", "CENS", "LLOQ", "ADDL", "II", "SS", "OCC")
RESERVED = REQUIRED + OPTIONAL
UNSUPPORTED = {
    "DUR": "modelled infusion durations",
}
_MISSING = ("", ".", "NA", "NaN", "nan")


@dataclass(frozen=True)
class Events:
    """A validated event table (one entry per row, in the table's order).

    ``row`` holds 1-based row numbers of the table (the header is row 0), which every error
    message quotes. ``subjects`` lists the IDs in order of first appearance.
    """

    id: np.ndarray
    time: np.ndarray
    dv: np.ndarray
    amt: np.ndarray
    evid: np.ndarray
    cmt: np.ndarray
    mdv: np.ndarray
    rate: np.ndarray
    covariates: dict[str, np.ndarray]
    row: np.ndarray
    source: str = "table"
    subjects: tuple = field(default=())
    cens: np.ndarray | None = None
    addl: np.ndarray | None = None
    ii: np.ndarray | None = None
    ss: np.ndarray | None = None
    occ: np.ndarray | None = None

    @property
    def has_steady_state(self) -> bool:
        """Whether any dose row has SS = 1 or 2."""
        return self.ss is not None and bool(np.any(self.ss > 0))

    def dose_times(self, i: int) -> np.ndarray:
        """The times of row i's dose and of its ADDL additional doses, II apart."""
        n = 0 if self.addl is None else int(self.addl[i])
        step = 0.0 if self.ii is None else float(self.ii[i])
        return self.time[i] + step * np.arange(n + 1)

    @property
    def is_censored(self) -> np.ndarray:
        """Observations below their limit of quantification (DV holds the limit)."""
        if self.cens is None:
            return np.zeros(self.id.shape[0], bool)
        return self.cens & self.is_observation

    @property
    def is_observation(self) -> np.ndarray:
        return (self.evid == 0) & (self.mdv == 0)

    @property
    def is_dose(self) -> np.ndarray:
        return self.evid == 1

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_observations(self) -> int:
        return int(np.sum(self.is_observation))

    def where(self, i: int) -> str:
        """'row 5 (ID 1)' for the i-th entry: how errors name a row."""
        return f"row {int(self.row[i])} (ID {self.id[i]!r}) of {self.source}"

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row, one past the last row) of each subject's contiguous block of entries,
        ordered as ``subjects`` (:func:`read_events` checks the blocks are contiguous)."""
        return _blocks(self.id)

    def baseline(self) -> dict[str, np.ndarray]:
        """Each covariate's value on each subject's first row, ordered as ``subjects``."""
        first = self.blocks()[0]
        return {k: v[first] for k, v in self.covariates.items()}

    def observations(self, subject) -> tuple[np.ndarray, np.ndarray]:
        """(TIME, DV) of a subject's observations."""
        m = (self.id == subject) & self.is_observation
        return self.time[m], self.dv[m]


def _blocks(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the runs of equal consecutive IDs (O(n), no search per
    subject: a table of 10,000 subjects would otherwise cost 10,000 passes over it)."""
    n = ids.shape[0]
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = ids[1:] != ids[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return starts, ends


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
def _num(v) -> str:
    """A number as an error message shows it."""
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return repr(v)


def _read_csv(path) -> tuple[list[str], dict[str, list[str]]]:
    try:
        return _read_csv_utf8(path)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save the table as UTF-8 CSV (e.g. from a spreadsheet: 'CSV UTF-8'), or read it "
            "with pandas and pass the DataFrame."
        ) from None


def _read_csv_utf8(path) -> tuple[list[str], dict[str, list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: the file is empty; expected a header row.") from None
        header = [h.strip() for h in header]
        cols: dict[str, list[str]] = {h: [] for h in header}
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                raise ValueError(
                    f"{path}, line {lineno}: {len(rec)} fields but the header has "
                    f"{len(header)} ({', '.join(header)})."
                )
            for h, c in zip(header, rec, strict=True):
                cols[h].append(c.strip())
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"{path}: duplicate column names {dup}.")
    return header, cols


def _from_frame(table) -> tuple[list[str], dict[str, list]]:
    if hasattr(table, "columns") and hasattr(table, "__getitem__"):  # a pandas DataFrame
        header = [str(c) for c in table.columns]
        return header, {str(c): list(np.asarray(table[c], dtype=object)) for c in table.columns}
    if isinstance(table, Mapping):
        header = [str(k) for k in table]
        cols = {str(k): list(np.asarray(v, dtype=object).ravel()) for k, v in table.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(
                f"the columns of the table have different lengths: "
                f"{ {k: len(v) for k, v in cols.items()} }."
            )
        return header, cols
    raise TypeError(
        "read_events expects a path to a CSV file, a pandas DataFrame or a dict of columns; "
        f"got {type(table).__name__}."
    )


def _numeric(name: str, values: list, ids: list, missing_ok: bool) -> np.ndarray:
    out = np.empty(len(values))
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and v.strip() in _MISSING):
            if not missing_ok:
                raise ValueError(
                    f"row {i + 1} (ID {ids[i]!r}): column {name} is missing; it needs a number."
                )
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"row {i + 1} (ID {ids[i]!r}): column {name} has {v!r}, which is not a number."
            ) from None
    return out


def _parse_ids(values: list) -> np.ndarray:
    ids = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and v.strip() in _MISSING):
            raise ValueError(f"row {i + 1}: ID is missing.")
        if isinstance(v, str):
            try:
                x = float(v)
                v = int(x) if x.is_integer() else v.strip()
            except ValueError:
                v = v.strip()
        elif isinstance(v, (float, np.floating)):
            if not math.isfinite(v):
                raise ValueError(f"row {i + 1}: ID is {v!r}; it must be finite.")
            v = int(v) if float(v).is_integer() else float(v)
        elif isinstance(v, (np.integer,)):
            v = int(v)
        ids.append(v)
    out = np.empty(len(ids), dtype=object)
    out[:] = ids
    return out


def _check_columns(header, covariates) -> list[str]:
    for name in REQUIRED:
        if name not in header:
            near = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
            hint = f" (found {near[0]!r}: rename it to {name!r})" if near else ""
            raise ValueError(
                f"the table has no {name} column{hint}; an event table needs "
                f"{', '.join(REQUIRED)} (columns found: {', '.join(header)})."
            )
    extra = [h for h in header if h not in RESERVED]
    for h in extra:
        if h.upper() in UNSUPPORTED:
            raise ValueError(
                f"column {h!r} ({UNSUPPORTED[h.upper()]}) is not supported yet; expand such "
                "doses into one row per dose."
            )
    if covariates is not None:
        covariates = [str(c) for c in covariates]
        missing = [c for c in covariates if c not in header]
        if missing:
            raise ValueError(f"covariates {missing} are not columns of the table ({header}).")
        unknown = [h for h in extra if h not in covariates]
        if unknown:
            raise ValueError(
                f"unknown column {unknown[0]!r}: it is neither one of {', '.join(RESERVED)} "
                f"nor a declared covariate ({list(covariates)}). Drop it, or add it to "
                "covariates=."
            )
        return covariates
    for h in extra:
        near = difflib.get_close_matches(h.upper(), RESERVED, n=1, cutoff=0.75)
        if near:
            raise ValueError(
                f"unknown column {h!r}: did you mean {near[0]!r}? Rename it, or pass "
                f"covariates=({h!r},) if it is a covariate."
            )
    return extra


def read_events(table, *, covariates=None, source: str | None = None) -> Events:
    """Read and validate a NONMEM-style event table.

    **Arguments**

    - ``table``: a path to a CSV file (header row first), a pandas DataFrame or a dict of
      columns.
    - ``covariates``: the covariate columns allowed; ``None`` accepts every non-reserved
      column as a covariate (except names that look like misspelt reserved columns).
    - ``source``: how errors name the table (default: the file name).

    Raises ``ValueError`` naming the row for: unknown columns, non-numeric or missing
    values, negative or decreasing times, non-contiguous subjects, unsupported EVID/RATE,
    doses without a positive amount, observations without a finite DV, covariates that are
    not finite, and subjects with no observation.
    """
    try:
        return _read_events(table, covariates, source)
    except ValueError as e:  # every message names the table, whichever check raised it
        name = source or (
            os.path.basename(os.fspath(table)) if isinstance(table, (str, os.PathLike)) else ""
        )
        if not name or name in str(e):
            raise
        raise ValueError(f"{name}: {e}") from None


def _read_events(table, covariates, source) -> Events:
    if isinstance(table, (str, os.PathLike)):
        if not os.path.exists(table):
            raise FileNotFoundError(f"no event table at {os.fspath(table)!r}.")
        header, cols = _read_csv(table)
        source = source or os.path.basename(os.fspath(table))
    else:
        header, cols = _from_frame(table)
        source = source or "table"
    covs = _check_columns(header, covariates)
    n = len(cols["ID"])
    if n == 0:
        raise ValueError(f"{source} has no rows.")
    ids = _parse_ids(cols["ID"])
    idl = list(ids)

    def num(name, missing_ok=True, default=None):
        if name not in cols:
            return None if default is None else np.full(n, default, dtype=float)
        return _numeric(name, cols[name], idl, missing_ok)

    time = num("TIME", missing_ok=False)
    dv = num("DV")
    amt = num("AMT", default=0.0)
    amt = np.where(np.isnan(amt), 0.0, amt)
    evid = num("EVID")
    if evid is None:
        evid = np.where(amt > 0, 1.0, 0.0)
    mdv = num("MDV")
    if mdv is None:
        mdv = np.where(evid != 0, 1.0, 0.0)
    cmt = num("CMT")
    rate = num("RATE", default=0.0)
    rate = np.where(np.isnan(rate), 0.0, rate)
    cens = num("CENS")
    lloq = num("LLOQ")
    addl = num("ADDL")
    ii = num("II")
    ss = num("SS")
    occ = num("OCC")
    cov_values = {c: num(c) for c in covs}
    rows = np.arange(1, n + 1)

    def where(i):
        return f"row {i + 1} (ID {ids[i]!r}) of {source}"

    # Row-wise checks, first offending row reported.
    for i in range(n):
        t = time[i]
        if not math.isfinite(t):
            raise ValueError(f"{where(i)}: TIME is {_num(t)}; times must be finite.")
        if t < 0:
            raise ValueError(f"{where(i)}: TIME is {t:g}; times must be >= 0.")
        e = evid[i]
        if not math.isfinite(e) or e not in (0.0, 1.0, 2.0):
            extra = " (resets are not supported)" if e in (3.0, 4.0) else ""
            raise ValueError(
                f"{where(i)}: EVID is {_num(e)}{extra}; use 0 (observation), 1 (dose) or 2 (other)."
            )
        if mdv[i] not in (0.0, 1.0) or not math.isfinite(mdv[i]):
            if np.isnan(mdv[i]):
                mdv[i] = 1.0 if e != 0 else 0.0
            else:
                raise ValueError(f"{where(i)}: MDV is {_num(mdv[i])}; use 0 or 1.")
        if e == 1.0:
            a = amt[i]
            if not (math.isfinite(a) and a > 0):
                raise ValueError(f"{where(i)}: a dose (EVID=1) needs AMT > 0; got AMT={_num(a)}.")
            r = rate[i]
            if not math.isfinite(r) or r < 0:
                what = " (modelled rates/durations, RATE=-1/-2, are not supported)" if r < 0 else ""
                raise ValueError(f"{where(i)}: RATE is {_num(r)}{what}; use 0 (bolus) or > 0.")
            n_add = 0.0 if addl is None or np.isnan(addl[i]) else addl[i]
            step = 0.0 if ii is None or np.isnan(ii[i]) else ii[i]
            if not (math.isfinite(n_add) and float(n_add).is_integer() and n_add >= 0):
                raise ValueError(f"{where(i)}: ADDL is {_num(n_add)}; use an integer >= 0.")
            if n_add > 0 and not (math.isfinite(step) and step > 0):
                raise ValueError(
                    f"{where(i)}: ADDL={n_add:g} additional doses need an interval II > 0; "
                    f"got II={_num(step)}."
                )
            s_ss = 0.0 if ss is None or np.isnan(ss[i]) else ss[i]
            if s_ss not in (0.0, 1.0, 2.0):
                raise ValueError(
                    f"{where(i)}: SS is {_num(s_ss)}; use 0, 1 (steady state, reset) or 2 "
                    "(steady state added to the current state)."
                )
            if s_ss > 0 and not (math.isfinite(step) and step > 0):
                raise ValueError(
                    f"{where(i)}: a steady-state dose (SS={s_ss:g}) needs its interval II > 0; "
                    f"got II={_num(step)}."
                )
            if s_ss > 0 and r > 0 and amt[i] / r > step:
                raise ValueError(
                    f"{where(i)}: a steady-state infusion lasting AMT/RATE = {amt[i] / r:g} "
                    f"overlaps the next one (II = {step:g}); infusions longer than II are not "
                    "supported at steady state."
                )
            c = 1.0 if cmt is None or np.isnan(cmt[i]) else cmt[i]
            if not (math.isfinite(c) and float(c).is_integer() and c >= 1):
                raise ValueError(
                    f"{where(i)}: CMT is {_num(c)}; a dose needs a compartment number >= 1 "
                    "(1-based index into the model's states)."
                )
        censored_here = (cens is not None and cens[i] == 1.0) or (
            lloq is not None and math.isfinite(lloq[i])
        )
        if (
            e == 0.0
            and mdv[i] == 0.0
            and not censored_here
            and not math.isfinite(dv[i] if dv is not None else np.nan)
        ):
            raise ValueError(
                f"{where(i)}: DV is {cols['DV'][i]!r} on an observation row (EVID=0, MDV=0); "
                "observations need a finite DV. Mark the row MDV=1 to skip it."
            )
        for c, v in cov_values.items():
            if not math.isfinite(v[i]):
                raise ValueError(
                    f"{where(i)}: covariate {c} is {cols[c][i]!r}; covariates must be finite."
                )
    cmt_full = np.ones(n, dtype=int)
    if cmt is not None:
        ok = np.isfinite(cmt)
        cmt_full[ok] = cmt[ok].astype(int)
    # Subjects: contiguous blocks, times non-decreasing within each.
    subjects, seen = [], set()
    for i in range(n):
        if i == 0 or ids[i] != ids[i - 1]:
            if ids[i] in seen:
                raise ValueError(
                    f"{where(i)}: subject {ids[i]!r} appears again after other subjects; "
                    "keep each subject's rows together (sort the table by ID, then TIME)."
                )
            seen.add(ids[i])
            subjects.append(ids[i])
        elif time[i] < time[i - 1]:
            raise ValueError(
                f"{where(i)}: TIME {time[i]:g} is before the previous row's {time[i - 1]:g}; "
                "sort each subject's rows by TIME."
            )
    cens_out = _censoring(cens, lloq, dv, evid, mdv, where)
    is_obs = (evid == 0) & (mdv == 0)
    starts, _ = _blocks(ids)
    n_obs = np.add.reduceat(is_obs.astype(int), starts)
    for k in np.flatnonzero(n_obs == 0)[:1]:
        first = int(starts[k])
        raise ValueError(
            f"subject {subjects[k]!r} (from {where(first)}) has no observation (no row with "
            "EVID=0 and MDV=0); drop the subject or add its observations."
        )
    dv_clean = np.where(is_obs, dv if dv is not None else 0.0, np.nan)
    if cens_out is not None:
        dv_clean = np.where(cens_out[0] & is_obs, cens_out[1], dv_clean)
    return Events(
        id=ids,
        time=time,
        dv=dv_clean,
        amt=np.where(evid == 1, amt, 0.0),
        evid=evid.astype(int),
        cmt=cmt_full,
        mdv=mdv.astype(int),
        rate=np.where(evid == 1, rate, 0.0),
        covariates=cov_values,
        row=rows,
        source=source,
        subjects=tuple(subjects),
        cens=None if cens_out is None else cens_out[0] & is_obs,
        addl=None if addl is None else np.where(evid == 1, np.nan_to_num(addl), 0).astype(int),
        ss=None if ss is None else np.where(evid == 1, np.nan_to_num(ss), 0).astype(int),
        ii=None if ii is None else np.where(evid == 1, np.nan_to_num(ii), 0.0),
        occ=occ,
    )


def _censoring(cens, lloq, dv, evid, mdv, where):
    """(censored rows, their limits) from CENS and/or LLOQ, or None without either column.

    CENS = 1: DV holds the limit (or, with an LLOQ column, LLOQ is the limit). Without CENS,
    an observation with DV < LLOQ or a missing DV and a finite LLOQ is censored at LLOQ."""
    if cens is None and lloq is None:
        return None
    n = evid.shape[0]
    flag = np.zeros(n, bool)
    limit = np.full(n, np.nan)
    for i in range(n):
        obs = evid[i] == 0 and mdv[i] == 0
        c = 0.0 if cens is None or np.isnan(cens[i]) else cens[i]
        if c not in (0.0, 1.0):
            raise ValueError(
                f"{where(i)}: CENS is {_num(c)}; use 0 (observed) or 1 (below the limit of "
                "quantification, M3; upper limits, CENS=-1, are not supported)."
            )
        lim = np.nan if lloq is None else lloq[i]
        y = np.nan if dv is None else dv[i]
        if c == 1.0:
            lim = lim if math.isfinite(lim) else y
            if obs and not math.isfinite(lim):
                raise ValueError(
                    f"{where(i)}: CENS=1 needs the limit of quantification in DV (or LLOQ)."
                )
            flag[i], limit[i] = obs, lim
        elif cens is None and math.isfinite(lim) and (not math.isfinite(y) or y < lim):
            flag[i], limit[i] = obs, lim
    return flag, limit


# --------------------------------------------------------------------------------------
# Padded arrays
# --------------------------------------------------------------------------------------
class SubjectArrays(eqx.Module):
    """Per-subject arrays padded to common sizes (a leading subject axis; vmap over it).

    - ``seg_t0``, ``seg_t1`` (N, S): solve segments; ``seg_jump`` (N, S, n_states): bolus
      amounts added at a segment's start; ``seg_rate`` (N, S, n_states): infusion rates during
      it. Padding segments have zero length and no jump.
    - ``obs_t``, ``obs_seg``, ``dv``, ``obs_mask`` (N, M): observation times, their segment,
      values and a mask of the observations the subject's fit uses (padding is 0 with
      ``obs_mask`` False); ``holdout`` (N, M): the held-out observations (not in
      ``obs_mask``; scored by the held-out criterion only).
    - ``cov`` (N, C): baseline covariates (columns ordered as ``names``).
    - ``cens`` (N, M): observations below their limit of quantification (``dv`` holds the
      limit; the likelihood takes P(y < limit), NONMEM's M3), or None when the table has
      no censored observation.
    - ``doses``: for a model with lag times or a table with steady-state doses, the dose
      events whose times and states depend on the parameters
      (:class:`invcal.ode.dosing.DoseEvents`; the solver then builds its segments from
      them and the ``seg_*`` arrays are unused); None otherwise.
    - Occasions (inter-occasion variability, :mod:`invcal.ode.occasions`): ``iov`` the
      indices of the model parameters that vary between occasions, ``n_occasions`` (K) the
      most occasions of any subject, ``seg_occ`` (N, S) each segment's occasion; the
      parameter vector φ the solver takes is then (φ (d), δ₁ (r), …, δ_K (r)): occasion k
      solves with φ + δₖ on the parameters ``iov``. Empty / 0 / None without occasions.
    """

    seg_t0: jax.Array
    seg_t1: jax.Array
    seg_jump: jax.Array
    seg_rate: jax.Array
    obs_t: jax.Array
    obs_seg: jax.Array
    dv: jax.Array
    obs_mask: jax.Array
    holdout: jax.Array
    cov: jax.Array
    names: tuple[str, ...] = eqx.field(static=True, default=())
    cens: jax.Array | None = None
    doses: eqx.Module | None = None
    seg_occ: jax.Array | None = None
    iov: tuple[int, ...] = eqx.field(static=True, default=())
    n_occasions: int = eqx.field(static=True, default=0)

    @property
    def n_subjects(self) -> int:
        return int(self.obs_t.shape[0])


def _segments(ev: Events, idx: np.ndarray, n_states: int, states, occ=None):
    """Cut one subject's timeline into solve segments (and at the first record of each new
    occasion, given ``occ``: each row's occasion index); return them and each observation's
    segment index."""
    # Timeline entries: (time, order, kind, payload). Infusion ends sort before rows at the
    # same time (the state is continuous there, so the order does not matter for it).
    timeline = []
    for order, i in enumerate(idx):
        if occ is not None and order > 0 and occ[i] != occ[idx[order - 1]]:
            timeline.append((ev.time[i], 1, order, "occ", int(occ[i]), 0.0))  # before the row
        if ev.evid[i] == 1:
            c = int(ev.cmt[i])
            if c > n_states:
                raise ValueError(
                    f"{ev.where(i)}: dose into compartment CMT={c}, but the model has "
                    f"{n_states} state(s) {tuple(states)}; CMT is a 1-based index into them."
                )
            for t_dose in ev.dose_times(i):  # the dose and its ADDL repeats
                if ev.rate[i] > 0:
                    dur = ev.amt[i] / ev.rate[i]
                    timeline.append((t_dose, 1, order, "start", c - 1, ev.rate[i]))
                    timeline.append((t_dose + dur, 0, order, "stop", c - 1, ev.rate[i]))
                else:
                    timeline.append((t_dose, 1, order, "bolus", c - 1, ev.amt[i]))
        elif ev.evid[i] == 0 and ev.mdv[i] == 0:
            timeline.append((ev.time[i], 1, order, "obs", i, 0.0))
    timeline.sort(key=lambda e: (e[0], e[1], e[2]))  # stable: an occasion first in its row
    t_start = float(ev.time[idx[0]])
    rate = np.zeros(n_states)
    now = 0 if occ is None else int(occ[idx[0]])
    segs = [{"t0": t_start, "jump": np.zeros(n_states), "rate": rate.copy(), "nobs": 0, "occ": now}]
    obs_seg, obs_t, obs_dv, obs_row = [], [], [], []
    for t, _, _, kind, c, val in timeline:
        if kind == "obs":
            obs_seg.append(len(segs) - 1)
            obs_t.append(t)
            obs_dv.append(ev.dv[c])
            obs_row.append(c)
            segs[-1]["nobs"] += 1
            continue
        cur = segs[-1]
        if not (cur["t0"] == t and cur["nobs"] == 0):
            cur = {"t0": t, "jump": np.zeros(n_states), "rate": rate.copy(), "nobs": 0, "occ": now}
            segs.append(cur)
        if kind == "occ":
            now = cur["occ"] = c
        elif kind == "bolus":
            cur["jump"][c] += val
        elif kind == "start":
            rate[c] += val
        else:
            rate[c] -= val
            rate[c] = 0.0 if abs(rate[c]) < 1e-12 * max(val, 1.0) else rate[c]
        cur["rate"] = rate.copy()
    t_end = max([s["t0"] for s in segs] + obs_t)
    for k, s in enumerate(segs):
        s["t1"] = segs[k + 1]["t0"] if k + 1 < len(segs) else t_end
    return (
        segs,
        np.asarray(obs_seg, int),
        np.asarray(obs_t),
        np.asarray(obs_dv),
        np.asarray(obs_row, int),
    )


def holdout_rows(events: Events, holdout, *, seed: int = 0) -> np.ndarray:
    """A boolean mask over the table's rows of the held-out observations.

    ``holdout``: a fraction in (0, 1) — each subject holds out that share of its
    observations (rounded, at least one, leaving at least one to fit), drawn with ``seed``
    — or a boolean array with one entry per row of the table (True only on observation
    rows)."""
    n = events.id.shape[0]
    obs = events.is_observation
    if isinstance(holdout, (float, np.floating)) and not isinstance(holdout, bool):
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout as a fraction must be in (0, 1); got {holdout!r}.")
        rng = np.random.default_rng(seed)
        mask = np.zeros(n, bool)
        for a, b in zip(*events.blocks(), strict=True):
            rows = a + np.flatnonzero(obs[a:b])
            if rows.size < 2:
                continue
            k = min(max(int(round(holdout * rows.size)), 1), rows.size - 1)
            mask[rng.choice(rows, size=k, replace=False)] = True
        return mask
    mask = np.asarray(holdout)
    if mask.dtype != bool or mask.shape != (n,):
        got = f"shape {mask.shape}, dtype {mask.dtype}" if mask.ndim else repr(holdout)
        raise ValueError(
            f"holdout must be a fraction in (0, 1) or a boolean array with one entry per row "
            f"of {events.source} (shape ({n},)); got {got}."
        )
    bad = np.flatnonzero(mask & ~obs)
    if bad.size:
        raise ValueError(
            f"holdout marks {events.where(int(bad[0]))}, which is not an observation "
            "(EVID=0, MDV=0); only observations can be held out."
        )
    if not mask.any():
        raise ValueError("holdout selects no observation; hold out at least one.")
    return mask


def subject_arrays(
    events: Events, model, *, covariates: tuple[str, ...] = (), holdout=None, iov=()
) -> SubjectArrays:
    """Padded per-subject arrays for ``model`` (checks dose compartments against its states).

    ``covariates`` selects and orders the baseline covariate columns in ``cov``;
    ``holdout``: a boolean mask over the table's rows (:func:`holdout_rows`) of
    observations to leave out of the fits and mark in ``SubjectArrays.holdout``; ``iov``:
    the model parameters that vary between the occasions of the table's OCC column
    (:mod:`invcal.ode.occasions`)."""
    if not isinstance(events, Events):
        raise TypeError(
            f"expected event data from invcal.ode.read_events(...); got {type(events).__name__}."
        )
    unknown = [c for c in covariates if c not in events.covariates]
    if unknown:
        raise ValueError(
            f"covariates {unknown} are not columns of {events.source} "
            f"(covariate columns: {sorted(events.covariates)})."
        )
    n_states = len(model.states)
    occ, n_occ = None, 0
    if iov:
        from .occasions import occasion_index

        bad = [p for p in iov if p not in model.params]
        if bad:
            raise ValueError(f"iov {bad} are not parameters of the model {model.params}.")
        occ, n_occ = occasion_index(events)
    per = [
        _segments(events, np.arange(a, b), n_states, model.states, occ)
        for a, b in zip(*events.blocks(), strict=True)
    ]
    N = len(per)
    S = max(len(p[0]) for p in per)
    M = max(len(p[1]) for p in per)
    seg_t0 = np.zeros((N, S))
    seg_t1 = np.zeros((N, S))
    jump = np.zeros((N, S, n_states))
    rate = np.zeros((N, S, n_states))
    seg_occ = np.zeros((N, S), dtype=np.int32)
    obs_t = np.zeros((N, M))
    obs_seg = np.zeros((N, M), dtype=np.int32)
    dv = np.zeros((N, M))
    mask = np.zeros((N, M), dtype=bool)
    held = np.zeros((N, M), dtype=bool)
    cens = np.zeros((N, M), dtype=bool)
    rows_cens = events.is_censored
    rows_out = np.zeros(events.id.shape[0], bool) if holdout is None else np.asarray(holdout)
    for n, (segs, oseg, ot, odv, orow) in enumerate(per):
        for k, sg in enumerate(segs):
            seg_t0[n, k], seg_t1[n, k] = sg["t0"], sg["t1"]
            jump[n, k], rate[n, k], seg_occ[n, k] = sg["jump"], sg["rate"], sg["occ"]
        last = segs[-1]
        for k in range(len(segs), S):  # zero-length padding at the end of the timeline
            seg_t0[n, k] = seg_t1[n, k] = last["t1"]
            rate[n, k], seg_occ[n, k] = last["rate"], last["occ"]
        m = len(ot)
        obs_t[n, :m], obs_seg[n, :m], dv[n, :m] = ot, oseg, odv
        held[n, :m] = rows_out[orow]
        cens[n, :m] = rows_cens[orow]
        mask[n, :m] = ~held[n, :m]
        obs_t[n, m:], obs_seg[n, m:] = (ot[-1], oseg[-1]) if m else (0.0, 0)
    base = events.baseline()
    cov = np.stack([base[c] for c in covariates], axis=1) if covariates else np.zeros((N, 0))
    doses = None
    if model.lag is not None or events.has_steady_state:
        from .dosing import dose_events

        doses = dose_events(events, model, [p[4] for p in per], M, occ)
    return SubjectArrays(
        seg_t0=to_device(seg_t0),
        seg_t1=to_device(seg_t1),
        seg_jump=to_device(jump),
        seg_rate=to_device(rate),
        obs_t=to_device(obs_t),
        obs_seg=to_device(obs_seg),
        dv=to_device(dv),
        obs_mask=to_device(mask),
        holdout=to_device(held),
        cov=to_device(cov, dtype=float),
        names=tuple(covariates),
        cens=to_device(cens) if cens.any() else None,
        doses=doses,
        seg_occ=to_device(seg_occ) if iov else None,
        iov=tuple(model.params.index(p) for p in iov),
        n_occasions=n_occ,
    )
