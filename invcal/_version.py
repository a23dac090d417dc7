"""The package version (one place; :mod:`invcal` and the run records read it)."""

__version__ = "0.1.0"
