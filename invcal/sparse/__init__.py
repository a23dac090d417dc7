r"""ℓ1-regularized least squares (the Lasso / basis-pursuit denoising) on the engine.

The inner problem, with one weight per coefficient (a single λ broadcasts),

    x*(θ) = argmin_x  P(x) = ½‖Ax − y‖² + Σⱼ wⱼ(θ)|xⱼ|   (+ ι{x ≥ 0} with ``nonneg``),

(Tibshirani 1996; Chen, Donoho & Saunders 1998) is characterized by the forward–backward
fixed point x = T(x) = prox_{ηw‖·‖₁}(x − ηAᵀ(Ax − y)), η = 1/L, L ≥ ‖A‖₂² (Beck & Teboulle
2009). This module provides

* :class:`LassoData` — the problem's data, typed (A, y, the Lipschitz bound L, and the
  criterion's entries by name);
* :class:`ForwardBackward` — T as a callable the engine's solvers and methods iterate, and
  :func:`lasso_problem`, which validates the data and builds the :class:`invcal.Problem`;
* :func:`duality_gap` — P(x) − D(ν) at the rescaled residual ν = r / max(1, ‖Aᵀr / w‖_∞),
  r = y − Ax, with D(ν) = ½‖y‖² − ½‖y − ν‖² (for ``nonneg`` the dual constraint is one-sided,
  Aᵀν ≤ w). The gap bounds P(x) − P(x*), so "converged" means something;
* :class:`WorkingSetFISTA` — the inner solver (:mod:`invcal.sparse.working_set`): FISTA
  with adaptive restart on a working set of columns (the support first, then the most
  violating features, as in Massias et al. 2018's Celer), solved on the gathered columns,
  stopped by the relative duality gap;
* :class:`SupportImplicit` — the implicit hypergradient restricted to the support S of x*
  (Bertrand et al. 2020, 2022, "Implicit differentiation of Lasso-type models for
  hyperparameter optimization"). On S the solution satisfies

      F_S(x_S, θ) = A_Sᵀ(A_S x_S − y) + w_S(θ) ⊙ s_S = 0,   s_S = sign(x*_S) (1 with ``nonneg``),

  and off S the Jacobian is zero, so dx*_S/dθ = −(A_SᵀA_S)⁻¹ ∂(w_S ⊙ s_S)/∂θ and the reverse
  hypergradient is dE/dθ = ∂E/∂θ − ∂/∂θ ⟨v, w_S(θ) ⊙ s_S⟩ with (A_SᵀA_S) v = ∇_{x_S}E: one
  |S|×|S| symmetric positive-definite solve, by CG on the gathered columns A_S.

Under ``jit`` the support's size is not known, so S is gathered into a fixed number K of slots
(``max_support``, by default min(n, p): a Lasso solution in general position has at most n
nonzeros, Tibshirani 2013), with the unused slots pinned to the identity. A support larger than
K is reported as an unconverged linear solve, never silently truncated.

Batches of independent problems sharing θ (the K folds of cross-validation, the two solves of
a finite-difference SURE) are :class:`Batched` maps over data with a leading axis; the solver
and the method detect them and ``vmap`` their work.
"""

from .problem import (
    AbstractLinearMap,
    Batched,
    ForwardBackward,
    LassoData,
    check_design,
    duality_gap,
    lambda_max,
    lasso_problem,
    matvec,
    primal,
    rmatvec,
)
from .support import SupportImplicit
from .working_set import WorkingSetFISTA

__all__ = [
    "AbstractLinearMap",
    "Batched",
    "ForwardBackward",
    "LassoData",
    "SupportImplicit",
    "WorkingSetFISTA",
    "check_design",
    "duality_gap",
    "lambda_max",
    "lasso_problem",
    "matvec",
    "primal",
    "rmatvec",
]
