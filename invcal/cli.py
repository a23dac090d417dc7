"""The ``invcal`` command line: list, run and check the registered problems.

    invcal list
    invcal run PROBLEM [--method NAME] [--optimizer adam|gd|lbfgs|hoag|rtho|secant] [--steps N]
                       [--learning-rate LR] [--out DIR] [--resume | --overwrite] [--no-progress]
                       [--no-landscape] [-o KEY=VALUE ...]
    invcal check PROBLEM [--json] [--methods a,b,...] [-o KEY=VALUE ...]
    invcal report RUN_DIR

``run`` tunes θ with :func:`invcal.tune` (``results.json`` is rewritten after every step, so
``--resume`` continues a killed run), evaluates the criterion on the problem's grid for the
landscape figure, and writes ``report.md`` with figures (:mod:`invcal.report`). ``check``
compares every hypergradient method the problem lists with central finite differences; it
reports and does not judge. ``report`` rewrites the report of an existing run directory.

Mistakes in the command (unknown problem, method or option, bad values) print one line
starting with ``invcal: error:`` on stderr and exit with status 2; a run that fails while
computing (an unconverged solve under the raise policy) exits with status 1. JAX runs in
float64, which the problems' tolerances assume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from . import _interrupt
from .errors import CommandError, RunFailed
from .runfolder import RESULTS_FILE

__all__ = ["main", "console"]

OPTIMIZERS = ("adam", "gd", "lbfgs", "hoag", "rtho", "secant", "bb")
USER_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one line
        raise CommandError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key.strip(), convert(raw)
        except ValueError:
            pass
    return key.strip(), {"true": True, "false": False, "none": None}.get(raw.lower(), raw)


def _parser(command: str | None = None) -> _Parser:
    """The parser; ``command`` (the first word of the command line) says which domain
    command, if any, needs its full parser."""
    p = _Parser(
        prog="invcal",
        description="Tune hyperparameters of inverse problems by hypergradients.",
        epilog="Run `invcal COMMAND --help` for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "list", help="list the registered problems", description="List the registered problems."
    )

    run = sub.add_parser(
        "run",
        help="tune a problem's hyperparameters and write a report",
        description="Tune a problem's hyperparameters, then write results.json, report.md "
        "and figures.",
    )
    run.add_argument("problem", help="a problem name (see `invcal list`)")
    run.add_argument(
        "--method", help="hypergradient method, one of the problem's (`invcal check` lists them)"
    )
    run.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="outer optimizer (default: the problem's)"
    )
    run.add_argument(
        "--steps", type=_positive_int, help="number of outer steps (default: the problem's)"
    )
    run.add_argument("--learning-rate", type=_positive_float, help="outer step size in z")
    run.add_argument("--out", help="output directory (default: runs/PROBLEM)")
    run.add_argument("--resume", action="store_true", help="continue the run found in --out")
    run.add_argument(
        "--overwrite", action="store_true", help="replace the previous run found in --out"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.add_argument("--no-landscape", action="store_true", help="skip the criterion grid")
    _add_options(run)

    check = sub.add_parser(
        "check",
        help="compare every hypergradient method with finite differences",
        description="Compare each of the problem's hypergradient methods with central finite "
        "differences at the initial θ (in the unconstrained coordinates z).",
    )
    check.add_argument("problem", help="a problem name (see `invcal list`)")
    check.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    check.add_argument("--methods", help="comma-separated subset of the problem's methods")
    _add_options(check)

    report = sub.add_parser(
        "report",
        help="rewrite report.md from a run directory",
        description="Rewrite report.md and its figures from RUN_DIR/results.json.",
    )
    report.add_argument("run_dir", help="a directory written by `invcal run`")
    for name, (module, summary) in DOMAIN_COMMANDS.items():
        if command == name:
            _domain_command(module).add_parser(sub, name)
        else:
            # the domain (and JAX's programs behind it) is imported only for its own command:
            # `invcal --help` and the other commands do not pay for it
            sub.add_parser(name, help=summary, add_help=False)
    return p


# Commands that live with their domain (the domain's own data, options and report): each
# module has ``add_parser(sub, name)`` (argparse only, no heavy import at module level) and
# ``run(args) -> int``, and raises the errors ``main`` maps to one line (USER_ERRORS, and
# invcal.errors' CommandError and RunFailed). The command line is the application layer: it
# may import every domain.
DOMAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "calibrate": (
        "invcal.ode.command",
        "fit a population ODE model to your NONMEM-style table and write a report",
    ),
    "reconstruct": (
        "invcal.imaging.command",
        "denoise, deblur or inpaint an image with λ chosen by SURE or discrepancy",
    ),
}


def _domain_command(module: str):
    import importlib

    return importlib.import_module(module)


def _add_options(p) -> None:
    p.add_argument(
        "-o",
        "--option",
        dest="options",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="an option of the problem's setup (repeatable), e.g. -o seed=1",
    )


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _float64():
    """JAX's 64-bit mode for the command (the problems' tolerances assume float64), scoped
    so that ``main()`` called from Python leaves the caller's configuration as it was."""
    import jax

    return jax.enable_x64(True)


