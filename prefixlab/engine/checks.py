"""What a spec must satisfy against its model, its data and this machine, found before any weight
is loaded: one function, `check`, serves the page (on every form edit, every problem beside its
field), the CLI (`train SPEC` refuses with exit 2, making no run folder) and the worker (before the
first step, with the model config it loaded and the real prompts' lengths).

It reads the model's config (no weights; zoo.model_facts), local task files (every line, cached by the file's size
and modification time) and asks torch which device a worker would train on; a Hub dataset is checked
by the worker, which downloads it, except that one the worker could not download (offline, or the
Hub not answering, and not in the local cache) is refused here. Every problem is {dotted spec key: message}, the key the value
comes from (`ExperimentSpec.prefix_key` for prefix fields, "model.name" for a model that cannot be
read); nothing maps a message back to a field by its words.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from prefixlab.core.config import ConfigError, PrefixTuningConfig, TaskType, infer_sizes, prefix_parameter_counts
from prefixlab.engine.data import DataError, check_columns, load_task, resolve_source
from prefixlab.engine.loggers import missing_packages
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.zoo import ModelFacts, count_base_parameters, model_facts, position_limit, task_type_of_config


@dataclass
class Checked:
    """The outcome of `check`: every problem, and each variant's config with its sizes filled from the
    model (empty when the model's config cannot be read or a size does not fit it)."""

    errors: dict[str, str] = field(default_factory=dict)
    filled: dict[str, PrefixTuningConfig] = field(default_factory=dict)
    model_name: str = ""
    fine_tune: str | None = None  # the fine-tuning baseline's variant name, when the spec has one

    def rows(self) -> list[dict]:
        """Per variant: trainable, total, trainable %, stored, formula (exact, without weights); the
        fine-tuning baseline's row last (every parameter of its copy of the base)."""
        rows = [{"variant": name, **variant_accounting(self.model_name, config)} for name, config in self.filled.items()]
        if self.fine_tune and self.filled:
            rows.append({"variant": self.fine_tune, **fine_tune_accounting(self.model_name)})
        return rows


def check(spec: ExperimentSpec, *, model_config=None, prompt_lengths: list[int] | None = None,
          data: bool = True, machine: bool = True) -> Checked:
    """Every problem a run of `spec` would fail on at setup that can be known without weights.

    model_config: the loaded model's transformers config (default: zoo.model_facts of
    spec.model.name, cached, which for the offline presets needs neither torch nor transformers).
    prompt_lengths: the generation prompts' token counts, when known (the worker); otherwise the
    new tokens are checked after the shortest prompt. data=False skips the task data (the worker
    reads it itself); machine=False skips the precision this machine can train in."""
    out = Checked(model_name=spec.model.name, fine_tune=spec.fine_tune.name if spec.fine_tune else None)
    if machine:
        out.errors.update(precision_errors(spec))
        missing = missing_packages(spec.training.report_to)
        if missing:
            out.errors["training.report_to"] = "; ".join(missing.values())
    try:
        facts = model_facts(spec.model.name) if model_config is None else ModelFacts(
            spec.model.name, model_config, task_type_of_config(model_config), position_limit(model_config))
    except ValueError as err:  # ModelLoadError: offline Hub id, a typo, a folder without config.json
        out.errors["model.name"] = str(err)
        facts = None
    if facts is not None:
        for i, v in enumerate(spec.variants):
            if not v.is_prefix:
                continue
            try:
                out.filled[v.name] = infer_sizes(v.prefix, facts.config, facts.task_type)
            except ConfigError as err:
                out.errors.setdefault(spec.prefix_key(i, err.field), str(err))
        if len(out.filled) == len(spec.prefix_variants):
            causal = TaskType(facts.task_type) == TaskType.CAUSAL_LM
            out.errors.update(position_errors(spec, facts.position_limit, prompt_lengths, causal))
        else:
            out.filled = {}
    if data:
        for key, message in task_data_errors(spec).items():
            out.errors.setdefault(key, message)
    return out


# ---------------------------------------------------------------------------------------------
# The model: sizes and positions


def variant_accounting(model_name: str, filled: PrefixTuningConfig) -> dict:
    """Exact parameter counts of one variant whose sizes are filled, without loading weights.

    total = frozen base (counted on the meta device, cached) + trainable prefix parameters (the
    projection MLP, when on, trains but is not stored: the adapter keeps only the projected prefix,
    as PEFT does)."""
    counts = prefix_parameter_counts(filled)
    total = count_base_parameters(model_name) + counts["trainable"]
    return {"trainable": counts["trainable"], "total": total,
            "trainable %": round(100.0 * counts["trainable"] / total if total else 0.0, 4),
            "stored": counts["stored"], "formula": counts["formula"]}


def fine_tune_accounting(model_name: str) -> dict:
    """The fine-tuning baseline's counts: every parameter of its own copy of the base trains and is
    stored (the paper's comparison: prefix tuning keeps about 0.1% of that)."""
    total = count_base_parameters(model_name)
    return {"trainable": total, "total": total, "trainable %": 100.0, "stored": total,
            "formula": "every parameter of a copy of the base (full fine-tuning)"}


def generation_room(limit: int, prefix: int, prompt_len: int, causal: bool) -> int:
    """How many new tokens fit a model with `limit` positions after a `prefix`-token prefix and a
    `prompt_len`-token prompt. The last new token is never fed back, so a causal LM uses prefix +
    prompt + new - 1 positions, a seq2seq decoder prefix + new (its start token, then all new tokens
    but the last; the prompt goes to the encoder)."""
    return limit - prefix - (prompt_len - 1 if causal else 0)


def generation_room_error(spec: ExperimentSpec, limit: int | None, prefix: int, prompt_len: int,
                          causal: bool) -> str | None:
    """The message for generation.max_new_tokens when a `prompt_len`-token prompt, the `prefix`-token
    prefix and the new tokens do not fit the model's `limit` positions; None when they do."""
    if limit is None:
        return None
    room = generation_room(limit, prefix, prompt_len, causal)
    wanted = spec.generation.max_new_tokens
    if wanted <= room:
        return None
    prompt = f"a {prompt_len}-token prompt and " if causal else ""
    return (f"{wanted} new tokens after {prompt}the {prefix}-token prefix run past {spec.model.name}'s {limit} "
            f"positions; set it to at most {max(room, 0)}" + (" or use a shorter prompt" if causal else ""))


def position_errors(spec: ExperimentSpec, limit: int | None, prompt_lengths: list[int] | None = None,
                    causal: bool = True) -> dict[str, str]:
    """{field: message} for lengths that would run past a model with `limit` positions
    (zoo.position_limit; None: no limit). The prefix takes the first positions, so a training example
    gets `limit - num_virtual_tokens`; so do the new tokens after a one-token prompt (the last new
    token is never fed back), or after the longest of `prompt_lengths` when they are known."""
    if limit is None or not spec.prefix_variants:
        return {}
    indices = [i for i, v in enumerate(spec.variants) if v.is_prefix]
    longest = max(indices, key=lambda i: spec.variants[i].prefix.num_virtual_tokens)
    prefix = spec.variants[longest].prefix.num_virtual_tokens
    model = spec.model.name
    if prefix + 1 > limit:
        return {spec.prefix_key(longest, "num_virtual_tokens"):
                f"{prefix} virtual tokens leave no room in {model}'s {limit} positions; use at most {limit - 1}"}
    errors = {}
    if spec.training.max_length + prefix > limit:
        errors["training.max_length"] = (
            f"{spec.training.max_length} tokens after the {prefix}-token prefix run past {model}'s {limit} "
            f"positions; set it to at most {limit - prefix}")
    if prompt_lengths:
        message = generation_room_error(spec, limit, prefix, max(prompt_lengths), causal)
    else:
        room = generation_room(limit, prefix, prompt_len=1, causal=True)  # the least any prompt leaves
        message = None if spec.generation.max_new_tokens <= room else (
            f"{spec.generation.max_new_tokens} new tokens after the {prefix}-token prefix and a prompt run past "
            f"{model}'s {limit} positions; set it to at most {room}")
    if message:
        errors["generation.max_new_tokens"] = message
    return errors


# ---------------------------------------------------------------------------------------------
# The data and the machine


def task_data_errors(spec: ExperimentSpec) -> dict[str, str]:
    """{spec key: message} for a local data file or folder that the worker would reject: every line is
    read with the chosen columns, so a bad line 500 is named here rather than in a failed run. The
    built-in task is shipped and checked by its tests; a Hub dataset is checked by the worker, except
    for one column chosen as both source and target, which is refused for every source but the
    built-in task, and one that cannot be downloaded and is not cached (hub_dataset_problem)."""
    data = spec.data
    kind, where = resolve_source(data.source)
    try:
        if kind != "builtin":
            check_columns(where, data.source_column, data.target_column)
    except DataError as err:
        return {err.field: str(err)}
    if kind == "file":
        problem = _file_problem(where, _stamp(where), data.source_column, data.target_column)
        return dict([problem]) if problem else {}
    if kind == "hub":
        problem = hub_dataset_problem(where)
        return {"data.source": problem} if problem else {}
    return {}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_dataset_problem(name: str) -> str | None:
    """Why the Hub dataset `name` cannot load here, or None: offline (HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE) or with the Hub not answering (core.hub's probe: 3 s at most, cached for a
    minute), only a dataset in the local Hugging Face cache loads; the worker would fail at setup.
    Whether the id exists and has the columns is the worker's to find, once it can download."""
    from prefixlab.core.hub import cache_only

    if _env_flag("HF_DATASETS_OFFLINE"):
        offline, why = True, "HF_DATASETS_OFFLINE is set"
    else:
        offline, why = cache_only(name)
    if not offline or dataset_cached(name):
        return None
    unset = f" and unset {why.split()[0]}" if why.endswith("is set") else ""
    return (f"the Hub dataset {name!r} cannot be downloaded ({why}) and is not in the local Hugging Face cache; "
            f"use the built-in task 'e2e-synth' or a local .jsonl/.csv file, or connect to the Hub{unset}")


def dataset_cached(name: str) -> bool:
    """Whether the local Hugging Face caches hold anything of the Hub dataset `name`: its files in the
    Hub cache (datasets--<org>--<name>) or its prepared copy in the datasets cache (<org>___<name>)."""
    from huggingface_hub import constants

    home = Path(os.environ.get("HF_HOME") or constants.HF_HOME).expanduser()
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                     or constants.HF_HUB_CACHE).expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    wanted = {f"datasets--{name.replace('/', '--')}".lower(), name.replace("/", "___").lower()}
    for folder in (hub_cache, datasets_cache):
        try:
            if wanted & {entry.name.lower() for entry in folder.iterdir()}:
                return True
        except OSError:  # no such cache yet
            continue
    return False


