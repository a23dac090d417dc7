"""``invcal calibrate``: population calibration of a user's NONMEM-style table.

    invcal calibrate DATA.csv --model NAME|path/to/file.py:NAME [--random P,...]
        [--error additive|proportional|combined] [--omega diagonal|full]
        [--approximation focei|laplace] [--covariance sandwich|R|S|lme] [--init P=V,...]
        [--covariate "lCl~WT" ...] [--lag] [--iov P,...] [--input U] [--t0 0]
        [--interpolation constant|linear]
        [--simulations N] [--seed S] [--pcvpc] [--out DIR] [--resume | --overwrite]
        [--no-progress]
    invcal calibrate --list-models

A thin layer on :func:`invcal.ode.calibrate.calibrate`: every check (table, model, names)
runs before the output folder is claimed and before anything is compiled; mistakes are one
``invcal: error:`` line and exit status 2. During the fit ``DIR/results.json`` is the fit's
record (:func:`invcal.ode.fit_population` with ``out=DIR``: every outer iteration with the
loop's whole state, written after each); at the end it holds every result, with the fit's
record under ``fit_record``. ``--resume`` continues the saved fit where it stopped
(``fit_population(resume=True)``: the estimates of an uninterrupted run; a finished run's
fit runs no iteration again, and the report is made anew); a results.json of an earlier
invcal without the fit's state restarts the fit from its estimates.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub, name: str):
    p = sub.add_parser(
        name,
        help="fit a population ODE model to your NONMEM-style table and write a report",
        description="Fit a population (mixed-effects) ODE model to a NONMEM-style table by "
        "FOCEI or Laplace; write results.json, estimates.csv, diagnostics.csv and report.md "
        "with figures.",
    )
    p.add_argument(
        "data",
        nargs="?",
        help="the table (CSV: ID, TIME, DV, AMT, EVID, CMT, ...) or a PEtab problem (.yaml)",
    )
    p.add_argument("--model", help="a built-in model (--list-models) or path/to/file.py:NAME")
    p.add_argument("--list-models", action="store_true", help="list the built-in models")
    p.add_argument("--random", help="parameters with random effects, P,Q,... (default: all)")
    p.add_argument("--error", default="additive", help="additive|proportional|combined")
    p.add_argument("--omega", default="diagonal", help="diagonal|full random-effect covariance")
    p.add_argument("--approximation", default="focei", help="focei|laplace")
    p.add_argument("--covariance", default="sandwich", help="sandwich (default)|R|S|lme (nlme's)")
    p.add_argument("--init", help="initial values P=V,... (fixed effects, omega_P, sigma_*)")
    p.add_argument(
        "--covariate",
        action="append",
        default=[],
        metavar="P~COL",
        help="power covariate model on the log scale centred at the median (repeatable)",
    )
    p.add_argument(
        "--censoring",
        default="m3",
        help="observations below LLOQ (CENS/LLOQ columns): m3 (likelihood; needs "
        "--approximation laplace) or m1 (drop)",
    )
    p.add_argument(
        "--lag", action="store_true", help="oral models: a lag time lTlag on the depot's doses"
    )
    p.add_argument(
        "--iov",
        metavar="P,...",
        help="inter-occasion variability on these parameters (the table's OCC column): one "
        "occasion effect per occasion, one SD per parameter (NONMEM's BLOCK SAME)",
    )
    p.add_argument("--input", help="seed model: the column of u(t) (default U)")
    p.add_argument("--t0", type=float, help="seed model: the initial time (default 0)")
    p.add_argument("--interpolation", help="seed model: u(t) 'constant' (default) or 'linear'")
    p.add_argument(
        "--simulations", type=int, default=500, help="simulations for NPDE and the VPC (0: none)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulations")
    p.add_argument("--pcvpc", action="store_true", help="prediction-corrected VPC")
    p.add_argument("--max-iter", type=int, default=200, help="most outer iterations")
    p.add_argument("--out", help="output folder (default: runs/calibrate-<data name>)")
    p.add_argument("--resume", action="store_true", help="continue the run found in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run found in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--starts", type=int, help="PEtab: multistart local optimizations (default 20)")
    p.add_argument("--sensitivities", help="PEtab: forward (default)|adjoint|checkpointed")
    p.add_argument("--redraws", type=int, help="PEtab: redraws of a non-finite start (default 20)")
    p.add_argument(
        "--hierarchical",
        action="store_true",
        help="PEtab: scaling, offset and sigma parameters solved in closed form",
    )
    return p


# The fit's progress callback: one module-level function (a new function would compile the
# fit again), dispatching to the current command's sink.
_SINK: list = [None]


def _progress(algorithm, iteration, objective):
    sink = _SINK[0]
    if sink is not None:
        sink(algorithm, iteration, objective)


def _parse_list(flag: str, text: str | None):
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag}: expected a comma-separated list of names, got {text!r}.")
    return items


def _parse_init(text: str | None) -> dict:
    out = {}
    for item in _parse_list("--init", text) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--init: expected P=VALUE, got {item!r}.")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--init {key.strip()}: {raw!r} is not a number.") from None
        if not math.isfinite(value):
            raise ValueError(f"--init {key.strip()}: {raw!r} is not finite.")
        out[key.strip()] = value
    return out


def _resume_init(previous: dict, prep: dict) -> dict:
    """Initial values from a previous run's estimates (the names the fit accepts)."""
    theta = dict(previous.get("theta") or {})
    init = {k: v for k, v in theta.items() if not k.startswith("omega_chol_")}
    for p, sd in (previous.get("random_sd") or {}).items():
        if p in prep["random"] and sd and sd > 0:
            init[f"omega_{p}"] = sd
    allowed = set(prep["init"]) | {f"omega_{p}" for p in prep["random"]}
    allowed |= {f"iov_{p}" for p in prep.get("iov", ())}
    allowed |= {"additive": {"sigma_add"}, "proportional": {"sigma_prop"}}.get(
        prep["error"], {"sigma_add", "sigma_prop"}
    )
    allowed |= {f"beta_{p}_{c}" for p, cs in prep["covariates"].items() for c in cs}
    return {k: float(v) for k, v in init.items() if k in allowed and v is not None}


