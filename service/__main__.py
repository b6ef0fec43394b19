"""`python -m service ...`: the same command line as `rnnserve` (service/cli.py)."""

import sys

from service.cli import main

sys.exit(main())
