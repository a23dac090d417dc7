r"""Basis-pursuit denoising / the Lasso with its ℓ1 weight tuned by hypergradients.

    inner   x*(λ) = argmin_x  ½‖Ax − y‖² + Σⱼ λⱼ sⱼ |xⱼ|      (+ x ≥ 0 with ``nonneg``)
    outer   E(λ)  = held-out MSE,  K-fold CV,  or SURE (σ known, no held-out data)

(Tibshirani 1996; Chen, Donoho & Saunders 1998). λ is one positive number, or one per
coefficient (``weighted``: the weighted Lasso, p hyperparameters), optimized on the log scale.
The scale s is 1, or the number of training rows n with ``alpha_scaling`` — scikit-learn's
convention (1/2n)‖Ax − y‖² + α‖x‖₁, i.e. λ = nα, which keeps one α meaningful across folds of
different sizes.

The inner solver is :class:`invcal.sparse.WorkingSetFISTA` (duality-gap stopping) and the
hypergradient :class:`invcal.sparse.SupportImplicit`, which solves only the |S|×|S| system
A_SᵀA_S v = ∇_{x_S}E on the support S of x* (Bertrand et al. 2020, 2022). The criteria come
from :mod:`invcal.criteria`: held-out rows, K folds solved side by side with one λ, and the
finite-difference Monte-Carlo SURE of Deledalle et al. (2014) (Stein 1981).

Use cases (data builders below):

* **compressed sensing** — a k-sparse x (amplitudes ±[1, 2]) measured as y = Ax + σε by a
  Gaussian matrix (entries N(0, 1/n)) or by n random rows of the orthonormal DCT-II scaled by
  √(p/n) (:class:`SubsampledDCT`, matrix-free: O(p log p) per product); σ is set by the SNR,
  σ = ‖Ax‖/√n · 10^(−SNR/20);
* **regression** — scikit-learn's diabetes data (442 patients, 10 features) with degree-3
  polynomial features (285, standardized on the training rows), and ``make_regression``.
  Both ship with scikit-learn; nothing is downloaded.
"""

from __future__ import annotations

import math
from numbers import Integral

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import invcal as ic
from invcal import criteria, sparse
from invcal.catalog import Setup

__all__ = [
    "SubsampledDCT",
    "build",
    "compressed_sensing",
    "regression",
    "reweighted_sure",
    "setup",
    "support_f1",
]

CRITERIA = ("held_out", "kfold", "sure")
CASES = ("cs-gaussian", "cs-dct", "diabetes", "synthetic")


# --------------------------------------------------------------------------------------
# Operators and data
# --------------------------------------------------------------------------------------
class SubsampledDCT(sparse.AbstractLinearMap):
    r"""A x = c · (C x)[rows], C the orthonormal DCT-II of size p, c = √(p/n) by default: n rows
    of an orthogonal matrix scaled so columns have unit norm on average (‖A‖₂² = c²)."""

    rows: jax.Array
    scale: float = eqx.field(static=True)

    def __init__(self, rows, p: int, scale: float | None = None):
        self.rows = jnp.asarray(rows, dtype=jnp.int32)
        self.shape = (int(np.shape(rows)[-1]), int(p))
        self.scale = math.sqrt(p / self.shape[0]) if scale is None else float(scale)

    def mv(self, x):
        return self.scale * jax.scipy.fft.dct(x, norm="ortho")[self.rows]

    def rmv(self, r):
        full = jnp.zeros(self.shape[1], dtype=r.dtype).at[self.rows].set(r)
        return self.scale * jax.scipy.fft.idct(full, norm="ortho")


def _positive_int(name, value, low=1):
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    return int(value)