def run(args) -> int:
    from .models import describe_models

    if args.list_models:
        print(describe_models())
        return 0
    if not args.data:
        raise ValueError("calibrate needs a table: invcal calibrate DATA.csv --model NAME.")
    if str(args.data).endswith((".yaml", ".yml")):
        # a PEtab problem: multistart calibration (invcal/ode/petab/command.py)
        from .petab.command import run as run_petab

        return run_petab(args)
    if not args.model:
        raise ValueError(
            "calibrate needs --model: a built-in model (invcal calibrate --list-models) or "
            "path/to/file.py:NAME."
        )
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one.")
    if args.simulations < 0:
        raise ValueError(f"--simulations must be >= 0; got {args.simulations}.")
    if args.max_iter < 1:
        raise ValueError(f"--max-iter must be >= 1; got {args.max_iter}.")
    from .calibrate import prepare

    model_options = {
        k: v
        for k, v in (("input", args.input), ("t0", args.t0), ("interpolation", args.interpolation))
        if v is not None
    }
    kwargs = dict(
        random=_parse_list("--random", args.random),
        error=args.error,
        omega=args.omega,
        approximation=args.approximation,
        covariance=args.covariance,
        init=_parse_init(args.init),
        covariates=args.covariate or None,
        model_options=model_options,
        censoring=args.censoring,
        lag=args.lag,
        iov=_parse_list("--iov", args.iov),
    )
    prep = prepare(args.data, args.model, **kwargs)  # every check, nothing compiled
    out = Path(args.out) if args.out else Path("runs") / f"calibrate-{Path(args.data).stem}"
    from ..runfolder import RESULTS_FILE, claim_run_folder

    with claim_run_folder(out, resume=args.resume, overwrite=args.overwrite):
        return _run_in(args, out / RESULTS_FILE, out, prep, kwargs)


