r"""Time to first result: invcal against its peers, side by side in one run, one BLAS thread.

Every timing runs with BLAS and XLA pinned to one thread on both sides:
``OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = MKL_NUM_THREADS = 1`` and ``XLA_FLAGS +=
--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``, set before NumPy and JAX
are imported here and passed to every subprocess, and ``threadpoolctl.threadpool_limits(1)``
around the in-process measurements. JAX runs in its default configuration (``jax_enable_x64``
off; the invcal estimators and ``fit_population`` scope float64 themselves). Each time is the
median of ``--repeats`` (3) runs; the peers' runs are interleaved with invcal's.

1. **Warm Lasso fit** — ``invcal.sklearn.BilevelLassoCV().fit`` against scikit-learn's
   ``LassoCV(cv=5, alphas=100, max_iter=100_000)`` (and celer's ``LassoCV(cv=5,
   n_alphas=100)`` when ``import celer`` works; otherwise a note) on the data of
   ``benchmarks/bpdn_vs_lassocv.py``: ``make_regression(n_samples=1000, n_features=5000,
   n_informative=50, noise=5, random_state=0)``, first 700 rows fit, last 300 test. "Warm":
   after one untimed fit of the same shapes in this process. Also the test MSE of each fit
   (target: invcal / LassoCV ≤ 1.01).
2. **Fresh-process Lasso fit** — ``python -c`` processes that import their library, load the
   same arrays (an ``.npz`` written once, so both sides fit identical data) and fit: the time
   from the process's start to the fitted estimator (interpreter start and imports included).
   invcal (a) as a first process ever, with the persistent compilation cache
   (:mod:`invcal.compilation_cache`) in a new empty folder (a new one for each repeat), and
   (b) a second process on that same folder, now filled. Targets: invcal / LassoCV ≤ 4 for
   (a), ≤ 2 for (b).
3. **Theoph** — ``fit_population(theophylline_model(rtol=1e-7, atol=1e-9), load_theoph(),
   init=INIT)`` (FOCEI, additive error, the default Lindstrom-Bates algorithm): warm (median
   after one untimed call in this process; target ≤ 0.2 s), and in fresh processes as in 2
   (cache filled: target ≤ 3 s; first process ever: reported). No peer here (R nlme:
   ``benchmarks/theoph_vs_nlme.py``).

The cache folder reaches the subprocesses through ``JAX_COMPILATION_CACHE_DIR``
(``--cache-env jax``, the default), or with ``--cache-env xdg`` through ``XDG_CACHE_HOME``
(the folder invcal picks for a user who sets nothing); either way invcal lowers JAX's
threshold for caching a program (``jax_persistent_cache_min_compile_time_secs``) from 1 s to
0 (0.2 s before 2026-12-04). Each child records the cache folder and threshold it ran with,
and the JSON the number of files and bytes in the folder after each process. "First process
ever"
means an empty compilation cache; the operating system's file cache is warm from the earlier
runs.

Run: ``python benchmarks/first_result.py [--quick] [--repeats 3] [--skip warm fresh theoph]
[--cache-env jax|xdg] [--out benchmarks/results/first_result.json]``. ``--quick`` is a smoke
run: a 100×300 Lasso problem (``make_regression(150, 300, n_informative=10)``, 100 rows fit),
one repeat, written to ``first_result_quick.json`` unless ``--out`` says otherwise. A partial
run (``--skip``) replaces only the sections it measured in an existing JSON.
"""

from __future__ import annotations

import os

# Before NumPy, SciPy or JAX are imported: one BLAS / OpenMP / Eigen thread, here and in every
# subprocess (which inherit os.environ via child_env()).
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
XLA_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ.update(THREAD_ENV)
if XLA_THREAD_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_THREAD_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import invcal.ode  # noqa: E402
from invcal.sklearn import BilevelLassoCV  # noqa: E402
from problems import bpdn  # noqa: E402
from problems import hierarchical_ode as h  # noqa: E402

