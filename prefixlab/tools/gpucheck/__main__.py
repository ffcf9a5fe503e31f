"""`python -m prefixlab.tools.gpucheck --out DIR`: the same as `python -m prefixlab gpucheck --out DIR`."""

import sys

from prefixlab.tools.gpucheck.cli import main

sys.exit(main())
