"""The ℓ1 least-squares model: operators (a dense matrix or a matrix-free map), the
forward–backward fixed point, the duality gap, λ_max and the problem builder (see the
package docstring, :mod:`invcal.sparse`)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..batching import map_batched
from ..problem import Problem
from ..prox import prox_l1, prox_l1_nonneg
from ..space import Space
from ..typed_data import AbstractData

__all__ = [
    "AbstractLinearMap",
    "Batched",
    "ForwardBackward",
    "LassoData",
    "check_design",
    "duality_gap",
    "lambda_max",
    "lasso_problem",
    "matvec",
    "primal",
    "rmatvec",
]


# --------------------------------------------------------------------------------------
# Operators: a dense matrix or a matrix-free map
# --------------------------------------------------------------------------------------
class AbstractLinearMap(eqx.Module):
    """A matrix-free linear map A: ℝᵖ → ℝⁿ given by ``mv`` (A x) and ``rmv`` (Aᵀ r).

    Subclasses set ``shape = (n, p)``. The working-set solver and the support-restricted
    hypergradient gather columns of dense matrices; for a map they apply it to vectors that
    vanish off the working set instead (correct, but each product costs a full transform).
    """

    shape: tuple[int, int] = eqx.field(static=True)

    @abc.abstractmethod
    def mv(self, x):
        """A x."""

    @abc.abstractmethod
    def rmv(self, r):
        """Aᵀ r."""


def matvec(A, x):
    """A x for a dense matrix or an :class:`AbstractLinearMap`."""
    return A.mv(x) if isinstance(A, AbstractLinearMap) else A @ x


def rmatvec(A, r):
    """Aᵀ r for a dense matrix or an :class:`AbstractLinearMap`.

    For a matrix and a vector r it is written r·A, a contraction over A's rows: XLA on CPU
    runs ``A.T @ r`` as a transpose and a product, 2.4–3.9× slower (one thread, 1000
    Landweber steps u − τAᵀ(Au − y): 560×280 0.104 → 0.027 ms per step, 560×5000
    2.49 → 1.05 ms)."""
    if isinstance(A, AbstractLinearMap):
        return A.rmv(r)
    return r @ A if jnp.ndim(r) == 1 else A.T @ r


def _shape(A) -> tuple[int, int]:
    return tuple(A.shape[-2:])


# --------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------
class LassoData(AbstractData):
    r"""The data of an ℓ1 least-squares problem, typed: the design ``A`` (an (n, p) matrix or
    an :class:`AbstractLinearMap`), the measurements ``y`` (n,), ``lipschitz`` L ≥ ‖A‖₂² (the
    forward–backward step is 1/L), and ``extra``: what the criterion and the weights read
    (validation rows, fold weights, SURE's probes), by name.

    The solvers read the fields; criteria read it as a mapping (``data["A_val"]``, and
    ``data["A"]`` is the field), so a criterion written for a dict of data works unchanged.
    With a leading batch axis on every leaf it holds K problems (folds, SURE copies).
    :func:`lasso_problem` builds it from a dict."""

    A: object
    y: jax.Array
    lipschitz: jax.Array
    extra: dict = eqx.field(default_factory=dict)

    FIELDS = ("A", "y", "lipschitz")


def lasso_fields(data):
    """(A, y, L) of a :class:`LassoData`, or of a dict with those keys (a problem built by
    hand around :class:`ForwardBackward`)."""
    if isinstance(data, LassoData):
        return data.A, data.y, data.lipschitz
    return data["A"], data["y"], data["lipschitz"]


# --------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------
def _default_weights(theta, data):
    return theta["lam"]


class ForwardBackward(eqx.Module):
    r"""T(x, θ) = prox_{η w(θ)‖·‖₁}(x − η Aᵀ(Ax − y)), η = 1/L, with A, y and L ≥ ‖A‖₂²
    from the :class:`LassoData` and the ℓ1 weights ``weights(theta, data)``
    (a scalar or one per coefficient). With ``nonneg`` the prox is the one-sided threshold.
    """

    weights: Callable = eqx.field(static=True, default=_default_weights)
    nonneg: bool = eqx.field(static=True, default=False)

    def penalty(self, theta, data, p: int):
        """The weights w(θ) broadcast to shape (p,)."""
        return jnp.broadcast_to(jnp.asarray(self.weights(theta, data)), (p,))

    def __call__(self, x, theta, data):
        A, y, L = lasso_fields(data)
        w = self.penalty(theta, data, x.shape[-1])
        z = x - rmatvec(A, matvec(A, x) - y) / L
        prox = prox_l1_nonneg if self.nonneg else prox_l1
        return prox(z, 1.0 / L, w)


class Batched(eqx.Module):
    """``fn(x, θ, data)`` mapped over a leading axis of x and of every data leaf, θ shared.

    The building block of K-fold cross-validation and finite-difference SURE
    (:mod:`invcal.criteria`): K independent inner problems, one hyperparameter."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, x, theta, data):
        return map_batched(self.fn, x, theta, data, in_axes=(0, None, 0))


def support(x, theta, data):
    """The active set of an ℓ1 solution: x ≠ 0."""
    return x != 0


def _unbatch(fp):
    """(the ForwardBackward inside, batched?) or (None, False)."""
    if isinstance(fp, Batched):
        inner, _ = _unbatch(fp.fn)
        return inner, True
    if isinstance(fp, ForwardBackward):
        return fp, False
    return None, False


def primal(x, w, A, y, nonneg=False):
    """P(x) = ½‖Ax − y‖² + Σ wⱼ|xⱼ|."""
    r = y - matvec(A, x)
    return 0.5 * jnp.vdot(r, r) + jnp.sum(w * jnp.abs(x))


def _gap_from_residual(x, r, corr, w, y, nonneg):
    ratio = corr / w if nonneg else jnp.abs(corr) / w
    s = jnp.maximum(1.0, jnp.max(ratio))
    P = 0.5 * jnp.vdot(r, r) + jnp.sum(w * jnp.abs(x))
    D = 0.5 * jnp.vdot(y, y) - 0.5 * jnp.sum((y - r / s) ** 2)
    return P - D


def duality_gap(x, theta, data, *, fb: ForwardBackward | None = None):
    r"""P(x) − D(ν) ≥ P(x) − P(x*) ≥ 0 for the problem in ``data`` (see the module note)."""
    fb = ForwardBackward() if fb is None else fb
    A, y = (data.A, data.y) if isinstance(data, LassoData) else (data["A"], data["y"])
    w = fb.penalty(theta, data, x.shape[-1])
    r = y - matvec(A, x)
    return _gap_from_residual(x, r, rmatvec(A, r), w, y, fb.nonneg)


def lambda_max(A, y, *, nonneg: bool = False, weights=None) -> float:
    r"""‖Aᵀy‖_∞ (max Aᵀy with ``nonneg``): the smallest λ with x*(λ) = 0. With fixed
    per-coefficient ``weights`` c (penalty λ Σⱼ cⱼ|xⱼ|): maxⱼ |Aⱼᵀy| / cⱼ."""
    c = np.asarray(rmatvec(A, jnp.asarray(y)))
    c = c if nonneg else np.abs(c)
    if weights is not None:
        c = c / np.asarray(weights, dtype=float)
    return float(np.max(c))


def _lipschitz(A, key=0, iters: int = 100) -> float:
    """An upper bound on ‖A‖₂²: to machine precision (+1e-10) for matrices, power iteration
    (+2%) for matrix-free maps."""
    n, p = _shape(A)
    if not isinstance(A, AbstractLinearMap):
        # The Gram matrix of the smaller side (one matrix product) and its top eigenvalue by
        # Lanczos: faster than the hundreds of products power iteration on A needs when the
        # top singular values are close (random designs). On the host the product is
        # NumPy's, in float64 (BLAS: 700×5000 on one thread 50 ms, against 114 ms for XLA's
        # dot; a JAX array on the CPU is read without a copy); on an accelerator it stays
        # on the device.
        if isinstance(A, jax.Array) and {d.platform for d in A.devices()} != {"cpu"}:
            G = np.asarray(_gram_jit(A))
        else:
            G = _gram(np.asarray(A, dtype=np.float64))
        return _top_eigenvalue(G) * (1 + 1e-10)
    v = jax.random.normal(jax.random.PRNGKey(key), (p,))

    def body(_, v):
        u = rmatvec(A, matvec(A, v))
        return u / jnp.linalg.norm(u)

    v = jax.lax.fori_loop(0, iters, body, v / jnp.linalg.norm(v))
    return float(jnp.linalg.norm(matvec(A, v)) ** 2) * 1.02


def _gram(M):
    return M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M


_gram_jit = jax.jit(_gram)


def _top_eigenvalue(G) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite matrix. Lanczos (ARPACK, to
    machine precision) for large ones: on a 700×700 Gram it takes 0.03 s against 0.7 s for
    the full eigendecomposition (jnp.linalg.eigvalsh) and agrees with it to 4e-15 relative."""
    if G.shape[0] > 64:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        try:
            v0 = np.random.default_rng(0).standard_normal(G.shape[0])  # reproducible start
            top = eigsh(G, k=1, which="LA", return_eigenvectors=False, tol=0, v0=v0)
            return float(top[0])
        except ArpackNoConvergence:
            pass
    return float(np.linalg.eigvalsh(G)[-1])


def check_design(A, y, *, where: str = "lasso_problem") -> None:
    """Shapes and finiteness of (A, y), for one problem or a batch; raises ``ValueError``."""
    if isinstance(A, AbstractLinearMap):
        n, p = A.shape
        batch = tuple(np.shape(y)[:-1]) if np.ndim(y) == 2 else ()
    else:
        a_shape = np.shape(A)
        if len(a_shape) not in (2, 3):
            raise ValueError(
                f"{where}: A must be a matrix of shape (n, p) (or (K, n, p) for a batch) or an "
                f"invcal.sparse.AbstractLinearMap; got an array of shape {a_shape}."
            )
        batch, (n, p) = a_shape[:-2], a_shape[-2:]
        arr = np.asarray(A)
        if not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{where}: A contains NaN or inf ({int(np.sum(~np.isfinite(arr)))} of {arr.size} "
                "entries); clean or impute the design before building the problem."
            )
    y_shape = np.shape(y)
    if y_shape != (*batch, n):
        raise ValueError(
            f"{where}: A has shape {(*batch, n, p)} (n={n} measurements, p={p} unknowns) but y "
            f"has shape {y_shape}; y must have shape {(*batch, n)}, one entry per row of A."
        )
    yy = np.asarray(y)
    if not np.all(np.isfinite(yy)):
        raise ValueError(
            f"{where}: y contains NaN or inf ({int(np.sum(~np.isfinite(yy)))} of {yy.size} "
            "entries); drop or impute those measurements first."
        )


def lasso_problem(
    space: Space,
    criterion: Callable,
    data: Mapping,
    *,
    weights: Callable | None = None,
    nonneg: bool = False,
    batched: bool = False,
    x0=None,
    name: str = "lasso",
) -> Problem:
    r"""Build the bilevel problem min_θ E(x*(θ), θ) with x*(θ) the (weighted) Lasso solution.

    **Arguments**

    - ``space``: the hyperparameters; ``criterion``: E(x, θ, data).
    - ``data``: a dict (or a :class:`LassoData`) with ``"A"`` (an (n, p) matrix or an
      :class:`AbstractLinearMap`) and ``"y"`` (n,), plus whatever the criterion reads.
      ``"lipschitz"`` (≥ ‖A‖₂²) is computed if absent. With ``batched=True`` every leaf has
      a leading batch axis (folds). The problem holds it as a :class:`LassoData`.
    - ``weights``: ``weights(theta, data)`` → the ℓ1 weights (scalar or (p,)), default
      ``theta["lam"]``; they must be positive.
    - ``nonneg``: add the constraint x ≥ 0.

    Shapes and NaN/inf are checked here, before any solve.
    """
    if not isinstance(data, Mapping) or "A" not in data or "y" not in data:
        raise ValueError(
            "lasso_problem: data must be a dict with the design 'A' (n, p) and the measurements "
            f"'y' (n,); got {type(data).__name__}"
            + (f" with keys {sorted(data)}" if isinstance(data, Mapping) else "")
            + "."
        )
    A, y = data["A"], data["y"]
    check_design(A, y)
    if batched and not isinstance(A, AbstractLinearMap) and np.ndim(A) != 3:
        raise ValueError("lasso_problem(batched=True) needs A of shape (K, n, p).")
    if not batched and not isinstance(A, AbstractLinearMap) and np.ndim(A) != 2:
        raise ValueError(
            f"lasso_problem: A has shape {np.shape(A)}; pass batched=True for a stack of problems."
        )
    extra = {k: v for k, v in data.items() if k not in LassoData.FIELDS}
    A = A if isinstance(A, AbstractLinearMap) else jnp.asarray(A)
    lip = data.get("lipschitz")
    if lip is None:
        if batched:
            lip = [
                _lipschitz(jax.tree_util.tree_map(lambda a, i=i: a[i], A))
                for i in range(np.shape(y)[0])
            ]
        else:
            lip = _lipschitz(A)
    data = LassoData(A=A, y=jnp.asarray(y), lipschitz=jnp.asarray(lip), extra=extra)
    fb = ForwardBackward(weights=_default_weights if weights is None else weights, nonneg=nonneg)
    n, p = _shape(A)
    if x0 is None:
        x0 = jnp.zeros((np.shape(y)[0], p) if batched else (p,))
    return Problem(
        space=space,
        criterion=criterion,
        x0=x0,
        data=data,
        fixed_point=Batched(fb) if batched else fb,
        support=support,
        symmetric=True,
        name=name,
    )


def _require_lasso(problem, who: str):
    fb, batched = _unbatch(problem.fixed_point)
    if fb is None:
        raise ValueError(
            f"{who} works on ℓ1 least-squares problems built by invcal.sparse.lasso_problem "
            f"(fixed_point=ForwardBackward); problem {problem.name!r} has fixed_point="
            f"{problem.fixed_point!r}. Use invcal.FISTA() / invcal.Implicit(active_set=True) "
            "for other problems."
        )
    return fb, batched


def _safe_sq(y):
    yy = jnp.vdot(y, y)
    return jnp.where(yy > 0, yy, 1.0)
