r"""How the gradient of a PEtab objective is computed: strategy objects over diffrax's
adjoints.

With states x(t; θ) from ẋ = f(t, x, p(θ)) and an objective J(θ) = Σⱼ ℓⱼ(x(tⱼ; θ), θ):

- :class:`Forward` integrates the forward sensitivities S = ∂x/∂θ, Ṡ = ∂f/∂x S + ∂f/∂θ
  (one tangent per parameter: ``jax.jacfwd`` through ``diffrax.ForwardMode``). Its cost
  grows with the number of parameters; it suits few parameters.
- :class:`Adjoint` solves the adjoint ODE λ̇ = −(∂f/∂x)ᵀλ backwards from the last
  measurement, with jumps ∂ℓⱼ/∂x(tⱼ) at the measurement times, together with the
  quadrature μ̇ = −(∂f/∂p)ᵀλ; then ∂J/∂x(0) = λ(0), ∂J/∂p = μ(0) (the continuous adjoint
  as AMICI computes it: Fröhlich et al. 2017, "Scalable parameter estimation for
  genome-scale biochemical reaction networks", PLoS Comput Biol 13:e1005331). The state
  x(t) in the adjoint ODE is the forward solve's dense interpolation (diffrax
  ``SaveAt(dense=True)``), held at x(0) for the stages an implicit solver places before
  t = 0 (Kvaerno5 has a stage at 1.23 steps), both solves with the problem's diffrax solver
  and tolerances; the adjoint ODE being linear in (λ, μ), an implicit solver's stage
  equations are solved by one linear solve each (diffrax's VeryChord stopped on rounding
  noise there). Its cost is independent of the number of parameters; its gradient is that
  of the continuous problem, equal to the discrete one to the solver's tolerance (measured
  in benchmarks/petab_gradients.py).
  ``diffrax.BacksolveAdjoint`` is not used: it recomputes x(t) by integrating the model
  backwards in time, which is unstable for the stiff, dissipative models of systems
  biology (on Boehm_JProteomeRes2014 its gradient had not finished after 500 s).
- :class:`Checkpointed` differentiates the solver's steps in reverse mode, storing
  checkpoints (``diffrax.RecursiveCheckpointAdjoint``, binomial checkpointing of Griewank
  and Walther, "Algorithm 799: revolve", 2000): the exact gradient of the discretised
  solve, memory O(log(steps)) checkpoints.

A pre-equilibration's steady state x̄(θ), f(x̄, p) = 0, is differentiated by the implicit
function theorem, ∂x̄/∂θ = −(∂f/∂x)⁻¹ ∂f/∂θ, whichever strategy is chosen.
"""

from __future__ import annotations

import abc

import diffrax as dfx
import equinox as eqx
import jax

__all__ = ["AbstractSensitivities", "Forward", "Adjoint", "Checkpointed"]


class AbstractSensitivities(eqx.Module):
    """A way to differentiate the ODE solves of a PEtab objective."""

    @abc.abstractmethod
    def diffrax_adjoint(self) -> dfx.AbstractAdjoint:
        """The ``adjoint`` passed to ``diffrax.diffeqsolve``."""

    @abc.abstractmethod
    def value_and_grad(self, fn, x):
        """``((fn(x), aux), ∇fn(x))`` for ``fn(x) -> (scalar, aux)``."""


class Forward(AbstractSensitivities):
    """Forward sensitivities: ``jax.jacfwd`` through ``diffrax.ForwardMode()``; cost
    proportional to the number of parameters."""

    def diffrax_adjoint(self):
        return dfx.ForwardMode()

    def value_and_grad(self, fn, x):
        def both(y):
            value, aux = fn(y)
            return value, (value, aux)

        grad, out = jax.jacfwd(both, has_aux=True)(x)
        return out, grad


class Adjoint(AbstractSensitivities):
    """Continuous adjoint sensitivities with the forward solution interpolated: ``jax.grad``
    through a ``jax.custom_vjp`` whose backward pass solves the adjoint ODE with diffrax
    (the problem's solver and tolerances)."""

    def diffrax_adjoint(self):
        # The forward solve inside the custom_vjp is never differentiated by diffrax.
        return dfx.RecursiveCheckpointAdjoint()

    def value_and_grad(self, fn, x):
        return jax.value_and_grad(fn, has_aux=True)(x)


class Checkpointed(AbstractSensitivities):
    """Discrete adjoint with checkpointing: ``jax.grad`` through
    ``diffrax.RecursiveCheckpointAdjoint(checkpoints)`` (``None``: diffrax's default,
    about log₂ of ``max_steps`` checkpoints)."""

    checkpoints: int | None = eqx.field(default=None, static=True)

    def diffrax_adjoint(self):
        return dfx.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints)

    def value_and_grad(self, fn, x):
        return jax.value_and_grad(fn, has_aux=True)(x)
