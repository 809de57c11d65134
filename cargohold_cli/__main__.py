"""`python -m cargohold_cli ...`: the same as the installed `cargohold` command."""

import sys

from cargohold_cli.cli import main

sys.exit(main())
