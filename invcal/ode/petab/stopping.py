r"""When a local optimization of a PEtab problem may stop: a scale-free convergence test.

L-BFGS-B stops when the largest entry of the projected gradient is below ``gtol`` (1e-5)
or when an iteration decreases the objective by less than ``ftol``·|f|. Both tests assume
that the objective is curved on the scale of one unit of the parameters. Where it is not,
they fire far from any minimum: on Boehm_JProteomeRes2014, 68 of 100 Latin-hypercube
starts begin on a plateau (objective 249.746) where the simulated observables hardly move
with the parameters, and the gradient's largest entry is 5e-6 (median; 1e-14 to 4e-4 on
eleven of them; benchmarks/petab_multistart_checks.py): L-BFGS-B stopped where those starts
began.

**The test** is the relative offset criterion of Bates & Watts (1981, "A relative offset
orthogonality convergence criterion for nonlinear least squares", Technometrics 23:179),
the convergence test of R's ``nls``. With the weighted residuals rⱼ = (h(mⱼ) − h(yⱼ))/σⱼ
of the normal-noise measurements (h the observable's transformation, σ held at its value
at the point) and their Jacobian J in the free parameters,

    c = (‖P r‖ / √p) / (‖r − P r‖ / √(n − p)),     P the orthogonal projection onto range(J),

compares the part of the residual that the model's local sensitivities can still explain
(what a Gauss–Newton step would remove) with the rest. It does not change when J is scaled
(a plateau's small sensitivities, or the parameters' units): at a least-squares stationary
point Jᵀr = 0 and c = 0, while on a plateau c stays of order one. Bates & Watts' 1e-3 is
the threshold (inference is unaffected below it).

**What follows.** A stop of L-BFGS-B is accepted when c ≤ 1e-3. Otherwise a Gauss–Newton
step δ = −J⁺r (least squares; on a plateau it is long, as fides' and Data2Dynamics'
trust-region Gauss–Newton steps are where the sensitivities are small) is tried, first
shortened to the width of the box, projected onto the bounds and halved until the objective
decreases by Armijo's rule against the Gauss–Newton prediction ½‖P r‖² (at most 12
halvings); L-BFGS-B restarts from the point reached (at most 10 such steps per start, then
the start ends as ``max_iterations``). A stop where no such step decreases the objective is
accepted, with c in its message: neither L-BFGS-B nor the Gauss–Newton direction found a
decrease there.
Free parameters: those not held at a bound by the gradient (the projected-gradient active
set); in a hierarchical problem the inner scaling and offset parameters are free too, so
that the step in the outer parameters is the Gauss–Newton step of the variable-projection
functional (Golub & Pereyra 1973) in Kaufman's (1975) approximation, and noise parameters
have no column (σ is held). Laplace noise has no least-squares
form: a problem with a Laplace observable keeps L-BFGS-B's own tests.

The Jacobian comes from forward-mode differentiation of the simulation with forward
sensitivities (:class:`~.sensitivities.Forward`), one compiled program per problem, and is
evaluated only where L-BFGS-B stops.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import petab.v1.C as C

from .sensitivities import Forward
from .solve import observe, simulate

__all__ = ["RELATIVE_OFFSET", "relative_offset_step"]

RELATIVE_OFFSET = 1e-3  # Bates & Watts (1981)
_HALVINGS = 12  # the step no shorter than 1/4096 of its first length
_ARMIJO = 1e-4


def _residuals(problem, x):
    """(weighted residuals of the normal-noise measurements, all solves succeeded)."""
    sim = simulate(problem, x, Forward())
    rs = []
    pairs = zip(problem.transformations, problem.distributions, strict=True)
    for k, (trafo, _) in enumerate(pairs):
        m, y, sigma = observe(problem, sim, k)
        if trafo == C.LOG:
            r = jnp.log(m) - jnp.log(y)
        elif trafo == C.LOG10:
            r = jnp.log10(m) - jnp.log10(y)
        else:
            r = m - y
        rs.append(r / jax.lax.stop_gradient(sigma))
    return jnp.concatenate(rs), jnp.all(sim.ok)


@eqx.filter_jit
def _jacobian(problem, x):
    r, ok = _residuals(problem, x)
    jac = jax.jacfwd(lambda y: _residuals(problem, y)[0])(x)
    return r, jac, ok


def applies(problem) -> bool:
    """Whether the test applies: every observable has normal noise."""
    return all(d == C.NORMAL for d in problem.distributions)


def relative_offset(r: np.ndarray, jac: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(c, the Gauss–Newton step −J⁺r, the predicted decrease ½‖P r‖²) for residuals r
    and their Jacobian (columns: the free parameters)."""
    n, p = jac.shape
    if p == 0 or n <= p:
        return 0.0, np.zeros(p), 0.0
    step, *_ = np.linalg.lstsq(jac, -r, rcond=None)
    explained = -jac @ step  # P r
    rest = np.linalg.norm(r - explained) / np.sqrt(n - p)
    c = (np.linalg.norm(explained) / np.sqrt(p)) / max(rest, np.finfo(float).tiny)
    return float(c), step, 0.5 * float(explained @ explained)


