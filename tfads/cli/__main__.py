"""``python -m tfads.cli``: the same as the ``tfads`` console script."""

import sys

from tfads.cli import main

sys.exit(main())