def _canonical(name: str) -> str:
    """The registered spelling of ``name`` (``-`` and ``_`` are interchangeable); an unknown
    name raises the catalogue's ``KeyError``, which lists the known ones."""
    from . import catalog

    names = {ep.name for ep in entry_points(group=catalog.GROUP)}
    for candidate in (name, name.replace("-", "_")):
        if candidate in names:
            return candidate
    catalog.load(name)  # raises KeyError("unknown problem ...")
    return name


def _load(name: str, options):
    from . import catalog

    return catalog.load(name, **dict(options))


def _pick_methods(setup, problem_name: str, requested: list[str] | None) -> dict:
    methods = dict(setup.methods) or {"default": setup.method}
    if requested is None:
        return methods
    unknown = [m for m in requested if m not in methods]
    if unknown or not requested:
        raise CommandError(
            f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for problem {problem_name!r}; valid methods: {', '.join(methods)}."
        )
    return {m: methods[m] for m in requested}


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite_or_none(u) for u in v]
    return v


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return str(v)
    try:
        return f"{float(v):.{digits}g}"
    except (TypeError, ValueError):
        return str(v)


def _theta_text(theta: dict) -> str:
    import numpy as np

    parts = []
    for k, v in theta.items():
        a = np.asarray(v, dtype=float)
        if a.size == 1:
            parts.append(f"{k}={float(a.reshape(())):.6g}")
        else:
            parts.append(f"{k}=array{a.shape} mean {a.mean():.4g}")
    return ", ".join(parts)


def _stderr_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------
def _cmd_list(args) -> int:
    from . import catalog

    problems = catalog.available()
    if not problems:
        print("no problems are registered (entry-point group 'invcal.problems').")
        return 0
    width = max(len(n) for n in problems)
    for name, description in problems.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _previous_results(path: Path) -> dict | None:
    from .report import load_results

    if not path.exists():
        return None
    return load_results(path)


def _landscape(setup, previous, out: Path, *, show_progress: bool):
    """E on the setup's grid: reused from the previous run when the grid is the same. The
    points are recorded in ``out/landscape/results.json`` as they finish, so a run stopped
    during the landscape resumes it where it stopped."""
    import numpy as np

    from .outer import grid_search
    from .progress import ProgressBar

    grid = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in setup.grid.items()}
    axes = [grid[k].tolist() for k in grid]
    old = (previous or {}).get("landscape")
    if isinstance(old, dict) and old.get("names") == list(grid) and old.get("axes") == axes:
        return old
    bar = ProgressBar(label="landscape") if show_progress else None
    where = out / "landscape"
    try:
        try:
            res = grid_search(
                setup.problem, solver=setup.solver, grid=grid, progress=bar, out=where, resume=True
            )
        except ValueError as e:
            if "cannot resume" not in str(e):
                raise
            # another grid was recorded there: start this one afresh
            res = grid_search(
                setup.problem, solver=setup.solver, grid=grid, progress=bar, out=where
            )
    finally:
        if bar is not None:
            bar.close()
    values = np.array([row.value for row in res.rows], dtype=float)
    values = values.reshape(tuple(len(a) for a in axes))
    return {"names": list(grid), "axes": axes, "values": values.tolist()}


def _cmd_run(args) -> int:
    from .runfolder import claim_run_folder

    name = _canonical(args.problem)
    out = Path(args.out if args.out else Path("runs") / name)
    if args.resume and args.overwrite:
        raise CommandError("--resume and --overwrite exclude each other; pass one.")
    # The options are checked by building the problem (cheap: no compilation), then the
    # folder is checked and locked before any work: one run per folder, nothing overwritten
    # that this command was not asked to replace, and no folder made for a bad command.
    setup = _load(name, args.options)
    with claim_run_folder(out, resume=args.resume, overwrite=args.overwrite):
        return _run_in(args, name, out, setup)


