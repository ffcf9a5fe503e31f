"""On-demand generation for a typed prompt: the base model, every trained variant of a run and its
fine-tuned model (the fine_tune baseline, saved whole under runs/<id>/models/fine_tune).

This is the one place the web process loads a model, and only from the queued "Generate" event
(never from the timer, so the chart of a running job keeps updating). The base with all of a run's
adapters (and the fine-tuned copy) stays loaded for the last run asked about: switching variants is
`set_adapter`, not a reload. The adapter downloads offer adapters only (`trained_variants`): the
fine-tuned model is a whole model, not an adapter.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefixlab.core.config import WEIGHTS_NAME
from prefixlab.engine.runs import RunDir, why_no_adapters

# torch, the model and generation are imported by the first Generate, not when the page starts.
MODEL_WEIGHTS = "model.safetensors"  # a whole saved model's weights (RunDir.trained_models checks them)

_lock = threading.Lock()  # one generation at a time: the cached model is shared
# {"run": its path, "base", "tokenizer", "task_type", "spec", "adapters_key": (adapters, their files'
# stamps), "model": base + adapters, "models_key", "models": {name: whole model}}
_cache: dict = {}


def trained_variants(run: RunDir) -> list[str]:
    """Variants with a whole saved adapter (RunDir.trained_variants: a copy a killed checkpoint
    stranded is put back in place first)."""
    return run.trained_variants()


def _folder(run: RunDir, variant: str) -> Path:
    """Where `variant`'s last whole checkpoint is (in place, or a stranded copy while a worker holds
    the run and it cannot be moved)."""
    return run.adapter_dir(variant) or run.adapter_path(variant)


def _stamp(path: Path) -> tuple:
    """What changes when the worker saves a checkpoint again (each file is replaced, never edited in
    place): the weights file's inode, modification time and size; () before the first."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return ()
    return info.st_ino, info.st_mtime_ns, info.st_size


def _load(run: RunDir, variants: list[str], whole: list[str] = ()):
    """Base + every adapter of the run, and each whole model of `whole` (the fine_tune baseline,
    runs/<id>/models/<name>), cached for the last run; the adapters and whole models are read again
    when the worker has saved newer ones (every eval_interval steps, and at the end), the base is not."""
    from prefixlab.core.model import PrefixTuningModel
    from prefixlab.engine.evaluate import load_fine_tuned
    from prefixlab.engine.zoo import load_base

    adapters_key = (tuple(variants), tuple(_stamp(_folder(run, v) / WEIGHTS_NAME) for v in variants))
    models_key = tuple((name, _stamp(run.model_path(name) / MODEL_WEIGHTS)) for name in whole)
    if _cache.get("run") != str(run.path):
        _cache.clear()
    if "spec" not in _cache:
        spec = run.read_spec()
        base, tokenizer, task_type = load_base(spec.model.name)
        _cache.update(run=str(run.path), base=base, tokenizer=tokenizer, task_type=task_type, spec=spec)
    if _cache.get("adapters_key") != adapters_key:  # the same run, newer adapters: its base is kept
        model = PrefixTuningModel.from_pretrained(_cache["base"], str(_folder(run, variants[0])),
                                                  adapter_name=variants[0])
        for name in variants[1:]:
            model.load_adapter(str(_folder(run, name)), adapter_name=name)
        _cache.update(adapters_key=adapters_key, model=model.eval())
    if _cache.get("models_key") != models_key:
        _cache["models"] = None  # the old copies go before the new ones load
        _cache.update(models_key=models_key, models={
            name: load_fine_tuned(run.model_path(name), _cache["task_type"]).eval() for name in whole})
    return _cache


def no_adapters_message(run: RunDir) -> str:
    """Why a run has no adapter to generate with or download, by its state (for the page)."""
    kind, detail = why_no_adapters(run.read_status())
    if kind == "waiting":
        return (f"run {run.run_id} has no trained adapter yet; wait until it saves one (at the end, or every "
                "training.eval_interval steps)")
    ended = {"died": f"lost its worker ({detail})", "failed": f"failed ({detail})"}.get(kind, f"was {kind}")
    return (f"run {run.run_id} {ended} and saved no adapter, so there is nothing to generate with; press Train "
            "to run its experiment again")


def generate_all(run_path: str | Path, prompt: str, on_progress=None) -> list[list[str]]:
    """[[model, output], ...] for the base model, every trained variant of the run at `run_path` and
    its fine-tuned model (the fine_tune baseline's whole model, where the run saved one).

    Raises ValueError with a message for the page when the run has no trained adapter yet or the
    prompt is empty. `on_progress(fraction, text)` reports loading and generating.
    """
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("the prompt is empty; type a source text such as name[The Eagle] | food[French]")
    run = RunDir(run_path)
    variants = trained_variants(run)
    if not variants:
        raise ValueError(no_adapters_message(run))
    from prefixlab.engine.generation import generate_outputs  # under torch.no_grad

    report = on_progress or (lambda fraction, text: None)
    whole = run.trained_models()  # the fine_tune baseline: a whole model, not an adapter
    with _lock:
        report(0.0, "loading base model, adapters" + (" and the fine-tuned model" if whole else ""))
        loaded = _load(run, variants, whole)
        model, tokenizer, task_type, spec = loaded["model"], loaded["tokenizer"], loaded["task_type"], loaded["spec"]
        report(0.5, f"generating with base and {len(variants) + len(whole)} variant(s)")
        # The worker's own function: prompts built, truncated and decoded exactly as in its samples.
        outputs = generate_outputs(model, tokenizer, task_type, spec, prompt, variants,
                                   next(model.parameters()).device, models=loaded["models"])
        rows = [[name, text] for name, text in outputs.items()]
    return rows
