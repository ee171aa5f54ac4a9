"""`python -m openjanus.serve ...` is `openjanus serve ...`."""

import sys

from openjanus.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
