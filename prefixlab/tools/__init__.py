"""Developer tooling, outside the runtime, one module per tool: the benchmarks (bench.py: core, paired,
engine, startup, page), the GPU check (gpucheck.py), the tiny-model pretraining that makes
presets/models/tiny-gpt2-e2e (pretrain.py) and presets/models/tiny-llama-d2t (pretrain_d2t.py, from the
invented domains of make_domains.py), and the built-in task's generator (make_task.py).

May import anything in prefixlab; only the CLI (`python -m prefixlab bench|gpucheck`) imports it.
"""