def _run_in(args, name: str, out: Path, setup) -> int:
    from .hypergradient import describe
    from .outer import atomic_write_json, tune
    from .progress import ProgressBar
    from .report import write_report

    results_path = out / RESULTS_FILE
    previous = None
    if args.resume:
        previous = _previous_results(results_path)
        if previous is None:
            _stderr_line(f"invcal: no {results_path} to resume from; starting a new run.")
        elif previous.get("problem") != name:
            raise CommandError(
                f"--resume: {results_path} holds a run of problem {previous.get('problem')!r}, "
                f"not {name!r}; pass another --out or drop --resume."
            )
    elif results_path.exists():  # --overwrite (claim_run_folder refuses it otherwise)
        _stderr_line(f"invcal: overwriting the run in {out} (--overwrite).")

    optimizer = args.optimizer or setup.optimizer
    if isinstance(optimizer, str) and optimizer.lower() == "rtho":
        # RTHO advances the inner iteration with its own forward-mode tangents.
        if args.method is not None:
            raise CommandError(
                f"--method {args.method} has no effect with --optimizer rtho, which computes "
                "its own forward-mode hypergradient; drop --method."
            )
        method_name, method, solver = "rtho", setup.method, setup.solver
    elif args.method is not None:
        method_name = args.method
        method = _pick_methods(setup, name, [method_name])[method_name]
        solver = setup.solver_for(method_name)
    else:
        method_name = next((k for k, m in setup.methods.items() if m is setup.method), "default")
        method, solver = setup.method, setup.solver
    # Runs written by the command line name their method; resuming with another one would
    # splice two different hypergradients into one history.
    if (
        previous is not None
        and "method_detail" in previous
        and previous.get("method") != method_name
    ):
        raise CommandError(
            f"--resume: {results_path} was run with method {previous.get('method')!r}, this "
            f"run asks for {method_name!r}; pass --method {previous.get('method')} or drop "
            "--resume."
        )
    steps = args.steps if args.steps is not None else setup.steps
    learning_rate = args.learning_rate if args.learning_rate is not None else setup.learning_rate
    detail = "RTHO" if method_name == "rtho" else describe(method)
    meta = {"problem": name, "method": method_name, "method_detail": detail}
    if args.options:
        meta["options"] = dict(args.options)

    bar = None if args.no_progress else ProgressBar(label="tune")
    try:
        result = tune(
            setup.problem,
            solver=solver,
            method=method,
            optimizer=optimizer,
            learning_rate=learning_rate,
            steps=steps,
            out=out,
            resume=args.resume,
            progress=bar,
            meta=meta,
        )
    except RuntimeError as e:
        where = (
            f"the steps done so far are in {results_path}; continue with --resume"
            if results_path.exists()
            else "no step finished, nothing was recorded"
        )
        raise RunFailed(f"{e} ({where})") from None
    finally:
        if bar is not None:
            bar.close()
    results = result.results

    space = setup.problem.space
    if not args.no_landscape and setup.grid and 1 <= len(space.names) <= 2:
        try:
            results["landscape"] = _landscape(
                setup, previous, out, show_progress=not args.no_progress
            )
        except Exception as e:  # the landscape is a picture, not the result: warn, go on
            _stderr_line(f"invcal: warning: landscape skipped: {type(e).__name__}: {e}")
    extra_figures = []
    if setup.extra_report is not None:
        try:
            extra_figures = [tuple(f) for f in (setup.extra_report(result, out) or [])]
        except Exception as e:
            _stderr_line(
                f"invcal: warning: the problem's extra report failed: {type(e).__name__}: {e}"
            )
    if not isinstance(results.get("extra"), dict):
        results["extra"] = {}
    results["extra"]["figures"] = [list(f) for f in extra_figures]
    atomic_write_json(results_path, results)
    report = write_report(results, out, extra_figures=extra_figures)

    best = results.get("best") or {}
    print(f"report: {report}")
    print(f"theta: {_theta_text(result.theta)}")
    print(
        f"criterion: {result.value:.6g} (best of {len(result.history)} steps, at step "
        f"{best.get('step', '?')})"
    )
    return 0