SECTIONS = ("warm", "fresh", "theoph")
LASSOCV_KW = "cv=5, alphas=100, max_iter=100_000"  # as benchmarks/bpdn_vs_lassocv.py
CELER_KW = "cv=5, n_alphas=100"
THEOPH_MODEL_KW = dict(rtol=1e-7, atol=1e-9)
TARGETS = {
    "lasso_warm_ratio": 0.5,  # issue 15: where celer stands against LassoCV
    "lasso_test_mse_ratio": 1.01,
    "lasso_fresh_first_ratio": 4.0,
    "lasso_fresh_cached_ratio": 2.0,
    "theoph_warm_s": 0.2,
    "theoph_fresh_cached_s": 3.0,
}
CHILD_TIMEOUT_S = 3600


# --------------------------------------------------------------------------------------
# Data: the same arrays for every side
# --------------------------------------------------------------------------------------
def lasso_data(quick: bool) -> tuple[dict, dict]:
    if quick:
        spec = dict(n_samples=150, n_features=300, n_informative=10, noise=5.0, n_train=100)
    else:  # bpdn_vs_lassocv.py's synthetic case
        spec = dict(n_samples=1000, n_features=5000, n_informative=50, noise=5.0, n_train=700)
    d = bpdn.regression("synthetic", seed=0, **spec)
    spec = dict(generator="sklearn.datasets.make_regression", random_state=0, **spec)
    return d, spec


def celer_status() -> tuple[bool, str | None]:
    try:
        import celer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure means: no celer peer
        return False, f"celer skipped: import celer failed ({type(e).__name__}: {e})"
    return True, None


# --------------------------------------------------------------------------------------
# In-process (warm) timings
# --------------------------------------------------------------------------------------
def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def warm_lasso(d: dict, repeats: int, with_celer: bool) -> dict:
    """One untimed fit of each estimator, then ``repeats`` rounds of one timed fit of each
    (interleaved); median time and the test MSE of the last fit."""
    from sklearn.linear_model import LassoCV

    X, y, Xt, yt = d["A_train"], d["y_train"], d["A_test"], d["y_test"]
    makers = {
        "invcal": lambda: BilevelLassoCV(),
        "LassoCV": lambda: LassoCV(cv=5, alphas=100, max_iter=100_000),
    }
    notes = []
    if with_celer:
        import celer

        makers["celer"] = lambda: celer.LassoCV(cv=5, n_alphas=100)
    first, times, models = {}, {k: [] for k in makers}, {}
    for name in list(makers):
        try:
            models[name], first[name] = timed(lambda m=makers[name]: m().fit(X, y))
        except Exception as e:  # noqa: BLE001 - only the optional peer may fail
            if name != "celer":
                raise
            notes.append(f"celer skipped: LassoCV fit failed ({type(e).__name__}: {e})")
            del makers[name], times[name]
    for _ in range(repeats):
        for name, make in makers.items():
            models[name], dt = timed(lambda m=make: m().fit(X, y))
            times[name].append(dt)
    out = {"notes": notes}
    for name in makers:
        model = models[name]
        out[name] = dict(
            first_fit_s=first[name],
            warm_s=float(np.median(times[name])),
            warm_runs_s=times[name],
            alpha=float(model.alpha_),
            test_mse=float(np.mean((model.predict(Xt) - yt) ** 2)),
            nnz=int(np.sum(np.asarray(model.coef_) != 0)),
        )
        print(
            f"  warm {name}: {out[name]['warm_s']:.3f}s (first fit {first[name]:.2f}s), "
            f"alpha {out[name]['alpha']:.4g}, test MSE {out[name]['test_mse']:.5g}",
            flush=True,
        )
    return out


def theoph_fit():
    model = h.theophylline_model(**THEOPH_MODEL_KW)
    return invcal.ode.fit_population(model, h.load_theoph(), init=h.INIT)


