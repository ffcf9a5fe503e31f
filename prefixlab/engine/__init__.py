"""The engine: base models (zoo.py, tiny.py), task data (data.py), the experiment spec (spec.py) and
its one check against a model (checks.py), generation (generation.py), the training worker
(worker.py) and what it logs to (loggers.py), task metrics (metrics.py) and the scoring of a finished
run (evaluate.py), sweeps (sweep.py), input limits (limits.py), devices and precision (devices.py),
run folders and the job queue (runs.py).

May import: the core, and libraries (torch, transformers, accelerate, datasets). Never the views,
the page, the CLI or the tools.
"""
