"""`python -m prefixlab.gpucheck --out DIR`: the same as `python -m prefixlab gpucheck --out DIR`."""

import sys

from prefixlab.gpucheck.cli import main

sys.exit(main())
