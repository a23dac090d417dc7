"""Property-based fuzzing (hypothesis) of what users type and the files they bring: the ODE
event-table reader, the calibration's option checks and the domain commands' arguments.
Whatever comes in, the answer is a result or one documented error naming what is wrong,
never a raw pandas, NumPy or Python error from inside, and never work started on bad input.
"""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invcal import cli, ode
from invcal.ode.calibrate import prepare

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "WT", "CENS", "LLOQ"]
COLUMNS += ["ADDL", "II", "SS", "OCC", "id", "Time", "X"]
CELLS = st.one_of(
    st.sampled_from(["", ".", "0", "1", "2", "-1", "0.5", "1e309", "nan", "inf", "-inf"]),
    st.sampled_from(["abc", "1,5", "NA", " 3 ", "1e-300", "100", "2.5e2", "é", "\x00"]),
    st.integers(-3, 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@st.composite
def tables(draw):
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=9))
    n_rows = draw(st.integers(0, 6))
    width = draw(st.sampled_from([len(header), len(header), max(len(header) - 1, 0)]))
    rows = [",".join(draw(st.lists(CELLS, min_size=width, max_size=width))) for _ in range(n_rows)]
    text = "\n".join([",".join(header), *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


_THEOPH = [line.split(",") for line in open("problems/data/theoph.csv").read().splitlines()]


@st.composite
def mutated_theoph(draw):
    """The shipped Theoph table with a few cells replaced, rows swapped or dropped: mostly
    readable tables, each with one or two things wrong (or nothing)."""
    rows = [list(r) for r in _THEOPH[: draw(st.integers(2, 40))]]
    for _ in range(draw(st.integers(0, 3))):
        i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(rows[0]) - 1))
        rows[i][j] = draw(CELLS)
    if draw(st.booleans()) and len(rows) > 3:
        i = draw(st.integers(1, len(rows) - 2))
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    return ("\n".join(",".join(r) for r in rows) + "\n").encode()


def _one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and "Traceback" not in message


@FUZZ
@given(content=st.one_of(tables(), mutated_theoph()))
def test_event_table_reader(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("t") / "mydata.csv"
    path.write_bytes(content)
    try:
        events = ode.read_events(path)
    except ValueError as e:  # the documented error: one line naming the file
        assert "mydata.csv" in str(e) and _one_line(str(e)), str(e)
        return
    # a table that reads is a usable one: observations, finite times, known subjects
    assert events.is_observation.any()
    assert np.all(np.isfinite(events.time))
    assert set(np.unique(events.id)) == set(events.subjects)


NAMES = st.sampled_from(["lKe", "lKa", "lCl", "lV", "omega_lKa", "sigma", "WT", "x", "", " "])
WORDS = st.sampled_from(["additive", "proportional", "combined", "diagonal", "full", "focei"])
WORDS = st.one_of(WORDS, st.sampled_from(["laplace", "sandwich", "R", "S", "lme", "m1", "m3"]))
WORDS = st.one_of(WORDS, st.text(string.printable, max_size=6))
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))


@FUZZ
@given(
    model=st.one_of(st.sampled_from(["1cmt-oral-ke", "1cmt-oral", "2cmt-iv", "seed"]), WORDS),
    random=st.one_of(st.none(), st.lists(NAMES, max_size=3)),
    error=WORDS,
    omega=WORDS,
    approximation=WORDS,
    covariance=WORDS,
    init=st.one_of(st.none(), st.dictionaries(NAMES, VALUES, max_size=3)),
    covariates=st.one_of(st.none(), st.dictionaries(NAMES, st.lists(NAMES, max_size=2))),
    censoring=WORDS,
)
def test_calibration_options(
    model, random, error, omega, approximation, covariance, init, covariates, censoring
):
    try:
        prepared = prepare(
            "problems/data/theoph.csv",
            model,
            random=random,
            error=error,
            omega=omega,
            approximation=approximation,
            covariance=covariance,
            init=init,
            covariates=covariates,
            censoring=censoring,
        )
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:  # documented ones
        assert _one_line(str(e)), str(e)
        return
    assert isinstance(prepared, dict)


FLAGS = ["--model", "--random", "--error", "--omega", "--approximation", "--covariance"]
FLAGS += ["--init", "--covariate", "--censoring", "--simulations", "--seed", "--max-iter"]
FLAGS += ["--task", "--regularizer", "--sigma", "--psf", "--mask", "--blur-sigma", "--rule"]
TOKENS = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(["-1", "0", "nan", "1e9", "abc", "P=1", "lCl~WT", "1cmt-iv", "tv", "auto"]),
    st.text(string.ascii_letters + string.digits + "=,~-.", max_size=6),
)


@pytest.mark.parametrize("command", ["calibrate", "reconstruct"])
@FUZZ
@given(tokens=st.lists(TOKENS, max_size=8), bad=st.sampled_from(["missing", "garbage"]))
def test_domain_command_arguments(tmp_path_factory, capsys, command, tokens, bad):
    """The command's main input is unusable (a missing file, or bytes that are neither a
    table nor an image), so whatever options come with it, the answer is exit status 2 and
    one line, and no output folder is made."""
    folder = tmp_path_factory.mktemp("c")
    data = folder / ("in.csv" if command == "calibrate" else "in.png")
    if bad == "garbage":
        data.write_bytes(b"\x89PNG\x00\xffnot really\n1,2\n")
    out = folder / "out"
    code = cli.main([command, str(data), *tokens, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, (tokens, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invcal: error:"), (tokens, err)
    assert not out.exists()