def relative_offset_step(fun, z, f, lower, upper, *, tolerance: float = RELATIVE_OFFSET):
    """At a point ``z`` (the optimizer's coordinates, objective ``f``) where L-BFGS-B
    stopped: ``(None, c)`` if the stop stands (c ≤ tolerance, the test does not apply, the
    Jacobian is not finite, or no Gauss–Newton step decreases the objective), else
    ``(z_new, c)`` with f(z_new) < f by Armijo's rule (module docstring). ``fun`` is the
    multistart's objective (counts evaluations; ``fun.hierarchy``, ``fun.inner``)."""
    problem, hierarchy = fun.problem, fun.hierarchy
    if not applies(problem):
        return None, 0.0
    z = np.asarray(z, np.float64)
    if hierarchy is not None:
        if fun.inner is None:
            return None, 0.0
        x = hierarchy.full_x(z, fun.inner)
        outer = np.asarray(hierarchy.outer)
        inner_free = [
            i for i, t in zip(hierarchy.inner, hierarchy.types, strict=True) if t != "sigma"
        ]
    else:
        x, outer, inner_free = z, np.arange(z.size), []
    with jax.enable_x64(True):
        r, jac, ok = _jacobian(problem, jnp.asarray(x, jnp.float64))
        r, jac = np.asarray(r, np.float64), np.asarray(jac, np.float64)
    if not bool(ok) or not (np.all(np.isfinite(r)) and np.all(np.isfinite(jac))):
        return None, 0.0
    g = jac[:, outer].T @ r  # the gradient of ½‖r‖² in the outer parameters
    held = ((z <= lower) & (g > 0)) | ((z >= upper) & (g < 0))
    free_outer = np.flatnonzero(~held)
    columns = np.concatenate([outer[free_outer], np.asarray(inner_free, int)]).astype(int)
    columns = columns[np.linalg.norm(jac[:, columns], axis=0) > 0]  # σ: no column
    c, step, predicted = relative_offset(r, jac[:, columns])
    if c <= tolerance or predicted <= 0.0:
        return None, c
    position = {int(j): i for i, j in enumerate(columns)}
    delta = np.array([step[position[j]] if j in position else 0.0 for j in outer])
    width = float(np.max(upper - lower))
    longest = float(np.max(np.abs(delta)))
    if not np.isfinite(longest) or longest == 0.0:
        return None, c
    alpha = min(1.0, width / longest)  # no longer than the box is wide
    for _ in range(_HALVINGS):
        trial = np.clip(z + alpha * delta, lower, upper)
        if np.any(trial != z):
            f_trial, _ = fun(trial)
            # the Gauss–Newton model decreases by at least min(α, 1)·½‖P r‖² along αδ
            if np.isfinite(f_trial) and f_trial < f - _ARMIJO * alpha * predicted:
                return trial, c
        alpha *= 0.5
    return None, c