def warm_theoph(repeats: int) -> dict:
    fit, first = timed(theoph_fit)
    times = []
    for _ in range(repeats):
        fit, dt = timed(theoph_fit)
        times.append(dt)
    out = dict(
        first_call_s=first,
        first_call_cache=invcal.compilation_cache.cache_dir(),
        warm_s=float(np.median(times)),
        warm_runs_s=times,
        loglik=float(fit.loglik),
        converged=bool(fit.converged),
        iterations=int(fit.iterations),
    )
    print(
        f"  warm Theoph: {out['warm_s']:.3f}s (first call in this process {first:.2f}s, "
        f"cache {out['first_call_cache']}), loglik {out['loglik']:.4f}",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------------------
# Fresh processes
# --------------------------------------------------------------------------------------
# Each child prints one line "RESULT {json}"; t_done is wall-clock (time.time()) right after
# the fit returns, so the parent's time to first result is t_done minus the moment it started
# the process (interpreter start included; the test MSE and the interpreter's exit are not).
_CHILD_HEAD = """\
import time
t_start = time.time()
import json, sys
import numpy as np
"""
_CHILD_JAX_INFO = """
import jax
out.update(
    cache_dir=jax.config.jax_compilation_cache_dir,
    min_compile_time_s=jax.config.jax_persistent_cache_min_compile_time_secs,
    x64=bool(jax.config.jax_enable_x64),
)
"""

LASSO_CHILD = (
    _CHILD_HEAD
    + """{import_line}
t_import = time.time()
d = np.load(sys.argv[1])
X, y, Xt, yt = d["X"], d["y"], d["Xt"], d["yt"]
est = {make}.fit(X, y)
t_done = time.time()
out = dict(t_done=t_done, import_s=t_import - t_start, fit_s=t_done - t_import,
           alpha=float(est.alpha_), test_mse=float(np.mean((est.predict(Xt) - yt) ** 2)))
{extra}
print("RESULT " + json.dumps(out), flush=True)
"""
)

LASSO_SIDES = {
    "invcal": dict(
        import_line="from invcal.sklearn import BilevelLassoCV",
        make="BilevelLassoCV()",
        extra=_CHILD_JAX_INFO,
    ),
    "LassoCV": dict(
        import_line="from sklearn.linear_model import LassoCV",
        make=f"LassoCV({LASSOCV_KW})",
        extra="",
    ),
    "celer": dict(import_line="import celer", make=f"celer.LassoCV({CELER_KW})", extra=""),
}

THEOPH_CHILD = (
    _CHILD_HEAD
    + """import invcal, invcal.ode
from problems import hierarchical_ode as h
t_import = time.time()
model = h.theophylline_model(rtol=1e-7, atol=1e-9)
ev = h.load_theoph()
fit = invcal.ode.fit_population(model, ev, init=h.INIT)
t_done = time.time()
out = dict(t_done=t_done, import_s=t_import - t_start, fit_s=t_done - t_import,
           loglik=float(fit.loglik), converged=bool(fit.converged))
"""
    + _CHILD_JAX_INFO
    + """print("RESULT " + json.dumps(out), flush=True)
"""
)


def child_env(cache: Path | None, cache_env: str) -> dict:
    """os.environ (thread pins included) with JAX's default configuration and, for invcal, the
    compilation cache in ``cache``."""
    env = dict(os.environ)
    for key in (
        "JAX_ENABLE_X64",
        "INVCAL_COMPILATION_CACHE",
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    ):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if cache is not None:
        if cache_env == "jax":
            env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        else:  # invcal's default folder, $XDG_CACHE_HOME/invcal/jax
            env["XDG_CACHE_HOME"] = str(cache)
    return env


def folder_size(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": int(sum(p.stat().st_size for p in files))}


def run_child(code: str, args: list[str], env: dict, label: str) -> dict:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    wall = time.time() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{label}: subprocess failed (rc {proc.returncode}):\n{proc.stderr.strip()[-3000:]}"
        )
    out = json.loads(lines[-1][len("RESULT ") :])
    out["first_result_s"] = out.pop("t_done") - t0
    out["process_wall_s"] = wall
    print(
        f"  {label}: {out['first_result_s']:.2f}s to first result "
        f"(import {out['import_s']:.2f}s, fit {out['fit_s']:.2f}s)",
        flush=True,
    )
    return out


def fresh_lasso(d: dict, repeats: int, with_celer: bool, cache_env: str, tmp: Path) -> dict:
    npz = tmp / "lasso.npz"
    np.savez(npz, X=d["A_train"], y=d["y_train"], Xt=d["A_test"], yt=d["y_test"])
    peers = ["LassoCV"] + (["celer"] if with_celer else [])
    runs = {k: [] for k in ["invcal_first", "invcal_cached", *peers]}
    notes = []
    for r in range(repeats):
        for peer in list(peers):
            code = LASSO_CHILD.format(**LASSO_SIDES[peer])
            try:
                runs[peer].append(run_child(code, [str(npz)], child_env(None, cache_env), peer))
            except RuntimeError as e:
                if peer != "celer":
                    raise
                notes.append(f"celer skipped in fresh processes: {e}")
                peers.remove(peer)
                del runs[peer]
        cache = tmp / f"lasso_cache_{r}"
        cache.mkdir()
        code = LASSO_CHILD.format(**LASSO_SIDES["invcal"])
        for kind in ("first", "cached"):
            run = run_child(code, [str(npz)], child_env(cache, cache_env), f"invcal ({kind})")
            run["cache_after"] = folder_size(cache)
            runs[f"invcal_{kind}"].append(run)
        shutil.rmtree(cache, ignore_errors=True)
    out = {"notes": notes, "runs": runs}
    for k, v in runs.items():
        out[k] = float(np.median([run["first_result_s"] for run in v]))
    return out


def fresh_theoph(repeats: int, cache_env: str, tmp: Path) -> dict:
    runs = {"first": [], "cached": []}
    for r in range(repeats):
        cache = tmp / f"theoph_cache_{r}"
        cache.mkdir()
        for kind in ("first", "cached"):
            run = run_child(THEOPH_CHILD, [], child_env(cache, cache_env), f"Theoph ({kind})")
            run["cache_after"] = folder_size(cache)
            runs[kind].append(run)
        shutil.rmtree(cache, ignore_errors=True)
    out = {"runs": runs}
    for k, v in runs.items():
        out[k] = float(np.median([run["first_result_s"] for run in v]))
    return out


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
def row(section, quantity, ours, peer=None, peer_value=None, target=None, kind=None, unit="s"):
    """One line of the table; ``kind``: "ratio" (target on ours / peer) or "value" (on
    ours); None: reported, no target."""
    ratio = None if peer_value in (None, 0) or ours is None else ours / peer_value
    checked = ratio if kind == "ratio" else ours if kind == "value" else None
    met = None if target is None or checked is None else bool(checked <= target)
    what = "ratio" if kind == "ratio" else "invcal"
    return dict(
        section=section,
        quantity=quantity,
        unit=unit,
        invcal=ours,
        peer=peer,
        peer_value=peer_value,
        ratio=ratio,
        target=None if target is None else f"{what} <= {target:g}",
        met=met,
    )


def lasso_rows(warm: dict | None, fresh: dict | None) -> list:
    rows = []
    if warm is not None:
        inv = warm["invcal"]
        for peer, label in (("LassoCV", "sklearn LassoCV"), ("celer", "celer LassoCV")):
            if peer not in warm:
                continue
            p = warm[peer]
            wt = TARGETS["lasso_warm_ratio"] if peer == "LassoCV" else None
            rows.append(
                row(
                    "warm",
                    "Lasso warm fit time",
                    inv["warm_s"],
                    label,
                    p["warm_s"],
                    wt,
                    "ratio" if wt is not None else None,
                )
            )
            target = TARGETS["lasso_test_mse_ratio"] if peer == "LassoCV" else None
            rows.append(
                row(
                    "warm",
                    "Lasso test MSE",
                    inv["test_mse"],
                    label,
                    p["test_mse"],
                    target,
                    "ratio",
                    unit="",
                )
            )
    if fresh is not None:
        for peer, label in (("LassoCV", "sklearn LassoCV"), ("celer", "celer LassoCV")):
            if peer not in fresh:
                continue
            for kind, name in (("first", "(a) first process ever"), ("cached", "(b) cache filled")):
                target = TARGETS[f"lasso_fresh_{kind}_ratio"] if peer == "LassoCV" else None
                rows.append(
                    row(
                        "fresh",
                        f"Lasso fresh process to first result, {name}",
                        fresh[f"invcal_{kind}"],
                        label,
                        fresh[peer],
                        target,
                        "ratio",
                    )
                )
    return rows


def theoph_rows(theoph: dict) -> list:
    w, f = theoph["warm"], theoph["fresh"]
    return [
        row("theoph", "Theoph fit_population warm", w["warm_s"], None, None,
            TARGETS["theoph_warm_s"], "value"),
        row("theoph", "Theoph fresh process, (b) cache filled", f["cached"], None, None,
            TARGETS["theoph_fresh_cached_s"], "value"),
        row("theoph", "Theoph fresh process, (a) first process ever", f["first"]),
    ]  # fmt: skip


def _fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        s = f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
        return s + (f" {unit}" if unit else "")
    return str(v)


def markdown(rows: list) -> str:
    cols = ["quantity", "invcal", "peer", "ratio", "target", "met?"]
    cells = [
        [
            r["quantity"],
            _fmt(r["invcal"], r["unit"]),
            "—" if r["peer"] is None else f"{r['peer']}: {_fmt(r['peer_value'], r['unit'])}",
            _fmt(r["ratio"]),
            _fmt(r["target"]),
            _fmt(r["met"]),
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for x in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import jaxlib
    import sklearn

    with threadpool_limits(limits=1):
        pools = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads")}
            for p in threadpool_info()
        ]
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "device": str(jax.devices()[0]),
        "threadpools_in_process": pools,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100x300 Lasso, one repeat (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 quick)")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS))
    ap.add_argument(
        "--cache-env",
        choices=["jax", "xdg"],
        default="jax",
        help="how the fresh cache folder reaches invcal: JAX_COMPILATION_CACHE_DIR (jax) or "
        "XDG_CACHE_HOME, i.e. invcal's default folder and threshold (xdg)",
    )
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        ap.error("--repeats must be >= 1")
    name = "first_result_quick.json" if args.quick else "first_result.json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    run = [s for s in SECTIONS if s not in args.skip]

    d, spec = lasso_data(args.quick)
    with_celer, celer_note = celer_status()
    notes = [celer_note] if celer_note else []
    if celer_note:
        print(celer_note, flush=True)
    results = {
        "benchmark": "first_result",
        "machine": machine(),
        "settings": {
            "quick": args.quick,
            "repeats": repeats,
            "lasso_data": spec,
            "lasso_invcal": "invcal.sklearn.BilevelLassoCV()",
            "lasso_peer": f"sklearn.linear_model.LassoCV({LASSOCV_KW})",
            "lasso_celer": f"celer.LassoCV({CELER_KW})" if with_celer else None,
            "theoph": "fit_population(theophylline_model(rtol=1e-7, atol=1e-9), load_theoph(), "
            "init=INIT)",
            "thread_env": {**THREAD_ENV, "XLA_FLAGS": os.environ["XLA_FLAGS"]},
            "threadpool_limits_in_process": 1,
            "jax_enable_x64": bool(jax.config.jax_enable_x64),
            "cache_env": args.cache_env,
            "targets": TARGETS,
        },
        "sections": run,
    }
    warm = fresh = None
    with tempfile.TemporaryDirectory(prefix="invcal_first_result_") as tmpdir:
        tmp = Path(tmpdir)
        if "warm" in run:
            print("Lasso, warm fits in this process", flush=True)
            with threadpool_limits(limits=1):
                warm = warm_lasso(d, repeats, with_celer)
            notes += warm["notes"]
            results["warm"] = warm
        if "fresh" in run:
            print("Lasso, fresh processes", flush=True)
            fresh = fresh_lasso(d, repeats, with_celer, args.cache_env, tmp)
            notes += fresh["notes"]
            results["fresh"] = fresh
        if "theoph" in run:
            print("Theoph, warm in this process", flush=True)
            with threadpool_limits(limits=1):
                tw = warm_theoph(repeats)
            print("Theoph, fresh processes", flush=True)
            results["theoph"] = {"warm": tw, "fresh": fresh_theoph(repeats, args.cache_env, tmp)}
    rows = lasso_rows(warm, fresh)
    if "theoph" in results:
        rows += theoph_rows(results["theoph"])
    results["rows"] = rows
    results["notes"] = notes

    print()
    print(markdown(rows))
    for note in notes:
        print(f"\nNote: {note}")
    print(
        f"\nmedian of {repeats}; one BLAS/XLA thread on both sides; cache via "
        f"{'JAX_COMPILATION_CACHE_DIR' if args.cache_env == 'jax' else 'XDG_CACHE_HOME'}"
    )

    if args.skip and out.exists():  # a partial run replaces only what it measured
        previous = json.loads(out.read_text())
        kept = [r for r in previous.get("rows", []) if r.get("section") not in run]
        merged = sorted(kept + rows, key=lambda r: SECTIONS.index(r["section"]))
        results = {**previous, **results, "rows": merged}
        results["sections"] = sorted(
            set(previous.get("sections", [])) | set(run), key=SECTIONS.index
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
