"""Moved into prefixlab/tools/bench.py (its "engine" section); these names stay importable from here
only for tests/test_cli.py. TODO: delete this file once tests/test_cli.py imports them from
prefixlab.tools.bench."""

from prefixlab.tools.bench import bench_spec, compare, measure_one, run_engine_bench  # noqa: F401
