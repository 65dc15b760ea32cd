"""`python -m mqbench.cli` runs the command line."""

import sys

from mqbench.cli.main import main

sys.exit(main())
