r"""Theophylline pharmacokinetics: a one-compartment model with first-order absorption.

After an oral dose D (mg/kg) into the gut (depot), the drug is absorbed into the central
compartment at rate k_a and eliminated at rate k_e:

    d depot/dt   = −k_a · depot,
    d central/dt =  k_a · depot − k_e · central,        C(t) = central(t) / V,

with V = Cl / k_e. The parameters are declared on the log scale, lKe = log k_e,
lKa = log k_a, lCl = log Cl, so the population model φᵢ = μ + ηᵢ, ηᵢ ~ N(0, Ω), gives
log-normal individual parameters. The closed form (R's ``SSfol``) is

    C(t) = D e^{lKe + lKa − lCl} (e^{−k_e t} − e^{−k_a t}) / (k_a − k_e).

Data: R's ``Theoph`` (12 subjects, 132 concentrations; Boeckmann, Sheiner & Beal 1994) in
``problems/data/theoph.csv``; Pinheiro & Bates (2000), §8.2, fit it with nlme.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from invcal import ode

__all__ = ["THEOPH_CSV", "theophylline_model", "ssfol", "load_theoph"]

THEOPH_CSV = Path(__file__).resolve().parent / "data" / "theoph.csv"


def one_compartment_oral(t, y, p):
    """Depot → central → elimination, rate constants from the log-parameters."""
    ke, ka = jnp.exp(p["lKe"]), jnp.exp(p["lKa"])
    depot, central = y[0], y[1]
    return jnp.stack([-ka * depot, ka * depot - ke * central])


def concentration(y, p):
    """C = central / V with V = Cl / k_e."""
    return y[1] * jnp.exp(p["lKe"] - p["lCl"])


def theophylline_model(**options) -> ode.ODEModel:
    """The one-compartment first-order-absorption model as an :class:`invcal.ode.ODEModel`
    (``options`` go to ODEModel: solver, rtol, atol, max_steps, adjoint)."""
    return ode.ODEModel(
        one_compartment_oral,
        states=("depot", "central"),
        params=("lKe", "lKa", "lCl"),
        observe=concentration,
        **options,
    )


def ssfol(dose, t, lKe, lKa, lCl):
    """R's SSfol: the closed-form concentration of the model above."""
    ke, ka = jnp.exp(lKe), jnp.exp(lKa)
    return dose * jnp.exp(lKe + lKa - lCl) * (jnp.exp(-ke * t) - jnp.exp(-ka * t)) / (ka - ke)


def load_theoph(path=THEOPH_CSV) -> ode.Events:
    """The Theoph event table (WT is a covariate column)."""
    return ode.read_events(path)
