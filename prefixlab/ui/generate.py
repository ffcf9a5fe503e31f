"""On-demand generation for a typed prompt: the base model and every trained variant of a run.

This is the one place the web process loads a model, and only from the queued "Generate" event
(never from the timer, so the chart of a running job keeps updating). The base with all of a run's
adapters stays loaded for the last run asked about: switching variants is `set_adapter`, not a reload.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from prefixlab.data import build_prompt
from prefixlab.model import PrefixTuningModel
from prefixlab.runs import RunDir
from prefixlab.train import generation_kwargs
from prefixlab.zoo import load_base

_lock = threading.Lock()  # one generation at a time: the cached model is shared
_cache: dict = {}  # {"key": (run path, adapters), "model": ..., "tokenizer": ..., "task_type": ...}


def trained_variants(run: RunDir) -> list[str]:
    """Variants whose adapter folder is complete (written atomically by the worker)."""
    if not run.adapters_path.is_dir():
        return []
    return sorted(p.name for p in run.adapters_path.iterdir()
                  if not p.name.startswith(".") and (p / "adapter_config.json").is_file())


def _load(run: RunDir, variants: list[str]):
    """Base + every adapter of the run, cached for the last (run, adapters) pair."""
    key = (str(run.path), tuple(variants))
    if _cache.get("key") != key:
        _cache.clear()
        spec = run.read_spec()
        base, tokenizer, task_type = load_base(spec.model.name)
        model = PrefixTuningModel.from_pretrained(base, str(run.adapter_path(variants[0])), adapter_name=variants[0])
        for name in variants[1:]:
            model.load_adapter(str(run.adapter_path(name)), adapter_name=name)
        model.eval()
        _cache.update(key=key, model=model, tokenizer=tokenizer, task_type=task_type, spec=spec)
    return _cache


def _causal(task_type) -> bool:
    return str(getattr(task_type, "value", task_type)) == "CAUSAL_LM"


@torch.no_grad()
def generate_all(run_path: str | Path, prompt: str, on_progress=None) -> list[list[str]]:
    """[[model, output], ...] for the base model and every trained variant of the run at `run_path`.

    Raises ValueError with a message for the page when the run has no trained adapter yet or the
    prompt is empty. `on_progress(fraction, text)` reports loading and each generation.
    """
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("the prompt is empty; type a source text such as name[The Eagle] | food[French]")
    run = RunDir(run_path)
    variants = trained_variants(run)
    if not variants:
        raise ValueError(f"run {run.run_id} has no trained adapter yet; wait until it saves one (at the "
                         "end, or every training.eval_interval steps)")
    report = on_progress or (lambda fraction, text: None)
    with _lock:
        report(0.0, "loading base model and adapters")
        loaded = _load(run, variants)
        model, tokenizer, task_type, spec = loaded["model"], loaded["tokenizer"], loaded["task_type"], loaded["spec"]
        text = build_prompt(prompt, task_type, spec.data.separator)
        # Same tokenisation as the worker's samples: a causal prompt must not end in eos.
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=not _causal(task_type))
        kwargs = generation_kwargs(spec.generation, tokenizer)
        rows = []
        names = ["base", *variants]
        for i, name in enumerate(names):
            report((i + 1) / (len(names) + 1), f"generating with {name}")
            torch.manual_seed(spec.training.seed)  # sampling: every model draws the same stream
            if name == "base":
                out = model.base_model.generate(**encoded, **kwargs)
            else:
                model.set_adapter(name)
                out = model.generate(**encoded, **kwargs)
            if _causal(task_type):
                out = out[:, encoded["input_ids"].shape[1]:]  # (1, new_tokens): only the continuation
            rows.append([name, tokenizer.decode(out[0], skip_special_tokens=True)])
    return rows