def _check_rows(setup, methods: dict) -> list[dict]:
    from .testing import check_hypergradient

    problem = setup.problem
    theta = problem.space.init()
    rows = []
    tty = sys.stderr.isatty()
    for i, (name, method) in enumerate(methods.items()):
        if tty:
            sys.stderr.write(f"\rchecking {name} ({i + 1}/{len(methods)})...\x1b[K")
            sys.stderr.flush()
        t0 = time.perf_counter()
        row = {"method": name}
        try:
            res = check_hypergradient(
                problem, theta, method, solver=setup.solver_for(name), on_failure="record"
            )
        except Exception as e:  # one broken method must not hide the others' results
            row.update(
                description=None,
                relative_error=None,
                value=None,
                seconds=time.perf_counter() - t0,
                error=f"{type(e).__name__}: {e}",
            )
            rows.append(row)
            continue
        d = res.diagnostics
        row.update(
            description=res.method,
            relative_error=_finite_or_none(res.relative_error),
            value=_finite_or_none(res.value),
            seconds=res.seconds,
            inner_steps=d.get("inner_steps"),
            linear_steps=d.get("linear_steps"),
            inner_residual=_finite_or_none(d.get("inner_residual")),
            linear_residual=_finite_or_none(d.get("linear_residual")),
            converged=bool(d.get("inner_converged") and d.get("linear_converged")),
            gradient=_finite_or_none(res.gradient.tolist()),
            finite_difference=_finite_or_none(res.finite_difference.tolist()),
            error=None,
        )
        rows.append(row)
    if tty:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
    return rows


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cmd_check(args) -> int:
    name = _canonical(args.problem)
    requested = None
    if args.methods is not None:
        requested = [m.strip() for m in args.methods.split(",") if m.strip()]
    setup = _load(name, args.options)
    methods = _pick_methods(setup, name, requested)
    rows = _check_rows(setup, methods)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        space = setup.problem.space
        print(
            f"{name}: hypergradients dE/dz at the initial θ ({_theta_text(space.init())}) "
            "against central finite differences"
        )
        fd = next((r["finite_difference"] for r in rows if r.get("finite_difference")), None)
        if fd is not None and len(fd) <= 4:
            print("finite differences: " + ", ".join(_fmt(v, 8) for v in fd))
        table = []
        for r in rows:
            if r.get("error"):
                table.append([r["method"], "error", "-", _fmt(r["seconds"], 3), "-", "-", "-"])
                continue
            table.append(
                [
                    r["method"],
                    _fmt(r["relative_error"], 3),
                    _fmt(r["value"], 8),
                    _fmt(r["seconds"], 3),
                    _fmt(r["inner_steps"]),
                    _fmt(r["linear_steps"]),
                    _fmt(r["converged"]),
                ]
            )
        _print_table(
            ["method", "rel. error", "E", "seconds", "inner steps", "linear steps", "converged"],
            table,
        )
        for r in rows:
            if r.get("error"):
                print(f"{r['method']}: {r['error']}")
    failed = [r["method"] for r in rows if r.get("error")]
    if failed:
        _stderr_line(
            f"invcal: error: the check raised for method(s) {', '.join(failed)} (see above)."
        )
        return 1
    return 0


def _cmd_report(args) -> int:
    from .report import load_results, write_report

    run_dir = Path(args.run_dir)
    results = load_results(run_dir)
    out = run_dir if run_dir.is_dir() else run_dir.parent
    figures = (results.get("extra") or {}).get("figures") or []
    path = write_report(results, out, extra_figures=[tuple(f) for f in figures])
    print(f"report: {path}")
    return 0


_COMMANDS = {"list": _cmd_list, "run": _cmd_run, "check": _cmd_check, "report": _cmd_report}


def _message(e: BaseException) -> str:
    # KeyError's str() is the repr of its argument; show the message itself.
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


@contextlib.contextmanager
def _warnings_as_lines():
    """A command's warnings as one ``invcal: warning: ...`` line each on stderr, instead of
    Python's two lines quoting invcal's source."""

    def show(message, category, filename, lineno, file=None, line=None):
        _stderr_line(f"invcal: warning: {' '.join(str(message).split())}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def console() -> None:
    """The ``invcal`` script and ``python -m invcal``: :func:`main` with Ctrl-C handled as
    :func:`invcal._interrupt.exit_on_interrupt` says (``main`` called from Python leaves
    signals alone)."""
    _interrupt.install()
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    """Run the ``invcal`` command line with ``argv`` (default ``sys.argv[1:]``); return the
    exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(next((a for a in argv if not a.startswith("-")), None))
    try:
        args = parser.parse_args(argv)
    except CommandError as e:
        _stderr_line(f"invcal: error: {_message(e)}")
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _float64(), _warnings_as_lines():
            if args.command in DOMAIN_COMMANDS:
                return _domain_command(DOMAIN_COMMANDS[args.command][0]).run(args)
            return _COMMANDS[args.command](args)
    except CommandError as e:
        _stderr_line(f"invcal: error: {_message(e)}")
        return 2
    except USER_ERRORS as e:
        _stderr_line(f"invcal: error: {_message(e)}")
        return 2
    except RunFailed as e:
        _stderr_line(f"invcal: error: {_message(e)}")
        return 1
    except BrokenPipeError:  # `invcal check --json | head`: stop quietly, as other tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except KeyboardInterrupt:
        _stderr_line("invcal: interrupted (a run continues from its last step with --resume).")
        return 130