def _real(name, value, *, positive=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or (positive and v <= 0):
        kind = "finite positive" if positive else "finite"
        raise ValueError(f"{name} must be a {kind} number; got {value!r}.")
    return v


def compressed_sensing(
    n: int = 200,
    p: int = 1000,
    k: int = 20,
    *,
    snr_db: float = 20.0,
    operator: str = "gaussian",
    nonneg: bool = False,
    n_val: int = 0,
    seed: int = 0,
) -> dict:
    """A k-sparse signal and its noisy measurements (see the module docstring).

    Returns a dict: ``A`` (matrix or :class:`SubsampledDCT`), ``y``, ``x_true``, ``sigma`` and,
    if ``n_val > 0``, ``n_val`` extra held-out measurements ``A_val``, ``y_val`` of the same
    kind (other rows), with the same noise level."""
    n, p, k = _positive_int("n", n), _positive_int("p", p), _positive_int("k", k)
    n_val = _positive_int("n_val", n_val, low=0)
    snr_db = _real("snr_db", snr_db)
    if k > p:
        raise ValueError(f"k (sparsity) must be <= p={p}; got k={k}.")
    if operator not in ("gaussian", "dct"):
        raise ValueError(f"operator must be 'gaussian' or 'dct'; got {operator!r}.")
    if operator == "dct" and n + n_val > p:
        raise ValueError(
            f"a subsampled DCT has at most p={p} rows; asked for n + n_val = {n + n_val}."
        )
    rng = np.random.default_rng(seed)
    x = np.zeros(p)
    S = rng.choice(p, k, replace=False)
    x[S] = (1.0 + rng.random(k)) * (1.0 if nonneg else rng.choice([-1.0, 1.0], k))
    if operator == "gaussian":
        M = rng.normal(size=(n + n_val, p)) / math.sqrt(n)
        A, A_val = jnp.asarray(M[:n]), jnp.asarray(M[n:])
        clean, clean_val = M[:n] @ x, M[n:] @ x
    else:
        rows = rng.choice(p, n + n_val, replace=False)
        # Held-out rows keep A's column scaling √(p/n), so λ means the same on both.
        A = SubsampledDCT(rows[:n], p)
        A_val = SubsampledDCT(rows[n:], p, scale=A.scale)
        clean = np.asarray(A.mv(jnp.asarray(x)))
        clean_val = np.asarray(A_val.mv(jnp.asarray(x)))
    sigma = float(np.linalg.norm(clean) / math.sqrt(n) * 10 ** (-snr_db / 20))
    out = {
        "A": A,
        "y": jnp.asarray(clean + sigma * rng.normal(size=n)),
        "x_true": jnp.asarray(x),
        "sigma": sigma,
    }
    if n_val:
        out["A_val"] = A_val
        out["y_val"] = jnp.asarray(clean_val + sigma * rng.normal(size=n_val))
    return out


def regression(
    dataset: str = "diabetes",
    *,
    n_samples: int = 1000,
    n_features: int = 5000,
    n_informative: int = 50,
    noise: float = 5.0,
    n_train: int | None = None,
    seed: int = 0,
    degree: int = 3,
) -> dict:
    """Train/test regression data: ``A_train, y_train, A_test, y_test`` (float64 NumPy).

    - ``"diabetes"``: degree-``degree`` polynomial features of scikit-learn's diabetes data,
      a shuffled 70/30 split (``seed``), standardized with the training mean and std.
    - ``"synthetic"``: ``make_regression(n_samples, n_features, n_informative, noise,
      random_state=seed)``; the first ``n_train`` rows (default 70%) train, the rest test.
    """
    if dataset == "diabetes":
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import PolynomialFeatures

        X, y = load_diabetes(return_X_y=True)
        X = PolynomialFeatures(_positive_int("degree", degree), include_bias=False).fit_transform(X)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=seed)
        mean, std = X_tr.mean(0), X_tr.std(0)
        std[std == 0] = 1.0
        return {
            "A_train": (X_tr - mean) / std,
            "y_train": y_tr,
            "A_test": (X_te - mean) / std,
            "y_test": y_te,
        }
    if dataset == "synthetic":
        from sklearn.datasets import make_regression

        n_samples = _positive_int("n_samples", n_samples, low=2)
        X, y = make_regression(
            n_samples=n_samples,
            n_features=_positive_int("n_features", n_features),
            n_informative=_positive_int("n_informative", n_informative),
            noise=_real("noise", noise),
            random_state=seed,
        )
        n_tr = int(0.7 * n_samples) if n_train is None else _positive_int("n_train", n_train)
        return {"A_train": X[:n_tr], "y_train": y[:n_tr], "A_test": X[n_tr:], "y_test": y[n_tr:]}
    raise ValueError(f"dataset must be 'diabetes' or 'synthetic'; got {dataset!r}.")


