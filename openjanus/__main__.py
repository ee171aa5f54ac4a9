"""`python -m openjanus ...` (and `torchrun ... -m openjanus ...`): the `openjanus` command."""

import sys

from openjanus.cli import main

sys.exit(main())
