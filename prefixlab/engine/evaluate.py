"""Score a finished run: the base model and every saved adapter on a whole split, with task metrics.

`evaluate_run(run_dir, split="test")` loads the run's base model once, every adapter it saved and
the fine_tune baseline's whole model where the run has one (runs/<id>/models/<name>), generates for
each example of the split as the worker does (prompts built and truncated as in training, the
spec's generation settings, the base model without a prefix first), scores each model with
`metrics.score`, and writes the table into the run folder as `evaluation-<split>.json`
(replaced atomically). It backs `python -m prefixlab evaluate RUN [--split test] [--limit N]`.

Speed: greedy and beam search run `batch_size` prompts at a time, grouped by prompt length
(left-padded for causal LMs; positions follow the attention mask, so a padded row computes what it
computes alone). tests/test_evaluate.py checks that the batched outputs equal the worker's
one-prompt-at-a-time `generation.generate_outputs` word for word. Sampling draws one random stream
per prompt, so it always runs one prompt at a time, through that same function.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefixlab.engine.metrics import DEFAULT, check_metrics, score, slot_accuracy_by_key
from prefixlab.engine.runs import RunDir, atomic_write_json
from prefixlab.engine.spec import ExperimentSpec

SPLITS = ("train", "validation", "test")
BATCH_SIZE = 32


def evaluation_path(run_dir: str | Path, split: str) -> Path:
    """Where `evaluate_run` writes its table: runs/<id>/evaluation-<split>.json."""
    return Path(run_dir) / f"evaluation-{split}.json"


def saved_variants(run: RunDir) -> list[str]:
    """Variants whose adapter folder is whole (a copy stranded by a kill repaired: RunDir.trained_variants)."""
    return run.trained_variants()


def split_examples(spec: ExperimentSpec, split: str, limit: int | None = None) -> list[dict]:
    """The first `limit` examples (all if None) of one split of the run's task, ignoring the spec's
    data.max_*_examples caps (those size training and its validation loss, not an evaluation)."""
    from prefixlab.engine.data import load_task

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of examples, got {limit!r}")
    data = spec.data
    caps = {"max_train_examples": limit, "max_eval_examples": None} if split == "train" else \
        {"max_train_examples": None, "max_eval_examples": limit}
    splits = load_task(data.source, source_column=data.source_column, target_column=data.target_column,
                       hub_config=data.hub_config, **caps)
    examples = splits[split][:limit] if limit else splits[split]
    if not examples:
        others = [s for s in SPLITS if s != split and splits.get(s)]
        raise ValueError(f"the run's data ({data.source}) has no {split} split; evaluate on "
                         f"{' or '.join(others) or 'another split'} instead")
    return examples


def load_run_models(run: RunDir, variants: list[str], device=None, models: list[str] = ()):
    """(model, tokenizer, task_type, {name: whole model}): the run's base, loaded once, with every
    adapter in `variants`, and each whole model of `models` (the fine_tune baseline) from runs/<id>/models."""
    import torch

    from prefixlab.core.model import PrefixTuningModel
    from prefixlab.engine.zoo import load_base

    spec = run.read_spec()
    base, tokenizer, task_type = load_base(spec.model.name)
    model = PrefixTuningModel.from_pretrained(base, str(run.adapter_dir(variants[0])), adapter_name=variants[0])
    for name in variants[1:]:
        model.load_adapter(str(run.adapter_dir(name)), adapter_name=name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    whole = {name: load_fine_tuned(run.model_path(name), task_type).to(device).eval() for name in models}
    return model.to(device).eval(), tokenizer, task_type, whole


def load_fine_tuned(path: str | Path, task_type):
    """A whole model the worker saved (the fine_tune baseline's runs/<id>/models/<name>), in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from prefixlab.core.config import TaskType

    auto = AutoModelForCausalLM if TaskType(task_type) == TaskType.CAUSAL_LM else AutoModelForSeq2SeqLM
    return auto.from_pretrained(str(path), dtype=torch.float32)


def generate_split(peft_model, tokenizer, task_type, spec: ExperimentSpec, sources: list[str],
                   adapter_names: list[str], device, batch_size: int = BATCH_SIZE,
                   on_progress=None, *, models: dict | None = None, base: bool = True) -> dict[str, list[str]]:
    """{"base": [text per source], <adapter>: [...], <model>: [...]}: what `generation.generate_outputs`
    gives for each source (`models` and `base` as there), batched where that gives the same outputs
    (greedy, beam); see the module docstring. `on_progress(done, total)` after each batch (or prompt)."""
    from prefixlab.engine.generation import generate_outputs

    report = on_progress or (lambda done, total: None)
    models = models or {}
    names = ["base"] * base + [*adapter_names, *models]
    if spec.generation.strategy == "sampling" or batch_size <= 1:
        outputs = {name: [] for name in names}
        for i, source in enumerate(sources):
            texts = generate_outputs(peft_model, tokenizer, task_type, spec, source, adapter_names, device,
                                     limit_prompt=False, models=models, base=base)
            for name in names:
                outputs[name].append(texts[name])
            report(i + 1, len(sources))
        return outputs
    return _generate_batched(peft_model, tokenizer, task_type, spec, sources, adapter_names, device, batch_size,
                             report, models, base)


def _generate_batched(peft_model, tokenizer, task_type, spec, sources, adapter_names, device, batch_size, report,
                      models, base):
    import torch

    from prefixlab.core.config import TaskType
    from prefixlab.engine.data import encode_prompts
    from prefixlab.engine.generation import check_generation_room, generation_kwargs

    def encode(batch: list[str]) -> dict:
        return encode_prompts(batch, tokenizer, task_type, spec.data.separator, max_length=spec.training.max_length)

    lengths = [encode([s])["input_ids"].shape[1] for s in sources]
    if adapter_names:
        check_generation_room(peft_model, task_type, spec, adapter_names, max(lengths))
    order = sorted(range(len(sources)), key=lambda i: lengths[i])  # similar lengths: little padding
    causal = TaskType(task_type) == TaskType.CAUSAL_LM
    kwargs = generation_kwargs(spec.generation, tokenizer)
    names = ["base"] * base + [*adapter_names, *models]
    outputs: dict[str, list[str | None]] = {name: [None] * len(sources) for name in names}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            encoded = {k: v.to(device) for k, v in encode([sources[i] for i in rows]).items()}  # (rows, len)
            for name in names:
                model = peft_model.base_model if name == "base" else models.get(name, peft_model)
                if name in adapter_names:
                    peft_model.set_adapter(name)
                torch.manual_seed(spec.training.seed)  # as generate_outputs does
                out = model.generate(**encoded, **kwargs)  # (rows, total_len)
                if causal:
                    out = out[:, encoded["input_ids"].shape[1]:]  # the continuation only
                for i, ids in zip(rows, out):
                    outputs[name][i] = tokenizer.decode(ids, skip_special_tokens=True)
            report(min(start + batch_size, len(order)), len(order))
    return outputs


def evaluate_run(run_dir: str | Path, split: str = "test", limit: int | None = None, metrics=DEFAULT, *,
                 batch_size: int = BATCH_SIZE, device=None, on_progress=None) -> dict:
    """Score the base model, every saved adapter and fine-tuned model of the run at `run_dir` on
    `split` (its first `limit` examples; all by default); write and return the table.

    Returns (and writes to runs/<id>/evaluation-<split>.json) a dict: `split`, `examples`, `step`
    (the run's step when evaluated), `metrics` {model: {metric: value on 0-100}}, `absent` {metric:
    why it does not apply}, `slot_accuracy_by_key` {model: {key: %}} where the task has tables,
    `generation` (the settings used), `seconds`, and `outputs`: per example its source, reference and
    every model's text. Raises ValueError (message for the CLI) for an unknown metric or split, a
    run without a saved adapter, or a split without examples.
    """
    names = check_metrics(metrics)
    run = RunDir(run_dir)
    if not run.spec_path.is_file():
        raise ValueError(f"{run.path}: no spec.json here, so this is not a run folder; pass runs/<id>")
    variants = saved_variants(run)
    if not variants:
        raise ValueError(f"run {run.run_id} has no saved adapter to evaluate; train it first (adapters are saved "
                         "every training.eval_interval steps and at the end)")
    spec = run.read_spec()
    examples = split_examples(spec, split, limit)
    started = time.perf_counter()
    whole = run.trained_models()
    model, tokenizer, task_type, models = load_run_models(run, variants, device, whole)
    device = next(model.parameters()).device
    sources = [e["source"] for e in examples]
    references = [e["target"] for e in examples]
    outputs = generate_split(model, tokenizer, task_type, spec, sources, variants, device, batch_size, on_progress,
                             models=models)
    table, absent, by_key = {}, {}, {}
    for name, predictions in outputs.items():
        scores = score(predictions, references, sources, names)
        table[name] = dict(scores)
        absent.update(scores.absent)
        if "slot_accuracy" in scores:
            by_key[name] = slot_accuracy_by_key(predictions, sources)
    result = {
        "run": run.run_id, "split": split, "examples": len(examples), "limit": limit,
        "step": run.read_status().get("step"), "model": spec.model.name, "metrics": table, "absent": absent,
        "slot_accuracy_by_key": by_key, "generation": _settings(spec), "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 2),
        "outputs": [{"source": s, "reference": r, "outputs": {name: outputs[name][i] for name in outputs}}
                    for i, (s, r) in enumerate(zip(sources, references))],
    }
    atomic_write_json(evaluation_path(run.path, split), result)
    return result


def _settings(spec: ExperimentSpec) -> dict:
    gen = spec.generation
    settings = {"strategy": gen.strategy, "max_new_tokens": gen.max_new_tokens}
    if gen.strategy == "beam":
        settings["num_beams"] = gen.num_beams
    if gen.strategy == "sampling":
        settings.update(temperature=gen.temperature, top_p=gen.top_p, seed=spec.training.seed)
    return settings


def format_table(result: dict) -> str:
    """The metrics as a plain-text table: one row per model, one column per metric."""
    notes = [f"{metric}: {why}" for metric, why in result.get("absent", {}).items()]
    return "\n".join([f"{result['split']} split, {result['examples']} examples, step {result.get('step')}:",
                      metrics_table(result["metrics"]), *notes])


def metrics_table(metrics: dict[str, dict]) -> str:
    """{model: {metric: value}} as aligned text, a row per model and a column per metric ("-" where a
    model has no value)."""
    names = list(dict.fromkeys(m for values in metrics.values() for m in values))
    rows = [["model", *names]] + [[model, *(f"{values[m]:.1f}" if m in values else "-" for m in names)]
                                  for model, values in metrics.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def summary_metrics(summary: dict) -> dict[str, dict]:
    """{model: {metric: value}} of a run's summary.json: the base model (step 0), then each variant's
    last evaluation; empty when the run scored nothing (training.metric_examples 0, no validation split)."""
    out = {"base (step 0)": summary["base_metrics"]} if summary.get("base_metrics") else {}
    for name, values in (summary.get("variants") or {}).items():
        if values.get("metrics"):
            out[f"{name} (step {values.get('metrics_step')})"] = values["metrics"]
    return out
