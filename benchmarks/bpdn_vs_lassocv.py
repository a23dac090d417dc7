r"""BPDN / Lasso: α tuned by hypergradients (invcal) against scikit-learn's LassoCV and
jaxopt's ``custom_root`` implicit differentiation, measured side by side in one run.

    inner   β̂(α) = argmin_β (1/2n)‖y − Xβ − b‖² + α‖β‖₁        (λ = nα in ½‖·‖² scaling)
    outer   held-out MSE (one 80/20 split of the tuning rows) or 5-fold CV MSE

Data: ``make_regression(n_samples=1000, n_features=5000, n_informative=50, noise=5,
random_state=0)`` — first 700 rows tune, last 300 test — and scikit-learn's diabetes data with
degree-3 polynomial features (285, standardized; shuffled 70/30 split, seed 0).

Rows: invcal held-out and 5-fold (:class:`invcal.sklearn.BilevelLassoCV`: working-set FISTA
inner solves, :class:`invcal.sparse.SupportImplicit` hypergradients), ``LassoCV(cv=5,
alphas=100)``, and the same bilevel 5-fold loop with hypergradients from jaxopt's
``custom_root`` (default ``solve_normal_cg``) on the forward–backward fixed point. Columns:
chosen α and λ = nα, test MSE, wall time cold (first fit in this process, compilation
included) and warm (median of 3 further fits), and the hypergradient dE/d log α at LassoCV's
α (time of one call given the warm-started x*, and value).

A second table compares hypergradient methods on the held-out problem at LassoCV's α:
central finite differences, the support-restricted implicit (reverse and forward), the
engine's ``Implicit(active_set=True)`` (CG on the masked full-size system), jaxopt's
``custom_root`` (default and tight normal-CG) and reverse unrolling of FISTA from the solution,
with the number of steps doubled until it matches to 1e-6.

Further: the weighted Lasso (one α per feature, 5000 hyperparameters) against the single-α
model on the synthetic data, and compressed sensing (n=200, p=1000, k=20, SNR 20 dB) with λ
tuned by SURE (no held-out data): support F1 of the Lasso and of the two-stage reweighted
(adaptive) Lasso of :func:`problems.bpdn.reweighted_sure`, next to the plain Lasso path's
ceiling (best F1 of any λ, and F1 at the λ of least true risk, both computed from the truth).

Run: ``python benchmarks/bpdn_vs_lassocv.py [--quick] [--out benchmarks/results/bpdn.json]``
(about 20 minutes on 2 CPU cores; ``--quick`` shrinks the synthetic data for a smoke run).
Split a long run with ``--skip tuners methods weighted sure`` and ``--datasets synthetic
diabetes``: a partial run replaces only what it measured in the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
warnings.filterwarnings("ignore", message="JAXopt is no longer maintained")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import invcal as ic  # noqa: E402
from invcal import sparse  # noqa: E402
from invcal.diagnostics import no_linear_solve  # noqa: E402
from invcal.sklearn import BilevelLassoCV, BilevelWeightedLassoCV  # noqa: E402
from problems import bpdn  # noqa: E402


# --------------------------------------------------------------------------------------
# jaxopt's custom_root as an invcal method (a peer, for comparison only)
# --------------------------------------------------------------------------------------
class JaxoptCustomRoot(ic.AbstractHypergradient):
    """dE/dθ by ``jaxopt.implicit_diff.custom_root`` around the same inner solver, on the
    forward–backward residual x − T(x, θ) with jaxopt's ``solve_normal_cg`` (``tol=None``:
    its defaults). custom_vjp: reverse mode only, no residual check (reported as converged)."""

    tol: float | None = eqx.field(default=None, static=True)

    def solution(self, problem, theta, solver, x0):
        from jaxopt import implicit_diff, linear_solve

        solve = linear_solve.solve_normal_cg
        if self.tol is not None:
            solve = functools.partial(solve, tol=self.tol, maxiter=100_000)
        data = problem.data

        def F(x, th):
            return problem.fixed_point_residual(x, th, data)

        @implicit_diff.custom_root(F, solve=solve)
        def inner(x_init, th):
            return jax.lax.stop_gradient(solver.solve(problem, x_init, th).x)

        return inner(x0, theta)

    def compute(self, problem, theta, solver, x0, adjoint0, tol, linear_tol):
        def E(th):
            x = self.solution(problem, th, solver, x0)
            return problem.criterion(x, th, problem.data), x

        (value, x), grad = jax.value_and_grad(E, has_aux=True)(theta)
        res = solver.residual(problem, x, theta, problem.data)
        return value, grad, x, no_linear_solve(0, res, res <= solver.tol), None


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
DATASETS = ("synthetic", "diabetes")
WARM_REPEATS = 3


def datasets(quick: bool, names=DATASETS) -> dict:
    out = {}
    if "synthetic" in names and quick:
        out["synthetic"] = bpdn.regression(
            "synthetic", n_samples=400, n_features=1000, n_informative=20, n_train=280
        )
    elif "synthetic" in names:
        out["synthetic"] = bpdn.regression(
            "synthetic", n_samples=1000, n_features=5000, n_informative=50, n_train=700
        )
    if "diabetes" in names:
        out["diabetes"] = bpdn.regression("diabetes")
    return out


def holdout_split(n: int) -> list:
    cut = int(0.8 * n)
    return [(np.arange(cut), np.arange(cut, n))]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, time.perf_counter() - t


def warm_time(fn, repeats=WARM_REPEATS, budget=30.0):
    """Median wall time of ``repeats`` further calls of ``fn`` (fewer once ``budget`` seconds
    are spent), and all of them: one run of a 2-second fit varies by ±15% on this machine."""
    times = []
    while len(times) < repeats and sum(times) < budget:
        times.append(timed(fn)[1])
    return float(np.median(times)), times


# --------------------------------------------------------------------------------------
# The comparison of tuners
# --------------------------------------------------------------------------------------
def lasso_problem_sk(X, y, splits, alpha, fit_intercept=True):
    """The bilevel CV problem BilevelLassoCV builds (for hypergradient timings)."""
    est = BilevelLassoCV(cv=splits, fit_intercept=fit_intercept)
    return est._cv_problem(X, y, splits, alpha)


def hypergradient_at(problem, alpha, method, solver, repeats=3, x0=None, budget=1.0):
    """(value, dE/dlog α, seconds of one warm call given x*, the last result) at α.

    The time is the median of at least ``repeats`` warm calls, repeated (up to 200) until
    ``budget`` seconds are spent: millisecond calls need many repeats for a stable median."""
    theta = {"alpha": jnp.asarray(alpha)}
    hg = ic.hypergradient(problem, theta, solver=solver, method=method, x0=x0)  # compile
    if x0 is not None:
        hg = eqx.tree_at(lambda h: h.x, hg, x0)
    times = []
    while len(times) < repeats or (sum(times) < budget and len(times) < 200):
        h, dt = timed(ic.hypergradient, problem, theta, solver=solver, method=method, x0=hg.x)
        times.append(dt)
    g = float(ic.testing.grad_z(problem, theta, h.grad)[0])
    return float(h.value), g, float(np.median(times)), h


def tuner_rows(name, data):
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold

    X, y, Xt, yt = data["A_train"], data["y_train"], data["A_test"], data["y_test"]
    n = X.shape[0]
    solver = sparse.WorkingSetFISTA(tol=1e-12)
    rows = []

    def mse(model):
        return float(np.mean((model.predict(Xt) - yt) ** 2))

    # LassoCV first: its α is the common point for the hypergradient columns.
    lcv, cold = timed(lambda: LassoCV(cv=5, alphas=100, max_iter=100_000).fit(X, y))
    warm, warm_runs = warm_time(lambda: LassoCV(cv=5, alphas=100, max_iter=100_000).fit(X, y))
    a_ref = float(lcv.alpha_)
    rows.append(
        dict(
            dataset=name,
            tuner="LassoCV(cv=5, 100 alphas)",
            alpha=a_ref,
            lam=n * a_ref,
            test_mse=mse(lcv),
            cold_s=cold,
            warm_s=warm,
            warm_runs_s=warm_runs,
            cv_evaluations=100,
            hypergradient_s=None,
            hypergradient=None,
            criterion=float(lcv.mse_path_.mean(1).min()),
        )
    )
    configs = [
        ("invcal held-out", dict(cv=holdout_split(n)), None),
        ("invcal 5-fold", dict(cv=5), None),
        ("jaxopt custom_root 5-fold", dict(cv=5), JaxoptCustomRoot()),
    ]
    for label, kw, method in configs:
        make = functools.partial(BilevelLassoCV, method=method, **kw)
        est, cold = timed(lambda make=make: make().fit(X, y))
        warm, warm_runs = warm_time(lambda make=make: make().fit(X, y))
        splits = holdout_split(n) if "held-out" in label else list(KFold(5).split(X))
        prob = lasso_problem_sk(X, y, splits, a_ref)
        m = sparse.SupportImplicit() if method is None else method
        value, g, dt, _ = hypergradient_at(prob, a_ref, m, solver)
        rows.append(
            dict(
                dataset=name,
                tuner=label,
                alpha=est.alpha_,
                lam=n * est.alpha_,
                test_mse=mse(est),
                cold_s=cold,
                warm_s=warm,
                warm_runs_s=warm_runs,
                cv_evaluations=len(est.history_),
                hypergradient_s=dt,
                hypergradient=g,
                criterion=est.cv_mse_,
            )
        )
        print(f"  {name}: {label} done ({warm:.2f}s warm)", flush=True)
    return rows, a_ref


# --------------------------------------------------------------------------------------
# Hypergradient methods on one problem
# --------------------------------------------------------------------------------------
def method_rows(name, data, alpha):
    X, y = data["A_train"], data["y_train"]
    n = X.shape[0]
    prob = lasso_problem_sk(X, y, holdout_split(n), alpha)
    solver = sparse.WorkingSetFISTA(tol=1e-13)
    theta = {"alpha": jnp.asarray(alpha)}
    fd = float(ic.testing.finite_difference(prob, theta, solver=solver, eps=1e-6)[0])
    rows = [
        dict(
            dataset=name,
            method="central finite differences (eps=1e-6)",
            value=fd,
            seconds=None,
            rel_error=0.0,
            steps=None,
        )
    ]
    cg = dict(rtol=1e-10, atol=1e-14, max_steps=100_000)
    methods = [
        ("invcal SupportImplicit (reverse, |S|x|S| CG)", sparse.SupportImplicit()),
        ("invcal SupportImplicit (forward)", sparse.SupportImplicit(mode="forward")),
        (
            "invcal Implicit(active_set=True), full-size masked CG",
            ic.Implicit(lx.CG(**cg), active_set=True),
        ),
        ("jaxopt custom_root, default solve_normal_cg", JaxoptCustomRoot()),
        ("jaxopt custom_root, solve_normal_cg tol=1e-10", JaxoptCustomRoot(tol=1e-10)),
    ]
    nnz = None
    for label, method in methods:
        value, g, dt, h = hypergradient_at(prob, alpha, method, solver)
        nnz = int(np.sum(np.asarray(h.x) != 0))
        rows.append(
            dict(
                dataset=name,
                method=label,
                value=g,
                seconds=dt,
                rel_error=abs(g - fd) / abs(fd),
                steps=int(h.diagnostics.linear_steps),
            )
        )
        print(f"  {name}: {label}: {g:.10g} ({dt * 1e3:.1f} ms)", flush=True)
    # Reverse unrolling of FISTA started at x*: double the steps until within 1e-6 of FD.
    hg = ic.hypergradient(prob, theta, solver=solver, method=sparse.SupportImplicit())
    steps = 50
    while True:
        method = ic.Unrolled(num_steps=steps)
        # Unrolling from the solution itself: the most favourable start for unrolling.
        value, g, dt, _ = hypergradient_at(
            prob, alpha, method, solver, repeats=1, x0=hg.x, budget=0.0
        )
        err = abs(g - fd) / abs(fd)
        print(f"  {name}: unrolled {steps} steps: rel. error {err:.2e} ({dt:.2f}s)", flush=True)
        if err <= 1e-6 or steps >= 204_800:  # the row reports the last count tried
            break
        steps *= 2
    rows.append(
        dict(
            dataset=name,
            method=f"reverse unrolling of FISTA, {steps} steps from x*",
            value=g,
            seconds=dt,
            rel_error=err,
            steps=steps,
        )
    )
    del hg
    return rows, nnz


# --------------------------------------------------------------------------------------
# Weighted Lasso and SURE
# --------------------------------------------------------------------------------------
def weighted_rows(data, single_alpha):
    """The weighted Lasso started from the single-α optimum, stopped after a few CV
    evaluations (it overfits the CV error when run long: p = 5000 hyperparameters)."""
    X, y, Xt, yt = data["A_train"], data["y_train"], data["A_test"], data["y_test"]
    start = np.full(X.shape[1], single_alpha)
    out = []
    for max_iter in (3, 5, 10, 30):
        est, dt = timed(
            lambda m=max_iter: BilevelWeightedLassoCV(alpha_init=start, max_iter=m).fit(X, y)
        )
        out.append(
            dict(
                model=f"weighted Lasso (p={X.shape[1]} alphas), 5-fold, {max_iter} evaluations",
                test_mse=float(np.mean((est.predict(Xt) - yt) ** 2)),
                cv_mse=est.cv_mse_,
                seconds=dt,
                nnz=int(np.sum(est.coef_ != 0)),
            )
        )
        print(f"  weighted, {max_iter} evaluations: test MSE {out[-1]['test_mse']:.4g}", flush=True)
    return out


@eqx.filter_jit
def _solve(solver, problem, theta, x0):
    return solver.solve(problem, x0, theta)


def _dense(A, p):
    if isinstance(A, sparse.AbstractLinearMap):
        return np.asarray(jax.vmap(A.mv, out_axes=1)(jnp.eye(p)))
    return np.asarray(A)


def lasso_path_oracle(raw):
    """On the plain Lasso's path (scikit-learn's lasso_path, 80 λ in [λ_max/300, λ_max]): the
    best support F1 any λ gives, and the F1 at the λ minimizing the true prediction risk
    ‖A(x̂ − x)‖² (what SURE estimates). Uses the truth: a ceiling, not a tuner."""
    from sklearn.linear_model import lasso_path

    x_true = np.asarray(raw["x_true"])
    A, y = _dense(raw["A"], x_true.size), np.asarray(raw["y"])
    n = y.size
    lams = np.geomspace(1.0, 1 / 300, 80) * np.max(np.abs(A.T @ y))
    _, coefs, _ = lasso_path(A, y, alphas=lams / n, tol=1e-10, max_iter=100_000)
    f1 = np.array([bpdn.support_f1(coefs[:, i], x_true) for i in range(lams.size)])
    risk = np.sum((A @ (coefs - x_true[:, None])) ** 2, axis=0)
    return float(f1.max()), float(f1[int(np.argmin(risk))])


def sure_rows(seeds=range(5)):
    """Compressed sensing with no held-out data: the Lasso with λ tuned by SURE (1 probe, as
    ``invcal run bpdn``; and 4 probes, stage 1 of the two-stage estimator), then one
    reweighting step (adaptive Lasso) with λ₂ tuned by SURE (:func:`bpdn.reweighted_sure`)."""
    rows = []
    solver = sparse.WorkingSetFISTA(tol=1e-12)
    for operator in ("gaussian", "dct"):
        for seed in seeds:
            raw = bpdn.compressed_sensing(operator=operator, seed=seed)
            x_true = np.asarray(raw["x_true"])
            prob = bpdn.build(raw["A"], raw["y"], criterion="sure", sigma=raw["sigma"])
            res, dt = timed(
                ic.tune,
                prob,
                solver=solver,
                method=sparse.SupportImplicit(),
                optimizer="adam",
                learning_rate=0.2,
                steps=40,
            )
            theta = {k: jnp.asarray(v) for k, v in res.theta.items()}
            x = np.asarray(_solve(solver, prob, theta, prob.x0).x[0])
            rw, dt_rw = timed(bpdn.reweighted_sure, raw["A"], raw["y"], raw["sigma"])
            best_f1, risk_f1 = lasso_path_oracle(raw)
            rows.append(
                dict(
                    operator=operator,
                    seed=seed,
                    lam=float(theta["lam"]),
                    f1=bpdn.support_f1(x, x_true),
                    nnz=int(np.sum(x != 0)),
                    seconds=dt,
                    rel_error=float(np.linalg.norm(x - x_true) / np.linalg.norm(x_true)),
                    lam_4probes=rw["lam_lasso"],
                    f1_4probes=bpdn.support_f1(rw["x_lasso"], x_true),
                    lam_reweighted=rw["lam"],
                    f1_reweighted=bpdn.support_f1(rw["x"], x_true),
                    nnz_reweighted=int(np.sum(rw["x"] != 0)),
                    rel_error_reweighted=float(
                        np.linalg.norm(rw["x"] - x_true) / np.linalg.norm(x_true)
                    ),
                    seconds_reweighted=dt_rw,
                    oracle_best_f1_lasso=best_f1,
                    oracle_f1_lasso_at_min_risk=risk_f1,
                )
            )
            r = rows[-1]
            print(
                f"  SURE {operator} seed {seed}: Lasso F1 {r['f1']:.3f} (4 probes "
                f"{r['f1_4probes']:.3f}), reweighted F1 {r['f1_reweighted']:.3f}; Lasso path: "
                f"best F1 {best_f1:.3f}, F1 at min risk {risk_f1:.3f}",
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------------------
def table(rows, cols):
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(widths[c]) for c in cols)]
    lines.append("-|-".join("-" * widths[c] for c in cols))
    for r in rows:
        lines.append(" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))
    return "\n".join(lines)


def _fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def merge(previous: dict, new: dict, names) -> dict:
    """``previous`` with the sections of ``new``; in per-dataset tables only the rows of the
    data sets run now are replaced."""
    out = {**previous, **new}
    for key in ("tuners", "methods"):
        if key in new and key in previous:
            kept = [r for r in previous[key] if r["dataset"] not in names]
            rows = kept + new[key]
            out[key] = sorted(rows, key=lambda r: DATASETS.index(r["dataset"]))
    if "support_size" in new:
        out["support_size"] = {**previous.get("support_size", {}), **new["support_size"]}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small synthetic data (smoke run)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bpdn.json"))
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["tuners", "methods", "weighted", "sure"]
    )
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=list(DATASETS),
        choices=list(DATASETS),
        help="regression data sets for the tuner and method tables (split a long run)",
    )
    args = parser.parse_args(argv)
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "device": str(jax.devices()[0]),
        },
        "quick": args.quick,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = bool(args.skip) or set(args.datasets) != set(DATASETS)
    previous = json.loads(out.read_text()) if out.exists() else {}

    def save(final=False):
        # After every section, so a run cut short keeps what it measured. A partial run (or
        # an unfinished one) updates what it measured and keeps the rest of the file.
        merged = results if final and not partial else merge(previous, results, args.datasets)
        out.write_text(json.dumps(merged, indent=1))
        print(f"wrote {out}", flush=True)

    data = datasets(args.quick, args.datasets)
    alphas = {}
    if "tuners" not in args.skip:
        results["tuners"] = []
        for name, d in data.items():
            rows, alphas[name] = tuner_rows(name, d)
            results["tuners"] += rows
        print(
            table(
                results["tuners"],
                [
                    "dataset",
                    "tuner",
                    "alpha",
                    "lam",
                    "test_mse",
                    "cold_s",
                    "warm_s",
                    "cv_evaluations",
                    "hypergradient_s",
                    "hypergradient",
                ],
            )
        )
        save()
    if "methods" not in args.skip:
        from sklearn.linear_model import LassoCV

        results["methods"] = []
        for name, d in data.items():
            a = alphas.get(name) or float(
                LassoCV(cv=5, alphas=100, max_iter=100_000).fit(d["A_train"], d["y_train"]).alpha_
            )
            rows, nnz = method_rows(name, d, a)
            results["methods"] += rows
            results.setdefault("support_size", {})[name] = nnz
        print(
            table(
                results["methods"], ["dataset", "method", "value", "rel_error", "seconds", "steps"]
            )
        )
        save()
    if "weighted" not in args.skip and "synthetic" in data:
        d = data["synthetic"]
        single = BilevelLassoCV().fit(d["A_train"], d["y_train"])
        mse = float(np.mean((single.predict(d["A_test"]) - d["y_test"]) ** 2))
        results["weighted"] = [
            dict(
                model="single alpha, 5-fold",
                test_mse=mse,
                cv_mse=single.cv_mse_,
                seconds=None,
                nnz=int(np.sum(single.coef_ != 0)),
            )
        ]
        results["weighted"] += weighted_rows(d, single.alpha_)
        print(table(results["weighted"], ["model", "test_mse", "cv_mse", "nnz", "seconds"]))
        save()
    if "sure" not in args.skip:
        results["sure"] = sure_rows(range(2) if args.quick else range(5))
        print(
            table(
                results["sure"],
                [
                    "operator",
                    "seed",
                    "lam",
                    "f1",
                    "nnz",
                    "f1_4probes",
                    "lam_reweighted",
                    "f1_reweighted",
                    "nnz_reweighted",
                    "rel_error_reweighted",
                    "seconds_reweighted",
                    "oracle_best_f1_lasso",
                    "oracle_f1_lasso_at_min_risk",
                ],
            )
        )
    save(final=True)


if __name__ == "__main__":
    main()
