"""`python -m stmkit`: the same as the `stmkit` command."""

import sys

from .cli import main

sys.exit(main())
