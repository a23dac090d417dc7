"""One thread for every library and the process pinned to one core, for the timing benchmarks.

Import this module before numpy and jax load (``import one_core`` at the top of a script in
``benchmarks/``, which Python puts on the path when it runs the script): the settings are read
when those libraries start.

- BLAS/OpenMP: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` default
  to 1 (the machine is shared; the peers, scikit-image's Cython loops and NumPy, run on one).
- XLA's CPU pool: ``--xla_cpu_multi_thread_eigen=false``; XLA's CPU runtime also splits large
  loop fusions over a thread pool as wide as the machine (no XLA flag turns that off), so the
  whole process, both solvers, is pinned to one core.

``INVCAL_BENCH_THREADS=default`` leaves XLA's pool and the affinity as a user gets them.
"""

from __future__ import annotations

import os

#: "one" (the default) or "default" (XLA's pool and the affinity as a user gets them)
THREADS = os.environ.get("INVCAL_BENCH_THREADS", "one")

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if THREADS == "one":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    ).strip()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def record(omp: bool = True) -> dict:
    """The thread settings in force, for a benchmark's JSON (``omp``: with
    ``OMP_NUM_THREADS``)."""
    out = {
        "xla": THREADS,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    if omp:
        out["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    return out
