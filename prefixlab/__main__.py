"""`python -m prefixlab ...`: the command line lives in prefixlab.cli."""

import sys

from prefixlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
