"""``python -m invcal``: the same command line as the ``invcal`` script."""

from .cli import console

console()
