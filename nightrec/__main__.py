"""`python -m nightrec` is the `nightrec` command."""

import sys

from nightrec.cli import main

sys.exit(main())
