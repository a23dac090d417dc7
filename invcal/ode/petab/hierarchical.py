r"""Hierarchical optimization of a PEtab problem: observation parameters solved inside.

Many PEtab problems measure relative quantities: an observable y = s·h(x) + b with a
scaling s and an offset b per observable (or per experiment), and a noise σ per
observable. For fixed dynamic parameters θ, the negative log-likelihood is, in those
*observation parameters* η = (s, b, σ), a weighted least-squares problem with a closed-form
minimum (Loos, Krause & Hasenauer 2018, "Hierarchical optimization for the efficient
parametrization of ODE models", Bioinformatics 34:4266; Schmiester et al. 2020, "Efficient
parameterization of large-scale dynamic models based on relative measurements",
Bioinformatics 36:594). The outer problem is then over θ alone:

    J̃(θ) = J(θ, η*(θ)),   η*(θ) = argmin_η J(θ, η).

**Inner solutions** (normal noise unless said): the parameters that enter y linearly (every
observable formula affine in them: y = a + Σₖ ηₖ gₖ with a, gₖ free of η) solve the weighted
linear least-squares problem min Σⱼ wⱼ (mⱼ − aⱼ − Gⱼη)², wⱼ = 1/σⱼ², by its normal
equations (a least-squares solve: a scaling never seen is left at 0 with zero weight); a
noise parameter σ_q (noiseFormula exactly its placeholder) is the RMS residual of its
measurements, σ_q*² = Σⱼ rⱼ²/n_q (Laplace noise: the mean absolute residual), r in the
observable's transformed scale. The linear parameters come first: when their measurements
share one estimated σ_q, the weights are equal and drop out.

**Gradient** (envelope theorem): ∂J/∂η = 0 at η*, so dJ̃/dθ = ∂J/∂θ(θ, η*(θ)): η* is
computed from the simulation under ``jax.lax.stop_gradient`` and inserted into the
likelihood, whose gradient in θ then comes from any sensitivity method. This is the
implicit-function-theorem hypergradient with its second term identically zero.

**Which parameters are inner.** pyPESTO's PEtab extension: a parameter-table column
``parameterType`` with ``scaling``, ``offset`` or ``sigma``; each declared parameter is checked
and refused in one line if it does not have that form. Without the column, every estimated
parameter that appears only in measurement-table overrides (observableParameters,
noiseParameters: not in the model, the condition table or a formula) and has one of these
forms is inner. Limits (refused, or left outer when detected): linear parameters of log- or
log10-transformed or Laplace observables; a linear parameter whose measurements mix noise
parameters; σ formulas other than the bare placeholder. The closed form ignores the
inner parameters' bounds (as pyPESTO does); a value outside them is reported.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from .errors import PEtabError
from .problem import PEtabProblem, _check_sensitivities, _log_density, _scale
from .solve import observe, simulate

__all__ = ["HierarchicalProblem", "hierarchical_problem"]

_TYPES = ("scaling", "offset", "sigma")


@dataclasses.dataclass(frozen=True)
class _Use:
    """Where an estimated parameter fills a placeholder: observable group, kind, column."""

    group: int
    kind: str  # "observable" or "noise"
    column: int


class HierarchicalProblem(eqx.Module):
    """A PEtab problem split into outer (dynamic) parameters and inner observation
    parameters (module docstring). Made by :func:`hierarchical_problem`.

    ``outer`` / ``inner``: indices into the problem's parameter vector; ``types``: the
    inner parameters' types (``scaling``, ``offset``, ``sigma``); ``lower``/``upper``: the
    outer parameters' bounds on their scales. :meth:`value_and_gradient` of the outer
    vector; :meth:`evaluate` also gives the inner optimum, :meth:`full_x` the whole vector.
    """

    problem: PEtabProblem
    outer: tuple = eqx.field(static=True)
    inner: tuple = eqx.field(static=True)
    types: tuple = eqx.field(static=True)
    dummy: np.ndarray  # the full x with inner entries at a harmless value
    # per observable group, as nested tuples (static: their values decide the program):
    # (R, K_lin) bool: row uses linear parameter k; (R, K_sig) bool: row's σ is inner σ k;
    # (R,) bool: the row's σ is an inner σ (its least-squares weight drops out)
    linear_masks: tuple = eqx.field(static=True)
    sigma_masks: tuple = eqx.field(static=True)
    unit_weight: tuple = eqx.field(static=True)

    @property
    def parameter_ids(self) -> tuple:
        return tuple(self.problem.parameter_ids[i] for i in self.outer)

    @property
    def inner_ids(self) -> tuple:
        return tuple(self.problem.parameter_ids[i] for i in self.inner)

    @property
    def lower(self) -> np.ndarray:
        return self.problem.lower[list(self.outer)]

    @property
    def upper(self) -> np.ndarray:
        return self.problem.upper[list(self.outer)]

    def value_and_gradient(self, z, *, sensitivities=None):
        """(J̃(z), ∇J̃(z)) for the outer vector z, float64; raises RuntimeError where a
        solve fails or the value or gradient is not finite."""
        value, grad, ok, _ = self.evaluate(z, _check_sensitivities(sensitivities))
        if not ok:
            raise RuntimeError(
                f"{self.problem.file}: the hierarchical objective or its gradient is not "
                "finite at these parameters (a failed ODE solve, or an inner optimum at σ = 0)."
            )
        return value, grad

    def evaluate(self, z, sensitivities, *, model_values: bool = False):
        """(J̃(z) or inf, ∇J̃(z), ok, inner optimum as a dict id → linear-scale value);
        with ``model_values``, also the model values y of each observable's measurements
        (a list of arrays, in ``problem.rows``' order)."""
        with jax.enable_x64(True):
            try:
                (value, (ok, eta, ys)), grad = _value_and_grad_jit(
                    self, jnp.asarray(np.asarray(z, np.float64)), sensitivities
                )
            except eqx.EquinoxRuntimeError:  # a check inside the solve: a failed solve
                n = len(self.outer)
                value, grad, ok, eta, ys = np.inf, np.full(n, np.nan), False, None, []
            else:
                value, grad, eta = float(value), np.asarray(grad), np.asarray(eta)
                ys = [np.asarray(y) for y in ys]
        if eta is None:
            out = np.inf, grad, False, dict.fromkeys(self.inner_ids, np.nan)
            return (*out, None) if model_values else out
        ok = bool(np.all(ok)) and np.isfinite(value) and bool(np.all(np.isfinite(grad)))
        inner = dict(zip(self.inner_ids, eta.tolist(), strict=True))
        out = (value if ok else np.inf), grad, ok, inner
        return (*out, ys) if model_values else out

    def full_x(self, z, inner: dict) -> np.ndarray:
        """The problem's whole parameter vector (on the scales) at outer z and the inner
        values ``inner`` (from :meth:`evaluate`); NaN where an inner value has no image on
        its scale (a scaling ≤ 0 on a log scale)."""
        x = np.array(self.dummy, dtype=np.float64)
        x[list(self.outer)] = np.asarray(z, np.float64)
        for i in self.inner:
            value, scale = inner[self.problem.parameter_ids[i]], self.problem.scales[i]
            x[i] = _scale(value, scale) if (scale == "lin" or value > 0) else np.nan
        return x


def _objective(h: HierarchicalProblem, z, sensitivities):
    """(J̃(z), (ok, η*, model values)): η* by the closed forms, held constant for the
    derivative."""
    problem = h.problem
    n_lin = sum(1 for t in h.types if t != "sigma")
    lin_idx = np.array([i for i, t in zip(h.inner, h.types, strict=True) if t != "sigma"], int)
    sig_idx = np.array([i for i, t in zip(h.inner, h.types, strict=True) if t == "sigma"], int)
    x = jnp.asarray(h.dummy, z.dtype).at[np.array(h.outer, int)].set(z)
    sim = simulate(problem, x, sensitivities)
    v = jax.lax.stop_gradient(sim.v)
    ys = jax.lax.stop_gradient(sim.ys)
    frozen = sim._replace(v=v, ys=ys, p=jax.lax.stop_gradient(sim.p))
    groups = range(len(problem.rows))
    # Linear parameters: weighted least squares on a (η = 0) and G (unit responses).
    if n_lin:
        v0 = v.at[lin_idx].set(0.0)
        normal = jnp.zeros((n_lin, n_lin), v.dtype)
        rhs = jnp.zeros(n_lin, v.dtype)
        for k in groups:
            mask = np.asarray(h.linear_masks[k], bool).reshape(-1, n_lin)
            if not mask.any():
                continue
            m, a, sigma = observe(problem, frozen, k, v0)
            cols = [observe(problem, frozen, k, v0.at[j].set(1.0))[1] - a for j in lin_idx]
            g = jnp.stack(cols, axis=1) * mask
            w = jnp.where(jnp.asarray(h.unit_weight[k]), 1.0, 1.0 / sigma**2)
            w = jnp.where(mask.any(axis=1), w, 0.0)
            normal = normal + (g * w[:, None]).T @ g
            rhs = rhs + (g * w[:, None]).T @ (m - a)
        # Jacobi-scaled: scalings of different observables differ by many orders of
        # magnitude (Fujita: 1e-8 and 1e5), which an unscaled least-squares cutoff drops.
        d = jnp.sqrt(jnp.diag(normal))
        d = jnp.where(d > 0, d, 1.0)
        eta = jnp.linalg.lstsq(normal / d[:, None] / d[None, :], rhs / d)[0] / d
        v = v.at[lin_idx].set(eta)
    # Noise parameters: RMS (normal) or mean absolute (Laplace) residual.
    if sig_idx.size:
        ss = jnp.zeros(sig_idx.size, v.dtype)
        count = np.zeros(sig_idx.size)
        laplace = np.zeros(sig_idx.size, bool)
        for k in groups:
            mask = np.asarray(h.sigma_masks[k], bool).reshape(-1, sig_idx.size)
            if not mask.any():
                continue
            m, y, _ = observe(problem, frozen, k, v)
            r = _residual(m, y, problem.transformations[k])
            is_laplace = problem.distributions[k] == "laplace"
            term = jnp.abs(r) if is_laplace else r**2
            ss = ss + jnp.asarray(mask, v.dtype).T @ term
            count += mask.sum(axis=0)
            laplace |= is_laplace & mask.any(axis=0)
        mean = ss / count
        v = v.at[sig_idx].set(jnp.where(laplace, mean, jnp.sqrt(mean)))
    inner = jax.lax.stop_gradient(v[np.array(h.inner, int)])
    # J(θ, η*) with η* constant: the envelope theorem's gradient.
    full = sim.v.at[np.array(h.inner, int)].set(inner)
    llh, ys = jnp.zeros((), v.dtype), []
    for k in groups:
        m, y, sigma = observe(problem, sim, k, full)
        trafo, dist = problem.transformations[k], problem.distributions[k]
        llh = llh + jnp.sum(_log_density(m, y, sigma, trafo, dist))
        ys.append(jax.lax.stop_gradient(y))
    value = jnp.where(jnp.all(sim.ok), -llh, jnp.inf)
    return value, (sim.ok, inner, ys)


def _residual(m, y, transformation):
    if transformation == "log":
        return jnp.log(m) - jnp.log(y)
    if transformation == "log10":
        return jnp.log10(m) - jnp.log10(y)
    return m - y


@eqx.filter_jit
def _value_and_grad_jit(h, z, sensitivities):
    return sensitivities.value_and_grad(lambda zz: _objective(h, zz, sensitivities), z)


# ------------------------------------------------------------------------------ set-up


def _uses(problem: PEtabProblem) -> dict:
    """Estimated parameter index → its placeholder uses, and the set used elsewhere."""
    n = len(problem.parameter_ids)
    uses = {i: [] for i in range(n)}
    for k, rows in enumerate(problem.rows):
        for kind, arr in (
            ("observable", rows.observable_parameters),
            ("noise", rows.noise_parameters),
        ):
            for col in range(arr.shape[1]):
                for i in np.unique(arr[:, col]):
                    if i < n:
                        uses[int(i)].append(_Use(k, kind, col))
    elsewhere = set(np.asarray(problem.inputs_index).ravel().tolist())
    elsewhere |= set(np.asarray(problem.pre_inputs_index).ravel().tolist())
    elsewhere |= set(np.asarray(problem.x0_index)[np.asarray(problem.x0_mask)].tolist())
    elsewhere |= set(np.asarray(problem.pre_x0_index)[np.asarray(problem.pre_x0_mask)].tolist())
    for rows in problem.rows:
        elsewhere |= set(np.asarray(rows.globals_).tolist())
    return uses, {i for i in elsewhere if i < n}


def _form(problem: PEtabProblem, i: int, uses, elsewhere) -> tuple[str | None, str]:
    """(type or None, why not) of estimated parameter i."""
    if i in elsewhere:
        return None, "it is used in the model, the condition table or a formula"
    if not uses:
        return None, "no measurement uses it"
    kinds = {u.kind for u in uses}
    if len(kinds) > 1:
        return None, "it fills both observable and noise placeholders"
    if kinds == {"noise"}:
        for u in uses:
            fn = problem.observables[u.group]
            if problem.distributions[u.group] not in ("normal", "laplace"):
                return None, f"{problem.distributions[u.group]} noise"
            if sp.simplify(fn.exprs[1] - fn.groups[4][u.column]) != 0:
                return None, (
                    f"the noiseFormula of {problem.observable_ids[u.group]!r} is not its "
                    "placeholder alone"
                )
        return "sigma", ""
    kinds = set()
    for u in uses:
        oid = problem.observable_ids[u.group]
        if problem.transformations[u.group] != "lin":
            return None, f"observable {oid!r} is {problem.transformations[u.group]}-transformed"
        if problem.distributions[u.group] != "normal":
            return None, f"observable {oid!r} has {problem.distributions[u.group]} noise"
        fn = problem.observables[u.group]
        y, noise, ph = fn.exprs[0], fn.exprs[1], fn.groups[3]
        phi = ph[u.column]
        if any(sp.simplify(sp.diff(y, phi, q)) != 0 for q in ph):
            return None, f"the observableFormula of {oid!r} is not affine in {phi}"
        if phi in noise.free_symbols:
            return None, f"the noiseFormula of {oid!r} depends on {phi}"
        kinds.add("offset" if sp.simplify(sp.diff(y, phi) - 1) == 0 else "scaling")
    return ("offset" if kinds == {"offset"} else "scaling"), ""


def hierarchical_problem(problem: PEtabProblem) -> HierarchicalProblem:
    """Split ``problem`` into outer and inner parameters (module docstring: pyPESTO's
    ``parameterType`` column if the parameter table has one, else detection). Raises
    :class:`PEtabError` in one line for a declared inner parameter of another form, and
    for a problem with no inner parameter."""
    uses, elsewhere = _uses(problem)
    declared = any(problem.parameter_types)
    inner, types = [], []
    for i, pid in enumerate(problem.parameter_ids):
        kind, why = _form(problem, i, uses[i], elsewhere)
        wanted = problem.parameter_types[i].strip().lower()
        if declared:
            if not wanted:
                continue
            if wanted not in _TYPES:
                raise PEtabError(
                    f"{problem.file}: parameter {pid!r} has parameterType {wanted!r}; "
                    f"expected one of {', '.join(_TYPES)} (or empty)."
                )
            ok = kind == wanted or (wanted in ("scaling", "offset") and kind in _TYPES[:2])
            if not ok:
                raise PEtabError(
                    f"{problem.file}: parameter {pid!r} is declared {wanted} but cannot be "
                    f"solved in closed form: {why or f'it acts as a {kind}'}."
                )
        elif kind is None:
            continue
        inner.append(i)
        types.append(wanted if declared else kind)
    if not inner:
        raise PEtabError(
            f"{problem.file}: no observation parameter (scaling, offset or sigma in the "
            "measurement table's overrides) can be solved in closed form; calibrate without "
            "hierarchical."
        )
    lin = [i for i, t in zip(inner, types, strict=True) if t != "sigma"]
    sig = [i for i, t in zip(inner, types, strict=True) if t == "sigma"]
    linear_masks, sigma_masks, unit_weight = [], [], []
    for rows in problem.rows:
        op, npar = np.asarray(rows.observable_parameters), np.asarray(rows.noise_parameters)
        lm = np.stack([(op == i).any(axis=1) for i in lin], 1) if lin else np.zeros((len(op), 0))
        sm = np.stack([(npar == i).any(axis=1) for i in sig], 1) if sig else np.zeros((len(op), 0))
        linear_masks.append(lm.astype(bool))
        sigma_masks.append(sm.astype(bool))
        unit_weight.append(sm.any(axis=1) if sig else np.zeros(len(op), bool))
    _check_separable(problem, lin, linear_masks, sigma_masks, sig)
    dummy = problem.x_nominal.copy()
    for i in inner:
        dummy[i] = 1.0 if problem.scales[i] == "lin" else 0.0
    outer = tuple(i for i in range(len(problem.parameter_ids)) if i not in inner)
    return HierarchicalProblem(
        problem=problem,
        outer=outer,
        inner=tuple(inner),
        types=tuple(types),
        dummy=dummy,
        linear_masks=tuple(_frozen(a) for a in linear_masks),
        sigma_masks=tuple(_frozen(a) for a in sigma_masks),
        unit_weight=tuple(_frozen(a) for a in unit_weight),
    )


def _frozen(a: np.ndarray):
    """A bool array as nested tuples (hashable, for a static field)."""
    return tuple(_frozen(r) for r in a) if a.ndim > 1 else tuple(bool(b) for b in a)


def _check_separable(problem, lin, linear_masks, sigma_masks, sig):
    """Each linear parameter's measurements: all with known noise, or all with the same
    inner σ (then the weights are equal and the least squares do not need σ)."""
    for j, i in enumerate(lin):
        noise = set()
        for lm, sm in zip(linear_masks, sigma_masks, strict=True):
            rows = lm[:, j]
            if not rows.any():
                continue
            for r in np.flatnonzero(rows):
                hit = np.flatnonzero(sm[r])
                noise.add(int(sig[hit[0]]) if hit.size else -1)
        if len(noise) > 1:
            raise PEtabError(
                f"{problem.file}: the measurements of {problem.parameter_ids[i]!r} have "
                "different noise parameters (some estimated as sigma, or several): its "
                "least squares are not separable; mark one of them with parameterType ''."
            )
