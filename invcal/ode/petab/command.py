"""``invcal calibrate PROBLEM.yaml``: multistart calibration of a PEtab problem.

    invcal calibrate PROBLEM.yaml [--starts N] [--sensitivities forward|adjoint|checkpointed]
        [--hierarchical] [--seed S] [--max-iter N] [--redraws N] [--out DIR]
        [--resume | --overwrite] [--no-progress]

:func:`invcal.ode.command.run` hands a ``.yaml`` here. Every check of the command line and of
the PEtab files runs before anything is compiled; a mistake is one ``invcal: error:`` line
and exit status 2. ``DIR/results.json`` is rewritten after every start (a killed run
continues with ``--resume``), then ``report.md`` and its figures are written
(:mod:`invcal.ode.petab.report`). A progress line per start goes to stderr unless
``--no-progress``. ``--max-iter`` bounds L-BFGS-B's iterations per start. ``--redraws N``
(default 20, 0: never) is how many times a start point whose objective is not finite is
replaced by a seeded uniform draw in the bounds (:func:`invcal.ode.petab.calibrate`).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["run", "SENSITIVITIES"]

SENSITIVITIES = ("forward", "adjoint", "checkpointed")
DEFAULT_STARTS = 20
DEFAULT_REDRAWS = 20


def _sensitivities(name: str | None):
    from . import Adjoint, Checkpointed, Forward

    key = "forward" if name is None else str(name).strip().lower()
    table = {"forward": Forward, "adjoint": Adjoint, "checkpointed": Checkpointed}
    if key not in table:
        raise ValueError(
            f"--sensitivities: unknown method {name!r}; pass one of {', '.join(SENSITIVITIES)}."
        )
    return table[key]()


def _check(args) -> tuple:
    """Every check that needs no PEtab file read: (starts, sensitivities, redraws, out)."""
    path = Path(args.data)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PEtab problem file (the .yaml).")
    starts = DEFAULT_STARTS if getattr(args, "starts", None) is None else args.starts
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise ValueError(f"--starts must be a positive integer; got {starts!r}.")
    sensitivities = _sensitivities(getattr(args, "sensitivities", None))
    redraws = DEFAULT_REDRAWS if getattr(args, "redraws", None) is None else args.redraws
    if isinstance(redraws, bool) or not isinstance(redraws, int) or redraws < 0:
        raise ValueError(
            f"--redraws must be a non-negative integer (0: never re-draw); got {redraws!r}."
        )
    if getattr(args, "model", None):
        raise ValueError(
            f"--model does not apply to a PEtab problem ({path} names its own SBML model); "
            "drop --model."
        )
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one.")
    if args.max_iter < 1:
        raise ValueError(f"--max-iter must be >= 1; got {args.max_iter}.")
    out = Path(args.out) if args.out else Path("runs") / f"calibrate-{path.stem}"
    return starts, sensitivities, redraws, out


def run(args) -> int:
    starts, sensitivities, redraws, out = _check(args)
    from . import calibrate, load

    problem = load(args.data)  # reads and checks the tables; compiles nothing
    if args.hierarchical:
        from .hierarchical import hierarchical_problem

        hierarchical_problem(problem)  # refuses a problem without inner parameters now
    show = not args.no_progress

    def progress(done, total, s):
        if show:
            objective = f"{s.objective:.8g}" if s.objective != float("inf") else "inf"
            _line(
                f"calibrate start {done}/{total}: objective {objective}, {s.status}, "
                f"{s.iterations} iterations, {s.seconds:.1f} s"
            )

    if show:
        _line(
            f"invcal: {starts} starts on {args.data} ({type(sensitivities).__name__} "
            f"sensitivities{', hierarchical' if args.hierarchical else ''}; the first start "
            "compiles the objective)..."
        )
    result = calibrate(
        problem,
        starts=starts,
        sensitivities=sensitivities,
        seed=args.seed,
        hierarchical=bool(args.hierarchical),
        max_iterations=args.max_iter,
        redraws=redraws,
        out=out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=progress,
    )
    print(f"report: {out / 'report.md'}")
    print(
        f"best objective {result.objective:.8g} (nominal parameters: "
        f"{result.nominal_objective:.8g}); {result.success_rate():.0%} of {len(result.starts)} "
        f"starts within 0.1 of the best; "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    )
    for pid, value in result.best.items():
        print(f"  {pid:<28s} {value if value is not None else float('nan'):14.6g}")
    if not any(s.status != "failed" for s in result.starts):
        _line("invcal: error: every start failed (see report.md).")
        return 1
    return 0


def _line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
