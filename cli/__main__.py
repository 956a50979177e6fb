"""`python -m cli`: the same as the `continual-opd` command."""

import sys

from cli.main import main

sys.exit(main())