def _run_in(args, results_path: Path, out: Path, prep: dict, kwargs: dict) -> int:
    import time

    import jax

    from .calibrate import calibrate, read_results
    from .calibration_report import write_calibration

    previous = read_results(results_path) if results_path.exists() else None
    resume = bool(args.resume)
    if resume:
        kind = (previous or {}).get("kind")
        if previous is None:
            _line(f"invcal: no {results_path} to resume from; starting a new run.")
            resume = False
        elif kind == "fit_population" or (kind == "calibration" and previous.get("fit_record")):
            # the fit's own record (its whole outer state): fit_population continues it
            _line(f"invcal: resuming the fit saved in {results_path}.")
        elif kind == "calibration" and previous.get("model") == prep["name"]:
            # a run of an earlier invcal, without the fit's state: restart from its estimates
            given = kwargs["init"]
            kwargs["init"] = {**_resume_init(previous, prep), **given}
            _line(f"invcal: resuming from the estimates recorded in {results_path}.")
            resume = False
        else:
            raise ValueError(
                f"--resume: {results_path} holds a run of "
                f"{previous.get('model') or previous.get('problem')!r}, not a calibration of "
                f"model {prep['name']!r}; pass another --out or drop --resume."
            )
    elif previous is not None:
        _line(f"invcal: overwriting the run in {out} (--overwrite).")
    t_start = time.perf_counter()
    show = not args.no_progress
    tty = sys.stderr.isatty()

    def sink(algorithm, iteration, objective):
        # called after the fit has written the iteration to results.json
        text = (
            f"calibrate [{algorithm}] iteration {iteration}: -2LL {2 * objective:.8g}, "
            f"elapsed {time.perf_counter() - t_start:.0f} s"
        )
        sys.stderr.write(("\r" + text + "\x1b[K") if tty else text + "\n")
        sys.stderr.flush()

    _SINK[0] = sink
    if show:
        _line(f"invcal: calibrating {prep['name']} on {args.data} (compiling the fit first)...")
    try:
        cal = calibrate(
            args.data,
            args.model,
            n_simulations=args.simulations,
            seed=args.seed,
            prediction_corrected=args.pcvpc,
            max_iter=args.max_iter,
            # the fit writes results.json after every outer iteration (resumable); progress
            # after each write (neither changes the compiled fit, which JAX's cache keeps)
            progress=None if args.no_progress else _progress,
            out=out,
            resume=resume,
            overwrite=not resume,
            **kwargs,
        )
        jax.effects_barrier()
    except RuntimeError as e:
        _SINK[0] = None
        if show and tty:
            sys.stderr.write("\n")
        saved = f" (estimates so far: {results_path})" if results_path.exists() else ""
        _line(f"invcal: error: {' '.join(str(e).split())}{saved}")
        return 1
    finally:
        _SINK[0] = None
    if show and tty:
        sys.stderr.write("\n")
    record = read_results(results_path)  # the fit's record: kept in the calibration's
    report = write_calibration(cal, out, fit_record=record)
    fit = cal.fit
    print(f"report: {report}")
    print(
        f"-2LL {-2 * fit.loglik:.6g}, AIC {fit.aic:.6g}, BIC {fit.bic:.6g}; {fit.message}; "
        f"covariance: {cal.covariance}"
        + (f" ({cal.covariance_note})" if cal.covariance_note else "")
    )
    for r in cal.estimates:
        print(f"  {r['name']:<16s} {r['value']:12.6g}  SE {r['se']:10.4g}  RSE {r['rse']:8.3g}%")
    return 0


def _line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
