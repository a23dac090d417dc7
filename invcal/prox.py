r"""Proximal operators of separable sparsity penalties.

The proximal operator of a convex g with step t is prox_{tg}(v) = argmin_z ½‖z − v‖² + t g(z)
(Moreau 1965; Parikh & Boyd 2014, "Proximal algorithms", §6). Here:

==========================  ==========================================  ==========================
penalty g(z)                 prox_{tg}(v)                                function
==========================  ==========================================  ==========================
‖z‖₁ (weights w)             sign(v)·max(|v| − tw, 0)  (soft threshold)  :func:`prox_l1`
‖z‖₁ + ι{z ≥ 0}              max(v − tw, 0)                              :func:`prox_l1_nonneg`
‖z‖₁ + (μ/2)‖z‖²             soft(v, tw) / (1 + tμ)                      :func:`prox_elastic_net`
same + ι{z ≥ 0}              max(v − tw, 0) / (1 + tμ)                   ``prox_elastic_net(…,
                                                                          nonneg=True)``
‖z‖₂ over axis 0 (isotropic  z·max(‖v‖ − t, 0)/‖v‖                       :func:`vector_shrink`
TV's d-step)
h_ε(z) (Huber), elementwise  v·ε/(ε+t) inside, soft threshold outside    :func:`prox_huber`
h_ε(‖z‖₂ over axis 0)        the same on ‖v‖                             :func:`prox_huber_vector`
==========================  ==========================================  ==========================

The thresholds and weights broadcast against v, so one λ per coefficient (the weighted Lasso)
is the same call with an array.

**Derivatives.** These maps are piecewise linear with kinks at |v| = tw. They are written with
``jnp.where`` on a strict inequality, so JAX's derivative is the one that matches the support
convention ``x != 0`` used by the implicit hypergradients: at an exact kink the coefficient is
zero and both ∂/∂v and ∂/∂t are 0 (never NaN, never ½ as ``jnp.maximum`` would give). On the
support, ∂prox/∂v = 1/(1 + tμ) and ∂prox/∂(tw) = −sign(v)/(1 + tμ); these are what make the
Jacobian of the forward–backward map I − ηA_SᵀA_S on the support (Bertrand et al. 2022).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "prox_l1",
    "prox_l1_nonneg",
    "prox_elastic_net",
    "soft_threshold",
    "vector_shrink",
    "prox_huber",
    "prox_huber_vector",
    "huber",
]


def soft_threshold(v, threshold):
    """sign(v)·max(|v| − threshold, 0), elementwise; ``threshold`` broadcasts against v.

    Zero exactly where |v| <= threshold, with a zero derivative there (see the module note).
    """
    v = jnp.asarray(v)
    return jnp.where(jnp.abs(v) > threshold, v - threshold * jnp.sign(v), jnp.zeros_like(v))


def prox_l1(v, t, weights=1.0):
    r"""prox of t·Σⱼ wⱼ|zⱼ|: the soft threshold at t·w (Tibshirani 1996; Donoho 1995)."""
    return soft_threshold(v, t * weights)


def prox_l1_nonneg(v, t, weights=1.0):
    r"""prox of t·Σⱼ wⱼ|zⱼ| + ι{z ≥ 0}: the one-sided threshold max(v − t·w, 0)."""
    v = jnp.asarray(v)
    shifted = v - t * weights
    return jnp.where(shifted > 0, shifted, jnp.zeros_like(shifted))


def prox_elastic_net(v, t, l1=1.0, l2=0.0, *, nonneg: bool = False):
    r"""prox of t·(Σⱼ l1ⱼ|zⱼ| + (l2/2)‖z‖²) (Zou & Hastie 2005): the soft (or, with
    ``nonneg``, one-sided) threshold at t·l1, shrunk by 1/(1 + t·l2)."""
    base = prox_l1_nonneg(v, t, l1) if nonneg else prox_l1(v, t, l1)
    return base / (1.0 + t * l2)


# --------------------------------------------------------------------------------------
# Group (isotropic) shrinkage and the Huber function, derivatives defined everywhere
# --------------------------------------------------------------------------------------
def _safe_norm(v, floor):
    """(|v|, mask) with |v| = ‖v‖ over axis 0 where ‖v‖² > floor² and 1 elsewhere: the square
    root is never taken at 0, so its derivative never becomes inf·0 = NaN."""
    # the components written out: XLA's reduction over a short leading axis of an image-sized
    # array was 80 times slower (4.8 ms against 0.06 ms at 512², measured in Split Bregman)
    sq = v[0] * v[0]
    for i in range(1, v.shape[0]):
        sq = sq + v[i] * v[i]
    mask = sq > floor * floor
    return jnp.sqrt(jnp.where(mask, sq, jnp.ones_like(sq))), mask


def vector_shrink(v, t):
    """v·max(‖v‖ − t, 0)/‖v‖ with ‖·‖ over axis 0 (the isotropic shrinkage, Wang, Yang, Yin &
    Zhang 2008); 0 with zero derivative where ‖v‖ <= t, including at v = 0."""
    n, mask = _safe_norm(v, t)
    return jnp.where(mask, (1.0 - t / n) * v, jnp.zeros_like(v))


def prox_huber(v, t, eps):
    """prox of t·h_ε elementwise (h_ε the Huber function, :func:`huber`): the linear shrink
    v·ε/(ε + t) inside |v| <= ε + t, the soft threshold at t outside."""
    return jnp.where(jnp.abs(v) > eps + t, v - t * jnp.sign(v), v * (eps / (eps + t)))


def prox_huber_vector(v, t, eps):
    """prox of t·h_ε(‖v‖) with ‖·‖ over axis 0 (the smoothed isotropic shrinkage)."""
    n, mask = _safe_norm(v, eps + t)
    return jnp.where(mask, (1.0 - t / n) * v, v * (eps / (eps + t)))


def huber(s, eps):
    """h_ε(s) = s²/(2ε) for s <= ε, s − ε/2 beyond, for s >= 0 (the Huber smoothing of |s|)."""
    return jnp.where(s > eps, s - 0.5 * eps, 0.5 * s * s / eps)