def support_f1(x, x_true) -> float:
    """F1 score of the recovered support {x ≠ 0} against the true one."""
    est, true = np.asarray(x) != 0, np.asarray(x_true) != 0
    tp = int(np.sum(est & true))
    denom = int(est.sum() + true.sum())
    return 1.0 if denom == 0 else 2.0 * tp / denom


# --------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------
def penalty_weights(theta, data):
    """λ ⊙ s ⊙ c: the ℓ1 weights (s = data['lam_scale'], 1 or the training-row count; c =
    data['l1_weights'], fixed per-coefficient weights, when present: the reweighted stage)."""
    w = theta["lam"] * data["lam_scale"]
    return w * data["l1_weights"] if "l1_weights" in data else w


def _check_lam(lam, p, weighted):
    arr = np.asarray(lam, dtype=float)
    if arr.ndim == 0 and weighted:
        arr = np.full(p, float(arr))
    want = (p,) if weighted else ()
    if arr.shape != want:
        raise ValueError(
            "lam must be "
            + (f"one value per coefficient, shape {want}" if weighted else "a scalar")
            + f" (weighted={weighted}); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"lam must be > 0 and finite (the ℓ1 weight; λ = 0 is least squares, which the Lasso "
            f"machinery does not cover); got {lam!r}."
        )
    return arr


def build(
    A,
    y,
    *,
    criterion: str = "held_out",
    A_val=None,
    y_val=None,
    folds=5,
    sigma=None,
    weighted: bool = False,
    nonneg: bool = False,
    lam=None,
    center: bool = False,
    alpha_scaling: bool = False,
    sure_seed: int = 0,
    sure_probes: int = 1,
    l1_weights=None,
    name: str = "bpdn",
) -> ic.Problem:
    r"""The BPDN bilevel problem on data (A, y) — see the module docstring.

    - ``criterion``: ``"held_out"`` (needs ``A_val``, ``y_val``), ``"kfold"`` (``folds``: K or
      a list of (train, validation) index pairs; ``center`` fits an unpenalized intercept per
      fold) or ``"sure"`` (needs the noise level ``sigma`` > 0).
    - ``weighted``: one λ per coefficient; ``nonneg``: x ≥ 0.
    - ``lam``: the initial λ (> 0; default λ_max/10, λ_max = ‖Aᵀy‖_∞ the smallest λ with x* = 0).
    - ``alpha_scaling``: λ multiplies n·‖x‖₁ (scikit-learn's α).
    - ``sure_probes``: Monte-Carlo probes of the SURE divergence (one inner solve each).
    - ``l1_weights``: fixed positive weights cⱼ, penalty λ Σⱼ cⱼ|xⱼ| (shape (p,); for SURE
      also (1 + sure_probes, p): one row per copy of the data, as :func:`reweighted_sure`
      builds them).

    Bad inputs (shapes, NaN/inf, λ <= 0, σ <= 0) raise ``ValueError`` here, before any solve.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}.")
    sparse.check_design(A, y, where="bpdn.build")
    n, p = sparse.problem._shape(A)
    if criterion == "held_out":
        if A_val is None or y_val is None:
            raise ValueError("criterion='held_out' needs held-out data A_val and y_val.")
        sparse.check_design(A_val, y_val, where="bpdn.build (held-out data)")
        if sparse.problem._shape(A_val)[1] != p:
            raise ValueError(f"A_val has {sparse.problem._shape(A_val)[1]} columns, A has {p}.")
    if criterion == "sure":
        sigma = criteria._check_sigma(sigma)
    c = None if l1_weights is None else _check_l1_weights(l1_weights, p, criterion, sure_probes)
    if criterion == "kfold" and isinstance(A, sparse.AbstractLinearMap):
        raise ValueError(
            "criterion='kfold' splits the rows of a matrix A; got a matrix-free operator."
        )
    scale = float(n) if alpha_scaling else 1.0
    lmax = sparse.lambda_max(A, y, nonneg=nonneg, weights=None if c is None else c[0]) / scale
    if lmax <= 0:
        raise ValueError("y is orthogonal to every column of A (λ_max = 0): x* = 0 for every λ.")
    lam0 = _check_lam(lmax / 10 if lam is None else lam, p, weighted)
    space = ic.Space(lam=ic.Param(lam0, ic.Log()))
    common = dict(weights=penalty_weights, nonneg=nonneg, name=name)
    if criterion == "held_out":
        data = {"A": A, "y": y, "A_val": A_val, "y_val": jnp.asarray(y_val), "lam_scale": scale}
        if c is not None:
            data["l1_weights"] = jnp.asarray(c[0])
        return sparse.lasso_problem(space, criteria.held_out("A_val", "y_val"), data, **common)
    if criterion == "kfold":
        data = criteria.kfold_data(A, y, folds, center=center)
        data["lam_scale"] = data["n_train"] if alpha_scaling else jnp.ones_like(data["n_train"])
        if c is not None:
            data["l1_weights"] = jnp.broadcast_to(jnp.asarray(c[0]), (data["y"].shape[0], p))
        crit = criteria.kfold(criteria.held_out("A_val", "y_val"))
        return sparse.lasso_problem(space, crit, data, batched=True, **common)
    base = {"A": A, "y": jnp.asarray(y), "lam_scale": jnp.asarray(scale)}
    data = criteria.sure_pair(base, sigma=sigma, seed=sure_seed, probes=sure_probes)
    if c is not None:  # one row per copy (y and each y + εδₖ) or one row for all
        data["l1_weights"] = jnp.broadcast_to(jnp.asarray(c), (sure_probes + 1, p))
    return sparse.lasso_problem(space, criteria.sure("A", "y"), data, batched=True, **common)


def _check_l1_weights(c, p, criterion, probes):
    arr = np.asarray(c, dtype=float)
    rows = 1 + int(probes) if criterion == "sure" else 1
    if arr.shape == (p,):
        arr = arr[None]
    if arr.shape not in ((1, p), (rows, p)):
        raise ValueError(
            f"l1_weights must have shape ({p},)"
            + (f" or ({rows}, {p}) (one row per SURE copy)" if rows > 1 else "")
            + f"; got shape {np.shape(c)}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError("l1_weights must be positive and finite.")
    return arr


def reweighted_sure(
    A,
    y,
    sigma,
    *,
    eta: float = 0.01,
    probes: int = 4,
    nonneg: bool = False,
    steps: int = 40,
    learning_rate: float = 0.2,
    grid: int = 16,
    sure_seed: int = 0,
    solver=None,
) -> dict:
    r"""Sparse recovery with every λ tuned by SURE (σ known, no held-out data), in two stages:

    1. the Lasso x¹ = x*(λ₁) with λ₁ tuned by SURE (hypergradient descent);
    2. one reweighting step — the adaptive Lasso (Zou 2006), reweighted ℓ1 (Candès, Wakin &
       Boyd 2008): x² = argmin ½‖Ax − y‖² + λ₂ Σⱼ cⱼ|xⱼ|, cⱼ = 1/(|x¹ⱼ| + η‖x¹‖_∞), with λ₂
       tuned by SURE from the best point of a ``grid`` of λ₂ values.

    λ minimizing a prediction risk gives the Lasso many small false positives (the risk
    prefers shrinkage bias to missed coefficients); the reweighting removes the bias on large
    coefficients, so the risk-optimal λ₂ also selects the support. SURE of the *two-stage*
    estimator: each Monte-Carlo copy y + εδₖ gets its own weights from its own stage-1 solve,
    so the divergence includes stage 1's dependence on y (λ₁ itself held fixed). ``probes``
    averages the divergence over several δₖ (one probe is noisy enough to misplace λ₂).

    Returns a dict: ``x`` (the stage-2 solution), ``x_lasso`` (stage 1), ``lam``, ``lam_lasso``,
    ``weights`` (c for y), ``history`` (stage 2's SURE values), ``grid`` (λ₂, SURE) and the
    two problems ``problem``, ``problem_lasso``."""
    eta = _real("eta", eta, positive=True)
    solver = sparse.WorkingSetFISTA(tol=1e-12) if solver is None else solver
    method = sparse.SupportImplicit()
    common = dict(criterion="sure", sigma=sigma, nonneg=nonneg, sure_seed=sure_seed)
    p1 = build(A, y, sure_probes=probes, name="bpdn-sure", **common)
    res1 = ic.tune(
        p1,
        solver=solver,
        method=method,
        optimizer="adam",
        learning_rate=learning_rate,
        steps=steps,
    )
    th1 = {"lam": jnp.asarray(res1.theta["lam"])}
    x1 = np.asarray(_solve(solver, p1, th1, p1.x0).x)  # (1 + probes, p): y and each y + εδₖ
    size = np.max(np.abs(x1[0]))
    if size == 0:
        raise ValueError("reweighted_sure: the SURE-tuned Lasso is zero; nothing to reweight.")
    c = 1.0 / (np.abs(x1) + eta * size)
    p2 = build(A, y, sure_probes=probes, l1_weights=c, name="bpdn-sure-reweighted", **common)
    lmax2 = sparse.lambda_max(A, y, nonneg=nonneg, weights=c[0])
    lams = lmax2 * np.geomspace(1.0, 1e-4, grid)
    values, x0 = [], p2.x0
    for lam in lams:
        th = {"lam": jnp.asarray(lam)}
        x0 = _solve(solver, p2, th, x0).x
        values.append(float(_criterion(p2, x0, th)))
    start = float(lams[int(np.argmin(values))])
    res2 = ic.tune(
        p2,
        solver=solver,
        method=method,
        optimizer="adam",
        learning_rate=learning_rate,
        steps=steps,
        theta0={"lam": start},
    )
    th2 = {"lam": jnp.asarray(res2.theta["lam"])}
    x2 = np.asarray(_solve(solver, p2, th2, p2.x0).x)
    return {
        "x": x2[0],
        "x_lasso": x1[0],
        "lam": float(th2["lam"]),
        "lam_lasso": float(th1["lam"]),
        "weights": c[0],
        "history": [r["value"] for r in res2.history],
        "grid": (lams, np.asarray(values)),
        "problem": p2,
        "problem_lasso": p1,
    }


# --------------------------------------------------------------------------------------
# Command-line defaults and the report
# --------------------------------------------------------------------------------------
_UNROLL_STEPS = 3000


def methods(max_support=None):
    """Every hypergradient method ``invcal check`` compares, by name."""
    cg = {"rtol": 1e-11, "atol": 1e-14, "max_steps": 10_000}
    return {
        "support": sparse.SupportImplicit(max_support=max_support),
        "support-forward": sparse.SupportImplicit(mode="forward", max_support=max_support),
        "implicit-active-set": ic.Implicit(lx.CG(**cg), active_set=True),
        "implicit-gmres": ic.Implicit(lx.GMRES(**cg, restart=50), system="fixed_point"),
        "unrolled": ic.Unrolled(num_steps=_UNROLL_STEPS),
        "forward-unrolled": ic.ForwardUnrolled(num_steps=_UNROLL_STEPS),
    }


def _case_data(case, small, seed):
    if case in ("cs-gaussian", "cs-dct"):
        sizes = dict(n=60, p=200, k=6) if small else {}
        return compressed_sensing(operator=case[3:], n_val=40 if small else 100, seed=seed, **sizes)
    if case == "diabetes":
        return regression("diabetes", seed=seed)
    sizes = dict(n_samples=200, n_features=400, n_informative=10) if small else {}
    return regression("synthetic", seed=seed, **sizes)


def setup(
    case: str = "cs-gaussian",
    criterion: str | None = None,
    weighted=False,
    nonneg=False,
    small=False,
    seed=0,
) -> Setup:
    """Sparse recovery (BPDN/Lasso): λ tuned by held-out, K-fold CV or SURE (Bertrand et al. 2022).

    ``case``: ``cs-gaussian`` (default), ``cs-dct`` (compressed sensing, n=200, p=1000, k=20,
    SNR 20 dB), ``diabetes`` (polynomial features) or ``synthetic`` (make_regression);
    ``criterion``: ``sure`` (default for compressed sensing), ``kfold`` (default for
    regression) or ``held_out``; ``weighted``: one λ per coefficient; ``small``: shrink sizes.
    """
    if case not in CASES:
        raise ValueError(f"bpdn case must be one of {CASES}; got {case!r}.")
    flag = {"true": True, "1": True, "false": False, "0": False}
    weighted, nonneg, small = (
        flag.get(str(v).lower(), v) if isinstance(v, str) else bool(v)
        for v in (weighted, nonneg, small)
    )
    cs = case.startswith("cs")
    criterion = ("sure" if cs else "kfold") if criterion is None else criterion
    raw = _case_data(case, small, int(seed))
    if cs:
        if nonneg and not small:
            raw = compressed_sensing(operator=case[3:], nonneg=True, n_val=100, seed=int(seed))
        A, y, truth = raw["A"], raw["y"], raw["x_true"]
        problem = build(
            A,
            y,
            criterion=criterion,
            A_val=raw.get("A_val"),
            y_val=raw.get("y_val"),
            sigma=raw["sigma"],
            weighted=weighted,
            nonneg=nonneg,
            name=f"bpdn-{case}",
        )
    else:
        A, y, truth = raw["A_train"], raw["y_train"], None
        if criterion == "held_out":
            cut = int(0.8 * A.shape[0])
            problem = build(
                A[:cut],
                y[:cut],
                criterion="held_out",
                A_val=A[cut:],
                y_val=y[cut:],
                weighted=weighted,
                nonneg=nonneg,
                name=f"bpdn-{case}",
            )
        else:
            problem = (
                build(
                    A,
                    y,
                    criterion=criterion,
                    weighted=weighted,
                    nonneg=nonneg,
                    center=True,
                    sigma=None,
                    name=f"bpdn-{case}",
                )
                if criterion == "kfold"
                else build(
                    A,
                    y,
                    criterion="sure",
                    sigma=float(np.std(y)) * 0.1,
                    weighted=weighted,
                    nonneg=nonneg,
                    name=f"bpdn-{case}",
                )
            )
    lam0 = float(np.max(np.asarray(problem.space.init()["lam"])))
    # λ0 = λ_max/10; the grid spans [λ_max/300, λ_max] (below, supports approach n and the
    # criterion only rises).
    grid = {} if weighted else {"lam": np.geomspace(lam0 * 10 / 300, lam0 * 10, 30)}
    unroll_solver = ic.FISTA(tol=1e-10, max_steps=_UNROLL_STEPS)
    return Setup(
        problem=problem,
        solver=sparse.WorkingSetFISTA(tol=1e-12),
        method=sparse.SupportImplicit(),
        description=(setup.__doc__ or "").strip().splitlines()[0],
        methods=methods(),
        method_solvers={"unrolled": unroll_solver, "forward-unrolled": unroll_solver},
        optimizer="adam",
        learning_rate=0.2,
        steps=30 if not weighted else 60,
        grid=grid,
        extra_report=_report(
            problem,
            A,
            y,
            truth,
            raw,
            case,
            # The two-stage SURE estimator (another ~30 s): full-size SURE compressed sensing.
            reweighted=cs and criterion == "sure" and not weighted and not small,
            nonneg=nonneg,
        ),
    )


@eqx.filter_jit
def _solve(solver, problem, theta, x0):
    return solver.solve(problem, x0, theta)


@eqx.filter_jit
def _criterion(problem, x, theta):
    return problem.criterion(x, theta, problem.data)


def _report(problem, A, y, truth, raw, case, *, reweighted=False, nonneg=False):
    def extra(result, outdir):
        import matplotlib

        matplotlib.use("Agg")
        from pathlib import Path

        import matplotlib.pyplot as plt

        outdir = Path(outdir)
        figs = []
        solver = sparse.WorkingSetFISTA(tol=1e-12)
        theta = {k: jnp.asarray(v) for k, v in result.theta.items()}
        x = np.asarray(_solve(solver, problem, theta, problem.x0).x)
        # A SURE pair holds x*(y) and x*(y + εδ): show the first; K folds: their mean.
        is_sure = getattr(problem.criterion, "__name__", "") == "sure"
        x_show = x if x.ndim == 1 else (x[0] if is_sure else x.mean(0))
        # 1. criterion along the λ path with the trajectory
        hist = [r for r in result.history if np.ndim(r["theta"]["lam"]) == 0]
        if hist:
            lams = np.array([float(r["theta"]["lam"]) for r in hist])
            vals = np.array([r["value"] for r in hist])
            land = (result.results or {}).get("landscape")
            if isinstance(land, dict) and land.get("names") == ["lam"]:
                grid, gv = np.asarray(land["axes"][0]), np.asarray(land["values"], dtype=float)
            else:
                grid = np.geomspace(lams.min() / 10, lams.max() * 10, 30)
                gv, x0 = [], problem.x0
                for lam in grid:
                    th = {"lam": jnp.asarray(lam)}
                    x0 = _solve(solver, problem, th, x0).x
                    gv.append(float(_criterion(problem, x0, th)))
                gv = np.asarray(gv)
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.semilogx(grid, gv, "-", color="0.5", label="criterion on the λ path")
            ax.semilogx(lams, vals, "o-", color="C3", ms=3, label="hypergradient trajectory")
            best = int(np.argmin(vals))  # the tuned λ: the best evaluated point
            ax.semilogx(lams[best : best + 1], vals[best : best + 1], "*", color="C3", ms=12)
            ax.set_xlabel("λ")
            ax.set_ylabel("criterion")
            if np.all(gv > 0) and np.all(vals > 0):  # SURE can be negative: then linear
                ax.set_yscale("log")
            ax.legend()
            fig.tight_layout()
            fig.savefig(outdir / "bpdn_path.png", dpi=110)
            plt.close(fig)
            figs.append(("Criterion along the λ path, with the tuning trajectory", "bpdn_path.png"))
        if truth is not None:
            t = np.asarray(truth)
            x_rw = None
            if reweighted:
                rw = reweighted_sure(A, y, raw["sigma"], nonneg=nonneg)
                x_rw = rw["x"]
            fig, ax = plt.subplots(figsize=(7, 3.2))
            ax.stem(
                np.flatnonzero(t),
                t[t != 0],
                linefmt="C0-",
                markerfmt="C0o",
                basefmt=" ",
                label="true",
            )
            nz = np.flatnonzero(x_show)
            ax.plot(nz, x_show[nz], "x", color="C3", label="recovered (tuned λ)")
            if x_rw is not None:
                nz = np.flatnonzero(x_rw)
                ax.plot(nz, x_rw[nz], "+", color="C2", ms=9, label="reweighted, SURE-tuned λ₂")
            ax.set_xlabel("coefficient")
            ax.legend()
            fig.tight_layout()
            fig.savefig(outdir / "bpdn_signal.png", dpi=110)
            plt.close(fig)
            figs.append(("True and recovered signal", "bpdn_signal.png"))
            tr = t != 0
            fits = [("tuned λ", x_show)] + ([] if x_rw is None else [("reweighted", x_rw)])
            fig, ax = plt.subplots(figsize=(4.5 + 1.5 * (len(fits) - 1), 3.2))
            labels = ["true positives", "false positives", "missed"]
            width = 0.8 / len(fits)
            title = []
            for i, (label, xe) in enumerate(fits):
                est = xe != 0
                counts = [int(np.sum(est & tr)), int(np.sum(est & ~tr)), int(np.sum(~est & tr))]
                pos = np.arange(3) + (i - (len(fits) - 1) / 2) * width
                ax.bar(pos, counts, width, color=f"C{3 if i == 0 else 2}", label=label)
                title.append(f"{label}: F1 = {support_f1(xe, t):.3f}")
            ax.set_xticks(np.arange(3), labels)
            if len(fits) > 1:
                ax.legend()
            ax.set_title("support recovery — " + "; ".join(title), fontsize=9)
            fig.tight_layout()
            fig.savefig(outdir / "bpdn_support.png", dpi=110)
            plt.close(fig)
            figs.append(("Support recovery", "bpdn_support.png"))
        return figs

    return extra
