"""`python -m evaluation nab ...` (what `rnnserve eval` runs)."""

import sys

from evaluation.cli import main

sys.exit(main())
