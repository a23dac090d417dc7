r"""Gradient time of a PEtab objective by forward sensitivities, the continuous adjoint and
the checkpointed discrete adjoint, against the number of parameters.

The model is a linear chain X₀ → X₁ → … → X_{n} with mass-action rates kᵢXᵢ₋₁ (one rate
constant per reaction, log10-scaled, all estimated), X₀(0) = 1, written as an SBML model
and a PEtab problem in a temporary folder; three observables (X₀, the middle species and
the last, scaled by an estimated factor) at 10 times, normal noise. Parameters:
n + 1 for n reactions. The chain is not stiff: every method uses ``diffrax.Tsit5()``
(rtol 1e-8, atol 1e-10) so that the comparison is of the sensitivity methods, not of
implicit solvers.

Per size and method: the compile time of the value-and-gradient program, the median
time of ``--reps`` warm calls, XLA's temporary memory for the compiled program
(``memory_analysis().temp_size_in_bytes``), and the largest relative difference of the
gradient from the forward one. Forward sensitivities cost grows with the number of
parameters (one tangent each); the adjoints' cost does not: the crossover is where the
adjoint becomes cheaper.

    python benchmarks/ode_sensitivities.py [--sizes 5 20 50 100 200] [--reps 3]

Run timings alone on the machine; the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMES = [0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30]


def write_chain(folder: Path, n: int) -> Path:
    """A PEtab problem of a chain of n reactions (n + 1 species)."""
    import numpy as np
    import pandas as pd

    species = "".join(
        f'<species id="X{i}" compartment="c" initialConcentration="{1.0 if i == 0 else 0.0}" '
        'hasOnlySubstanceUnits="false" boundaryCondition="false" constant="false"/>'
        for i in range(n + 1)
    )
    params = "".join(f'<parameter id="k{i}" value="1" constant="true"/>' for i in range(1, n + 1))
    mathml = 'xmlns="http://www.w3.org/1998/Math/MathML"'
    reactions = "".join(
        f'<reaction id="r{i}" reversible="false" fast="false">'
        f'<listOfReactants><speciesReference species="X{i - 1}" stoichiometry="1" '
        'constant="true"/></listOfReactants>'
        f'<listOfProducts><speciesReference species="X{i}" stoichiometry="1" '
        'constant="true"/></listOfProducts>'
        f"<kineticLaw><math {mathml}><apply><times/><ci> c </ci><ci> k{i} </ci>"
        f"<ci> X{i - 1} </ci></apply></math></kineticLaw></reaction>"
        for i in range(1, n + 1)
    )
    (folder / "model.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1">'
        '<model id="chain"><listOfCompartments><compartment id="c" spatialDimensions="3" '
        'size="1" constant="true"/></listOfCompartments>'
        f"<listOfSpecies>{species}</listOfSpecies><listOfParameters>{params}</listOfParameters>"
        f"<listOfReactions>{reactions}</listOfReactions></model></sbml>"
    )
    rng = np.random.default_rng(n)
    rates = 10 ** rng.uniform(0.0, 0.5, n)  # fast enough that the last species rises
    observed = {"first": "X0", "middle": f"X{(n + 1) // 2}", "last": f"scale * X{n}"}
    pd.DataFrame(
        {
            "observableId": list(observed),
            "observableFormula": list(observed.values()),
            "noiseFormula": ["0.05"] * 3,
        }
    ).to_csv(folder / "observables.tsv", sep="\t", index=False)
    pd.DataFrame({"conditionId": ["c0"]}).to_csv(folder / "conditions.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "parameterId": [f"k{i}" for i in range(1, n + 1)] + ["scale"],
            "parameterScale": "log10",
            "lowerBound": 1e-3,
            "upperBound": 1e3,
            "nominalValue": list(rates) + [2.0],
            "estimate": 1,
        }
    ).to_csv(folder / "parameters.tsv", sep="\t", index=False)
    rows = [
        {"observableId": o, "simulationConditionId": "c0", "time": t, "measurement": m}
        for o in observed
        for t, m in zip(TIMES, rng.uniform(0.0, 1.0, len(TIMES)), strict=True)
    ]
    pd.DataFrame(rows).to_csv(folder / "measurements.tsv", sep="\t", index=False)
    (folder / "problem.yaml").write_text(
        "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n"
        "- condition_files: [conditions.tsv]\n  measurement_files: [measurements.tsv]\n"
        "  observable_files: [observables.tsv]\n  sbml_files: [model.xml]\n"
    )
    return folder / "problem.yaml"


def measure(n: int, reps: int) -> list[dict]:
    import diffrax as dfx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from invcal.ode import petab
    from invcal.ode.petab.problem import _value_and_grad_jit

    out = []
    with tempfile.TemporaryDirectory() as tmp, jax.enable_x64(True):
        problem = petab.load(
            write_chain(Path(tmp), n), solver=dfx.Tsit5(), rtol=1e-8, atol=1e-10, check=False
        )
        x = jnp.asarray(problem.x_nominal)
        ref = None
        for method in (petab.Forward(), petab.Adjoint(), petab.Checkpointed()):
            t0 = time.perf_counter()
            compiled = _value_and_grad_jit.lower(problem, x, method).compile()
            compile_s = time.perf_counter() - t0
            memory = compiled.compiled.memory_analysis()
            temp = None if memory is None else int(memory.temp_size_in_bytes)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                (_, ok), g = jax.block_until_ready(compiled(problem, x, method))
                times.append(time.perf_counter() - t0)
            assert bool(np.all(ok)), f"solve failed ({n} reactions, {method})"
            g = np.asarray(g)
            ref = g if ref is None else ref
            rel = float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))
            row = {
                "reactions": n,
                "parameters": len(problem.parameter_ids),
                "method": type(method).__name__,
                "compile_s": round(compile_s, 2),
                "gradient_s": round(statistics.median(times), 4),
                "temp_bytes": temp,
                "max_rel_diff_vs_forward": rel,
            }
            print(
                f"{row['parameters']:>10} {row['method']:>13} {row['compile_s']:>9.1f} "
                f"{row['gradient_s']:>10.4f} {temp if temp is not None else '-':>12} {rel:>10.1e}",
                flush=True,
            )
            out.append(row)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50, 100, 200])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    import jax

    print(
        f"{'parameters':>10} {'method':>13} {'compile s':>9} {'gradient s':>10} "
        f"{'temp bytes':>12} {'rel. diff':>10}"
    )
    rows = []
    for n in args.sizes:
        rows += measure(n, args.reps)
    crossover = None
    for n in args.sizes:
        by = {r["method"]: r["gradient_s"] for r in rows if r["reactions"] == n}
        if by["Adjoint"] < by["Forward"] or by["Checkpointed"] < by["Forward"]:
            crossover = n + 1
            break
    print(f"crossover (first size where an adjoint beats forward): {crossover} parameters")
    result = {
        "benchmark": "ode_sensitivities",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
        "solver": "Tsit5, rtol 1e-8, atol 1e-10",
        "reps": args.reps,
        "rows": rows,
        "crossover_parameters": crossover,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "ode_sensitivities.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
