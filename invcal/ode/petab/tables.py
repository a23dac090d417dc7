"""Reading and checking a PEtab problem's files, with errors that name the file and row.

The ``petab`` package reads the YAML file and the tables and runs its linter; this module
adds what a user needs when something is wrong: one line naming the file and the row
(line numbers count the header as line 1).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import petab.v1 as petab
from petab.v1 import C

from .errors import PEtabError
from .sbml import SbmlOde, check_document, ode_from_sbml, read_sbml_document

__all__ = ["Tables", "read_tables", "lint", "Where"]


@dataclasses.dataclass(frozen=True)
class Where:
    """A row of a table: the file and the line (the header is line 1)."""

    file: str
    line: int

    def __str__(self):
        return f"{self.file} line {self.line}"


@dataclasses.dataclass
class Tables:
    """The PEtab problem as the ``petab`` package holds it, plus where each row came from."""

    yaml: str
    problem: petab.Problem
    sbml_file: str
    ode: SbmlOde
    measurement_rows: list  # Where per row of problem.measurement_df
    observable_rows: dict  # observableId -> Where
    condition_rows: dict  # conditionId -> Where
    parameter_rows: dict  # parameterId -> Where
    condition_files: tuple
    observable_files: tuple


def _read(files, reader, kind, yaml_path):
    frames = []
    for f in files:
        try:
            df = reader(f)
        except FileNotFoundError:
            raise PEtabError(f"{yaml_path}: the {kind} file {f} does not exist.") from None
        except Exception as e:  # pandas/petab raise many types for an unreadable table
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PEtabError(f"{f}: the {kind} table does not read: {msg}") from None
        frames.append(df)
    return frames


def _id_rows(frames, files, id_col):
    out = {}
    for df, f in zip(frames, files, strict=True):
        for line, idx in enumerate(df.index, start=2):
            if idx in out:
                raise PEtabError(f"{f} line {line}: the {id_col} {idx!r} is defined twice.")
            out[idx] = Where(f, line)
    return out


def read_tables(yaml_path) -> Tables:
    """Read and check the PEtab problem ``yaml_path``; raise PEtabError naming the file and
    the row of the first problem found."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise PEtabError(f"{yaml_path}: the PEtab YAML file does not exist.")
    try:
        config = petab.yaml.load_yaml(yaml_path)
        petab.yaml.validate(config, path_prefix=yaml_path.parent)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PEtabError(f"{yaml_path}: not a valid PEtab YAML file: {msg}") from None
    if int(str(config.get(C.FORMAT_VERSION, 1)).split(".")[0]) != 1:
        raise PEtabError(
            f"{yaml_path}: PEtab format version {config.get(C.FORMAT_VERSION)} "
            "is not supported; this import reads PEtab 1."
        )
    if len(config[C.PROBLEMS]) != 1:
        raise PEtabError(f"{yaml_path}: {len(config[C.PROBLEMS])} problems; the import reads one.")
    base = yaml_path.parent
    sub = config[C.PROBLEMS][0]

    def paths(key, required=True):
        files = [str(base / f) for f in sub.get(key, [])]
        if required and not files:
            raise PEtabError(f"{yaml_path}: the problem lists no {key}.")
        for f in files:
            if not Path(f).is_file():
                raise PEtabError(
                    f"{yaml_path}: the {key[:-1].replace('_', ' ')} {f} does not exist."
                )
        return files

    sbml_files = paths(C.SBML_FILES)
    if len(sbml_files) != 1:
        raise PEtabError(f"{yaml_path}: {len(sbml_files)} SBML files; the import reads one.")
    measurement_files = paths(C.MEASUREMENT_FILES)
    condition_files = paths(C.CONDITION_FILES)
    observable_files = paths(C.OBSERVABLE_FILES)
    parameter_files = config[C.PARAMETER_FILE]
    parameter_files = (
        [parameter_files] if isinstance(parameter_files, str) else list(parameter_files)
    )
    parameter_files = [str(base / f) for f in parameter_files]
    for f in parameter_files:
        if not Path(f).is_file():
            raise PEtabError(f"{yaml_path}: the parameter file {f} does not exist.")

    doc = check_document(read_sbml_document(sbml_files[0]), sbml_files[0])
    ode = ode_from_sbml(doc, sbml_files[0])  # expands function definitions in doc
    measurements = _read(measurement_files, petab.get_measurement_df, "measurement", yaml_path)
    conditions = _read(condition_files, petab.get_condition_df, "condition", yaml_path)
    observables = _read(observable_files, petab.get_observable_df, "observable", yaml_path)
    parameters = _read(parameter_files, petab.get_parameter_df, "parameter", yaml_path)

    measurement_rows = [
        Where(f, line)
        for df, f in zip(measurements, measurement_files, strict=True)
        for line in range(2, 2 + len(df))
    ]
    tables = Tables(
        yaml=str(yaml_path),
        problem=petab.Problem(
            model=petab.models.sbml_model.SbmlModel(sbml_document=doc),
            condition_df=pd.concat(conditions),
            measurement_df=pd.concat(measurements, ignore_index=True),
            observable_df=pd.concat(observables),
            parameter_df=pd.concat(parameters),
        ),
        sbml_file=sbml_files[0],
        ode=ode,
        measurement_rows=measurement_rows,
        observable_rows=_id_rows(observables, observable_files, C.OBSERVABLE_ID),
        condition_rows=_id_rows(conditions, condition_files, C.CONDITION_ID),
        parameter_rows=_id_rows(parameters, parameter_files, C.PARAMETER_ID),
        condition_files=tuple(condition_files),
        observable_files=tuple(observable_files),
    )
    _check_rows(tables)
    return tables


