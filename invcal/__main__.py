"""``python -m invcal``: the same command line as the ``invcal`` script."""

import sys

from .cli import main

sys.exit(main())
