"""Ready-made bilevel problems for invcal.

Each module builds an :class:`invcal.Problem` from data (``build``) and bundles it with default
solvers, methods and outer-loop settings for the command line (``setup`` → an
:class:`invcal.catalog.Setup`, registered under the ``invcal.problems`` entry-point group).
``invcal`` never imports this package.

- :mod:`problems.logreg_l2` — ℓ2-regularized logistic regression, e^λ penalty (Pedregosa 2016).
- :mod:`problems.gdm_schedule` — gradient descent with momentum and a learning-rate schedule
  on least squares (Franceschi et al. 2017).
"""