def _check_rows(t: Tables) -> None:
    """The checks whose failures a user must find in a file: each names the file and row."""
    p = t.problem
    m = p.measurement_df
    obs_file = ", ".join(Path(f).name for f in t.observable_files)
    cond_file = ", ".join(Path(f).name for f in t.condition_files)
    for col in (C.OBSERVABLE_ID, C.SIMULATION_CONDITION_ID, C.MEASUREMENT, C.TIME):
        if col not in m.columns:
            files = sorted({w.file for w in t.measurement_rows})
            raise PEtabError(f"{files[0]}: the measurement table has no column {col!r}.")
    for i, row in enumerate(m.itertuples(index=False)):
        where = t.measurement_rows[i]
        r = row._asdict()
        if r[C.OBSERVABLE_ID] not in p.observable_df.index:
            raise PEtabError(
                f"{where}: observableId {r[C.OBSERVABLE_ID]!r} is not in the observable "
                f"table ({obs_file})."
            )
        for col in (C.SIMULATION_CONDITION_ID, C.PREEQUILIBRATION_CONDITION_ID):
            cid = r.get(col)
            if col == C.PREEQUILIBRATION_CONDITION_ID and (not isinstance(cid, str) or not cid):
                continue
            if cid not in p.condition_df.index:
                raise PEtabError(
                    f"{where}: {col} {cid!r} is not in the condition table ({cond_file})."
                )
        for col in (C.MEASUREMENT, C.TIME):
            try:
                value = float(r[col])
            except (TypeError, ValueError):
                raise PEtabError(f"{where}: {col} {r[col]!r} is not a number.") from None
            if np.isnan(value) or (col == C.MEASUREMENT and not np.isfinite(value)):
                raise PEtabError(f"{where}: {col} is missing or not finite.")
        if np.isinf(float(r[C.TIME])):
            raise PEtabError(
                f"{where}: time inf (a steady-state measurement) is not supported by the import."
            )
        if float(r[C.TIME]) < 0:
            raise PEtabError(
                f"{where}: time {r[C.TIME]} is negative; PEtab simulations start at 0."
            )
    for col in (C.OBSERVABLE_FORMULA, C.NOISE_FORMULA):
        if col not in p.observable_df.columns:
            raise PEtabError(
                f"{t.observable_files[0]}: the observable table has no column {col!r}."
            )
    for oid, row in p.observable_df.iterrows():
        where = t.observable_rows[oid]
        trafo = row.get(C.OBSERVABLE_TRANSFORMATION, C.LIN)
        trafo = C.LIN if not isinstance(trafo, str) or not trafo else trafo
        dist = row.get(C.NOISE_DISTRIBUTION, C.NORMAL)
        dist = C.NORMAL if not isinstance(dist, str) or not dist else dist
        if trafo not in C.OBSERVABLE_TRANSFORMATIONS:
            raise PEtabError(
                f"{where}: observableTransformation {trafo!r} is not one of "
                f"{C.OBSERVABLE_TRANSFORMATIONS}."
            )
        if dist not in (C.NORMAL, C.LAPLACE):
            raise PEtabError(f"{where}: noiseDistribution {dist!r} is not 'normal' or 'laplace'.")
    par = p.parameter_df
    for col in (C.PARAMETER_SCALE, C.NOMINAL_VALUE, C.ESTIMATE):
        if col not in par.columns:
            f = next(iter(t.parameter_rows.values())).file if t.parameter_rows else t.yaml
            raise PEtabError(f"{f}: the parameter table has no column {col!r}.")
    for pid, row in par.iterrows():
        where = t.parameter_rows[pid]
        if row[C.PARAMETER_SCALE] not in C.PARAMETER_SCALES:
            raise PEtabError(
                f"{where}: parameterScale {row[C.PARAMETER_SCALE]!r} is not one of "
                f"{C.PARAMETER_SCALES}."
            )
        if row[C.ESTIMATE] not in (0, 1):
            raise PEtabError(f"{where}: estimate {row[C.ESTIMATE]!r} is not 0 or 1.")
        try:
            nominal = float(row[C.NOMINAL_VALUE])
        except (TypeError, ValueError):
            raise PEtabError(
                f"{where}: nominalValue {row[C.NOMINAL_VALUE]!r} is not a number."
            ) from None
        if np.isnan(nominal):
            raise PEtabError(f"{where}: parameter {pid!r} has no nominalValue.")
        if row[C.PARAMETER_SCALE] != C.LIN and nominal <= 0:
            raise PEtabError(
                f"{where}: nominalValue {nominal} of a {row[C.PARAMETER_SCALE]}-scaled "
                "parameter must be > 0."
            )


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def lint(t: Tables) -> None:
    """petab's own linter; its first error becomes the message."""
    handler = _Collect()
    log = logging.getLogger("petab")
    old_propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False  # the message is raised below, not also printed
    try:
        failed = petab.lint_problem(t.problem)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PEtabError(f"{t.yaml}: the PEtab linter rejects the problem: {msg}") from None
    finally:
        log.removeHandler(handler)
        log.propagate = old_propagate
    if failed:
        msg = handler.messages[0] if handler.messages else "see petablint"
        raise PEtabError(f"{t.yaml}: the PEtab linter rejects the problem: {msg.strip()}")
