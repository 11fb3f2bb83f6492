"""`python -m vaejax`: the `vaejax` command."""

import sys

from vaejax.cli import main

sys.exit(main())