def _stamp(path: str) -> tuple:
    """What changes when a file or folder of task data is rewritten: its entries' sizes and times."""
    root = Path(path)
    try:
        entries = [root] + (sorted(root.iterdir()) if root.is_dir() else [])
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries)
    except OSError:
        return ()


@functools.lru_cache(maxsize=16)
def _file_problem(path: str, stamp: tuple, source_column: str, target_column: str) -> tuple[str, str] | None:
    """(spec key, message) when load_task refuses a file or folder, else None; cached per (path,
    stamp, columns), so the page, which checks on every edit, reads a file once until it changes."""
    del stamp  # part of the cache key only
    try:
        load_task(path, source_column=source_column, target_column=target_column)
    except DataError as err:
        return err.field, str(err)
    return None


def precision_errors(spec: ExperimentSpec) -> dict[str, str]:
    """{"training.precision": why} when this machine's training device cannot train in the chosen
    precision (fp16 on a CPU, bf16 on MPS before macOS 14): the worker runs here and would refuse.
    On CUDA the check (bf16 on a pre-Ampere GPU) stays with the worker: asking the GPU would open a
    CUDA context in the page's process, which keeps the GPU for training. auto and fp32 train
    everywhere (auto picks what the device can do), so only bf16 and fp16 ask torch."""
    if spec.training.precision in ("auto", "fp32"):
        return {}
    from prefixlab.engine import devices

    device_type = devices.training_device_type()
    if device_type == "cuda":
        return {}
    try:
        devices.mixed_precision_for(spec.training.precision, device_type)
    except ValueError as err:
        return {"training.precision": str(err).removeprefix("training.precision: ")}
    return {}
