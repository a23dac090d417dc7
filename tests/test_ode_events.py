"""Event tables: reading, validation errors that name the row, and solve segments.

No ODE is solved here (fast)."""

import math

import numpy as np
import pytest

from invcal import ode
from problems.hierarchical_ode import THEOPH_CSV, load_theoph, theophylline_model

MODEL = theophylline_model()


def table(**overrides):
    """A two-subject table as a dict of columns; ``overrides`` replace columns."""
    cols = {
        "ID": [1, 1, 1, 2, 2, 2],
        "TIME": [0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
        "DV": [".", 5.0, 4.0, ".", 6.0, 3.0],
        "AMT": [4.0, 0, 0, 5.0, 0, 0],
        "EVID": [1, 0, 0, 1, 0, 0],
        "CMT": [1, 2, 2, 1, 2, 2],
        "MDV": [1, 0, 0, 1, 0, 0],
        "WT": [70.0, 70.0, 70.0, 80.0, 80.0, 80.0],
    }
    cols.update(overrides)
    return {k: v for k, v in cols.items() if v is not None}


def test_theoph_csv():
    ev = load_theoph()
    assert ev.n_subjects == 12
    assert ev.n_observations == 132
    assert int(ev.is_dose.sum()) == 12
    assert set(ev.covariates) == {"WT"}
    t, dv = ev.observations(1)
    assert t.shape == (11,) and math.isclose(dv[3], 10.5)
    assert ev.baseline()["WT"][0] == pytest.approx(79.6)
    assert ev.source == "theoph.csv"


def test_dict_input_and_defaults():
    ev = ode.read_events(table(EVID=None, MDV=None, CMT=None))
    assert ev.n_subjects == 2 and ev.n_observations == 4
    assert list(ev.evid) == [1, 0, 0, 1, 0, 0]
    assert list(ev.cmt[ev.is_dose]) == [1, 1]


def test_pandas_dataframe():
    pd = pytest.importorskip("pandas")
    ev = ode.read_events(pd.read_csv(THEOPH_CSV))
    assert ev.n_subjects == 12 and ev.n_observations == 132


@pytest.mark.parametrize(
    "overrides, kwargs, match",
    [
        ({"FOO": [0] * 6}, {"covariates": ("WT",)}, "unknown column 'FOO'"),
        ({"Tim": [0] * 6}, {}, r"unknown column 'Tim': did you mean 'TIME'"),
        ({"TIME": None, "T": [0.0] * 6}, {}, "no TIME column"),
        ({"DUR": [0] * 6}, {}, "'DUR' .*not supported"),
        ({"SS": [3, 0, 0, 0, 0, 0]}, {}, r"row 1 \(ID 1\).*SS is 3; use 0, 1"),
        ({"SS": [1, 0, 0, 0, 0, 0]}, {}, r"row 1 \(ID 1\).*SS=1\) needs its interval II > 0"),
        ({"TIME": [0.0, 1.0, -2.0, 0, 1, 2]}, {}, r"row 3 \(ID 1\).*TIME is -2.*>= 0"),
        ({"TIME": [0.0, 2.0, 1.0, 0, 1, 2]}, {}, r"row 3 \(ID 1\).*before the previous row"),
        ({"DV": [".", 5.0, "nan", ".", 6, 3]}, {}, r"row 3 \(ID 1\).*DV is 'nan'.*MDV=1"),
        ({"DV": [".", 5.0, "abc", ".", 6, 3]}, {}, r"row 3 \(ID 1\).*DV has 'abc'.*not a number"),
        ({"DV": [".", 5.0, 4.0, ".", "inf", 3]}, {}, r"row 5 \(ID 2\).*DV is 'inf'.*finite DV"),
        ({"DV": [".", 5.0, 4.0, ".", 6.0, math.nan]}, {}, r"row 6 \(ID 2\).*DV is nan"),
        ({"DV": [".", -math.inf, 4, ".", 6, 3]}, {}, r"row 2 \(ID 1\).*DV is -inf"),
        ({"TIME": [-0.5, 1.0, 2.0, 0, 1, 2]}, {}, r"row 1 \(ID 1\).*TIME is -0.5.*>= 0"),
        ({"NAME": ["a"] * 6}, {}, r"row 1 \(ID 1\).*column NAME has 'a'.*not a number"),
        (
            {"ID": [1, 1, 2, 2, 1, 1], "TIME": [0, 1, 0, 1, 0, 1]},
            {},
            r"row 5 \(ID 1\).*appears again",
        ),
        ({"EVID": [1, 0, 0, 3, 0, 0]}, {}, r"row 4 \(ID 2\).*EVID is 3.*resets"),
        ({"AMT": [4.0, 0, 0, 0.0, 0, 0]}, {}, r"row 4 \(ID 2\).*needs AMT > 0"),
        ({"CMT": [1, 2, 2, 0, 2, 2]}, {}, r"row 4 \(ID 2\).*CMT is 0"),
        ({"MDV": [1, 0, 0, 1, 1, 1]}, {}, r"subject 2 \(from row 4 \(ID 2\).*no observation"),
        ({"WT": [70.0, 70, 70, "inf", 80, 80]}, {}, r"row 4 \(ID 2\).*covariate WT"),
    ],
)
def test_bad_tables(overrides, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ode.read_events(table(**overrides), **kwargs)


def test_dose_into_missing_compartment_names_the_row():
    ev = ode.read_events(table(CMT=[1, 2, 2, 3, 2, 2]))
    with pytest.raises(ValueError, match=r"row 4 \(ID 2\).*CMT=3.*2 state\(s\)"):
        ode.subject_arrays(ev, MODEL)


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("ID,TIME,DV\n1,0,1\n1,1\n")
    with pytest.raises(ValueError, match="line 3: 2 fields"):
        ode.read_events(p)
    with pytest.raises(FileNotFoundError, match="no event table"):
        ode.read_events(tmp_path / "missing.csv")
    with pytest.raises(TypeError, match="path to a CSV file"):
        ode.read_events(42)


def test_segments_multiple_doses_and_infusion():
    # Subject 1: obs before the first dose, bolus at 1, obs at 2, infusion 2→4 (AMT 4, RATE 2)
    # with an observation at 2 recorded *before* the infusion row, obs at 3 and 5.
    ev = ode.read_events(
        {
            "ID": [1] * 7,
            "TIME": [0.5, 1.0, 2.0, 2.0, 3.0, 5.0, 5.0],
            "DV": [0.1, ".", 1.0, ".", 2.0, 3.0, "."],
            "AMT": [0, 3.0, 0, 4.0, 0, 0, 1.0],
            "RATE": [0, 0, 0, 2.0, 0, 0, 0],
            "EVID": [0, 1, 0, 1, 0, 0, 1],
            "CMT": [2, 1, 2, 2, 2, 2, 2],
        }
    )
    a = ode.subject_arrays(ev, MODEL)
    t0, t1 = np.asarray(a.seg_t0[0]), np.asarray(a.seg_t1[0])
    np.testing.assert_allclose(t0, [0.5, 1.0, 2.0, 4.0, 5.0])
    np.testing.assert_allclose(t1, [1.0, 2.0, 4.0, 5.0, 5.0])
    np.testing.assert_allclose(a.seg_jump[0, :, 0], [0, 3.0, 0, 0, 0])
    np.testing.assert_allclose(a.seg_jump[0, :, 1], [0, 0, 0, 0, 1.0])
    np.testing.assert_allclose(a.seg_rate[0, :, 1], [0, 0, 2.0, 0, 0])
    np.testing.assert_array_equal(a.obs_seg[0], [0, 1, 2, 3])
    np.testing.assert_allclose(a.obs_t[0], [0.5, 2.0, 3.0, 5.0])


def test_padding_across_subjects():
    ev = ode.read_events(
        table(
            ID=[1, 1, 1, 2, 2, 2],
            TIME=[0.0, 1.0, 2.0, 0.0, 1.0, 1.5],
            DV=[".", 5.0, 4.0, ".", ".", 3.0],
            AMT=[4.0, 0, 0, 5.0, 2.0, 0],
            EVID=[1, 0, 0, 1, 1, 0],
            MDV=[1, 0, 0, 1, 1, 0],
        )
    )
    a = ode.subject_arrays(ev, MODEL, covariates=("WT",))
    assert a.seg_t0.shape == (2, 2) and a.obs_t.shape == (2, 2)
    np.testing.assert_array_equal(a.obs_mask, [[True, True], [True, False]])
    # subject 1's padding segment has zero length at the end of its timeline
    assert float(a.seg_t0[0, 1]) == float(a.seg_t1[0, 1]) == 2.0
    np.testing.assert_allclose(a.cov[:, 0], [70.0, 80.0])
    with pytest.raises(ValueError, match=r"covariates \['AGE'\] are not columns"):
        ode.subject_arrays(ev, MODEL, covariates=("AGE",))
