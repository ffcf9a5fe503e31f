"""ExperimentSpec: one JSON document that says everything a training run needs.

model + a shared prefix (a PrefixTuningConfig) + the variants to train + data + training +
generation. The same objects drive the worker, the CLI, the presets and the page. This module is
the schema and its JSON; how the page's widgets map onto it lives with the page (ui/form.py), and
what a spec must also satisfy against a model (sizes, positions, task data) is engine/checks.py.

Values are coerced once, where they enter (`from_dict`: JSON, or the page's form reshaped into the
same document), and every problem found is gathered into one `SpecError` whose `.errors` maps each
dotted key ("training.max_steps", "prefix.num_virtual_tokens") to its message, so the page can put
every message beside its field at once.

Variants are stored as chosen: `"variants": ["no_projection", "projection"]` names standard variants
(STANDARD_VARIANTS), and an object `{"name": ..., "prefix": {...}}` is a custom one whose prefix
overrides the shared prefix. Each VariantSpec keeps its overrides (`changes`) and the resolved
config (`prefix`).

A run made by a sweep (engine/sweep.py) says so in an optional top-level `"sweep": {"id": ...,
"vary": {"prefix.num_virtual_tokens": 5}, "grid": {"prefix.num_virtual_tokens": [1, 5, 10]}}`
(SweepTag): which group it belongs to and the values it was given. The key is absent from every
other spec, and nothing else about the run depends on it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefixlab.core.config import ConfigError, PrefixTuningConfig
from prefixlab.engine import limits
from prefixlab.engine.metrics import METRICS as TASK_METRICS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("greedy", "sampling", "beam")
# The paper's comparison (Li & Liang 2021, sec. 4.3 and 7.2): the same prefix trained directly, and
# reparameterised by an MLP. A spec names them; each changes the shared prefix this way.
STANDARD_VARIANTS: dict[str, dict] = {
    "no_projection": {"prefix_projection": False},
    "projection": {"prefix_projection": True},
}
DEFAULT_VARIANTS = ("no_projection", "projection")
# The paper's baseline (Li & Liang 2021, sec. 6): the same base fully fine-tuned on the same batches,
# on a copy of its weights, beside the prefix variants. Not a prefix: a variant of kind "fine_tune".
FINE_TUNE = "fine_tune"
# The default spec's shared prefix: the paper's table-to-text prefix length (Li & Liang 2021, sec. 5).
DEFAULT_PREFIX = {"num_virtual_tokens": 10}


class SpecError(ValueError):
    """Bad experiment spec values. `.errors` maps each dotted key to its message (every problem
    found, in the order found); `.field` and `.message` are the first of them."""

    def __init__(self, field_or_errors: str | dict[str, str], message: str | None = None):
        errors = dict(field_or_errors) if isinstance(field_or_errors, dict) else {field_or_errors: message}
        if not errors:
            raise ValueError("SpecError needs at least one error")
        self.errors = errors
        self.field, self.message = next(iter(errors.items()))
        super().__init__("; ".join(f"{key}: {text}" for key, text in errors.items()))


class _Problems(dict):
    """{dotted key: message}, first message per key kept; `raise_if_any()` at the end."""

    def add(self, key: str, message: str) -> None:
        self.setdefault(key, message)

    def absorb(self, err: SpecError) -> None:
        for key, message in err.errors.items():
            self.add(key, message)

    def raise_if_any(self) -> None:
        if self:
            raise SpecError(dict(self))


# ---------------------------------------------------------------------------------------------
# The sections. Each checks its own fields in `problems()`; __post_init__ raises them all at once.
# ---------------------------------------------------------------------------------------------


def _at_least(problems: _Problems, section: str, obj: Any, name: str, minimum: float = 1, hint: str = "") -> None:
    value = getattr(obj, name)
    if value is not None and value < minimum:
        problems.add(f"{section}.{name}", f"must be >= {minimum}, got {value!r}{hint}")


class _Section:
    def __post_init__(self):
        problems = _Problems()
        self.check(problems)
        problems.raise_if_any()

    def check(self, problems: _Problems) -> None:  # pragma: no cover - every section overrides it
        raise NotImplementedError


@dataclass
class ModelSpec(_Section):
    name: str = field(
        default="tiny-gpt2",
        metadata={"help": "Base model: an offline preset (tiny-gpt2, tiny-llama, tiny-t5, tiny-gpt2-e2e, "
                          "tiny-llama-d2t), a Hub model id such as gpt2 or t5-small, or a local folder."},
    )

    def check(self, problems: _Problems) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            problems.add("model.name", f"must name a model, got {self.name!r}; try tiny-gpt2")


@dataclass
class DataSpec(_Section):
    source: str = field(
        default="e2e-synth",
        metadata={"help": "Task data: the built-in task e2e-synth, a local .jsonl/.csv file, or a "
                          "Hub dataset id (e2e_nlg, GEM/web_nlg, EdinburghNLP/xsum, ...)."},
    )
    source_column: str = field(default="source", metadata={"help": "Column holding the input text."})
    target_column: str = field(default="target", metadata={"help": "Column holding the output text."})
    hub_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name, if the dataset has several."}
    )
    separator: str = field(
        default=" => ",
        metadata={"help": "Text between source and target for causal LMs (seq2seq models ignore it)."},
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (empty: all)."}
    )
    max_eval_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation examples (empty: all)."}
    )

    def check(self, problems: _Problems) -> None:
        for name in ("source", "source_column", "target_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                problems.add(f"data.{name}", f"must not be empty, got {getattr(self, name)!r}")
        _at_least(problems, "data", self, "max_train_examples", hint="; leave empty to use every example")
        _at_least(problems, "data", self, "max_eval_examples", hint="; leave empty to use every example")


@dataclass
class TrainingSpec(_Section):
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    num_epochs: float = field(default=5.0, metadata={"help": "Passes over the training data."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=5, metadata={"help": "Examples per forward pass."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward passes per optimizer step (effective batch = batch x this)."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps, then linear decay to 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_length: int = field(
        default=256, metadata={"help": "Truncate each tokenised example to this many tokens."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for prefix initialisation and batch order."})
    eval_interval: int = field(
        default=100, metadata={"help": "Validation loss and adapter checkpoint every N optimizer steps."}
    )
    log_interval: int = field(default=10, metadata={"help": "Train loss, lr and tokens/s every N steps."})
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU), "
                          "fp32, bf16 or fp16.", "choices": PRECISIONS},
    )
    fine_tune_learning_rate: float = field(
        default=5e-5,
        metadata={"help": "Peak AdamW learning rate of the fine_tune baseline variant (the paper fine-tunes with "
                          "5e-5); the same warmup and decay as the prefixes."},
    )
    report_to: list[str] = field(
        default_factory=list,
        metadata={"help": "Also log losses and task metrics to these dashboards: tensorboard (event files in "
                          "runs/<id>/tensorboard) and/or trackio (its local database); optional packages "
                          "(pip install tensorboard / trackio).", "choices": ("tensorboard", "trackio")},
    )
    num_processes: int = field(
        default=1,
        metadata={"help": "Processes to train on, one per GPU, started by `accelerate launch` (batch_size is "
                          "per process: the effective batch is batch_size x gradient_accumulation_steps x this)."},
    )
    fused: bool = field(
        default=True,
        metadata={"help": "Train every variant in one batched pass of the frozen base (each variant's rows read "
                          "its own prefix; the same losses and gradients as one pass each; meant for GPUs, not yet measured "
                          "on one; on a 2-core CPU 0.89-0.95x the time of one pass each at batch 1 x 128, 1.03-1.04x "
                          "and 1.76x the memory at 8 x 128: bench paired). Off, or "
                          "where it cannot be exact (prefixes of different lengths, fp16): one pass per variant."},
    )
    metric_examples: int = field(
        default=16,
        metadata={"help": "At every evaluation, generate for the first N validation examples and score them with "
                          "training.metrics (the base model too, at step 0); 0: validation loss only."},
    )
    metrics: list[str] = field(
        default_factory=lambda: list(TASK_METRICS),
        metadata={"help": "Task metrics of those generations: bleu and chrf (sacrebleu), rouge_l (rouge-score), "
                          "slot_accuracy (attribute tables' values realised in the output).",
                  "choices": TASK_METRICS},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute each transformer block in backward instead of storing its activations: "
                          "0.31x the peak memory at 512 tokens on GPT-2 small (bench paired), one more forward per "
                          "block in backward; exact gradients."},
    )

    def check(self, problems: _Problems) -> None:
        if not self.learning_rate > 0:
            problems.add("training.learning_rate",
                         f"must be > 0, got {self.learning_rate!r}; the paper uses 5e-5 to 8e-5")
        if not self.fine_tune_learning_rate > 0:
            problems.add("training.fine_tune_learning_rate",
                         f"must be > 0, got {self.fine_tune_learning_rate!r}; the paper fine-tunes with 5e-5")
        if not self.num_epochs > 0:
            problems.add("training.num_epochs", f"must be > 0, got {self.num_epochs!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length",
                     "eval_interval", "log_interval", "num_processes"):
            _at_least(problems, "training", self, name)
        _at_least(problems, "training", self, "warmup_steps", minimum=0)
        if self.weight_decay < 0:
            problems.add("training.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.seed < 2**32:  # numpy's and accelerate's set_seed take no other
            problems.add("training.seed", f"must be between 0 and {2**32 - 1}, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            problems.add("training.precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _at_least(problems, "training", self, "metric_examples", minimum=0,
                  hint="; 0 turns task metrics off")
        unknown_metrics = [name for name in self.metrics if name not in TASK_METRICS]
        if unknown_metrics or len(set(self.metrics)) != len(self.metrics):
            problems.add("training.metrics", f"must name each of {', '.join(TASK_METRICS)} at most once, "
                                             f"got {self.metrics!r}")
        elif not self.metrics and self.metric_examples:
            problems.add("training.metrics", "no metric chosen; choose at least one, or set training.metric_examples "
                                             "to 0 to score nothing")
        unknown = [name for name in self.report_to if name not in ("tensorboard", "trackio")]
        if unknown or len(set(self.report_to)) != len(self.report_to):
            problems.add("training.report_to", f"must name tensorboard and/or trackio, each once, got {self.report_to!r}")
        if self.max_steps is not None and self.max_steps >= 1:
            if self.eval_interval > self.max_steps:
                problems.add("training.eval_interval",
                             f"{self.eval_interval} is more than training.max_steps={self.max_steps}, so "
                             "the run would never evaluate; set it to at most max_steps")
            if self.warmup_steps > self.max_steps:
                problems.add("training.warmup_steps",
                             f"{self.warmup_steps} is more than training.max_steps={self.max_steps}; "
                             "use fewer warmup steps")


@dataclass
class GenerationSpec(_Section):
    max_new_tokens: int = field(default=60, metadata={"help": "Tokens to generate per prompt."})
    strategy: str = field(
        default="greedy",
        metadata={"help": "greedy, sampling (temperature/top_p) or beam (num_beams).",
                  "choices": STRATEGIES},
    )
    num_beams: int = field(default=5, metadata={"help": "Beams for beam search (>= 2)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    prompts: list[str] = field(
        default_factory=list,
        metadata={"help": "Sources to generate from, one per line (empty: the first test examples)."},
    )
    num_prompts: int = field(
        default=5, metadata={"help": "Test examples to use when no prompts are given."}
    )

    def check(self, problems: _Problems) -> None:
        _at_least(problems, "generation", self, "max_new_tokens")
        _at_least(problems, "generation", self, "num_prompts")
        if self.strategy not in STRATEGIES:
            problems.add("generation.strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "beam" and self.num_beams < 2:
            problems.add("generation.num_beams", f"beam search needs at least 2 beams, got {self.num_beams!r}; "
                                                 "raise it or choose strategy greedy")
        self._check_bounds(problems)
        if self.strategy == "sampling" and not self.temperature > 0:
            problems.add("generation.temperature", f"must be > 0 for sampling, got {self.temperature!r}")
        if self.strategy == "sampling" and not 0 < self.top_p <= 1:
            problems.add("generation.top_p", f"must be in (0, 1] for sampling, got {self.top_p!r}")
        if not isinstance(self.prompts, list) or not all(isinstance(p, str) for p in self.prompts):
            problems.add("generation.prompts", f"must be a list of strings, got {self.prompts!r}")
        elif any(not p.strip() for p in self.prompts):
            problems.add("generation.prompts", "contains an empty prompt; remove blank entries")
        elif any(len(p) > limits.MAX_PROMPT_CHARS for p in self.prompts):
            number, longest = max(enumerate(self.prompts, start=1), key=lambda item: len(item[1]))
            problems.add("generation.prompts", f"prompt {number} is {len(longest):,} characters, over the limit of "
                                               f"{limits.MAX_PROMPT_CHARS:,} (MAX_PROMPT_CHARS in "
                                               "prefixlab/engine/limits.py); shorten it")

    def _check_bounds(self, problems: _Problems) -> None:
        """Beam search keeps num_beams sequences of up to max_new_tokens each per prompt: bounded by
        limits.MAX_BEAMS and limits.MAX_GENERATION_TOKENS, so a typo cannot make the worker (which
        generates the samples after all the training) or the page run out of memory."""
        where = "in prefixlab/engine/limits.py"
        if self.strategy == "beam" and isinstance(self.num_beams, int) and self.num_beams > limits.MAX_BEAMS:
            problems.add("generation.num_beams", f"{self.num_beams:,} beams is over the limit of {limits.MAX_BEAMS} "
                                                 f"(MAX_BEAMS {where}); use at most {limits.MAX_BEAMS}")
            return  # the product would only repeat it
        beams = self.num_beams if self.strategy == "beam" and isinstance(self.num_beams, int) else 1
        tokens = self.max_new_tokens
        if isinstance(tokens, int) and beams >= 1 and tokens * beams > limits.MAX_GENERATION_TOKENS:
            if beams > 1:
                message = (f"generation.max_new_tokens={tokens:,} x generation.num_beams={beams:,} is "
                           f"{tokens * beams:,} tokens per prompt, over the limit of {limits.MAX_GENERATION_TOKENS:,} "
                           f"(MAX_GENERATION_TOKENS {where}); lower max_new_tokens to at most "
                           f"{limits.MAX_GENERATION_TOKENS // beams:,} or use fewer beams")
            else:
                message = (f"{tokens:,} new tokens per prompt is over the limit of {limits.MAX_GENERATION_TOKENS:,} "
                           f"(MAX_GENERATION_TOKENS {where}); use at most {limits.MAX_GENERATION_TOKENS:,}")
            problems.add("generation.max_new_tokens", message)


SECTIONS: dict[str, type] = {
    "model": ModelSpec, "data": DataSpec, "training": TrainingSpec, "generation": GenerationSpec,
}


@dataclass
class VariantSpec:
    """One variant: its name, what it changes in the shared prefix, and the resulting config; or, of
    kind "fine_tune", the full fine-tuning baseline (its prefix is the shared one, unused)."""

    name: str = field(metadata={"help": "Variant name: a folder under adapters/ and a curve label."})
    prefix: PrefixTuningConfig = field(metadata={"help": "This variant's prefix-tuning configuration."})
    changes: dict = field(default_factory=dict, metadata={"help": "PrefixTuningConfig fields this variant sets "
                                                                   "over the shared prefix."})
    kind: str = field(default="prefix", metadata={"help": "prefix, or fine_tune (the full fine-tuning baseline)."})

    @property
    def standard(self) -> bool:
        """Named as a standard variant (or the baseline) and changing exactly what that one changes."""
        if self.kind == FINE_TUNE:
            return True
        return STANDARD_VARIANTS.get(self.name) == self.changes

    @property
    def is_prefix(self) -> bool:
        return self.kind == "prefix"


@dataclass
class SweepTag:
    """A run's place in a sweep: the sweep's id, this run's values of the fields the sweep varies, and
    every value of each (engine/sweep.py writes them; a sweep view reads them)."""

    id: str = field(metadata={"help": "The sweep's id, shared by all of its runs."})
    vary: dict[str, Any] = field(metadata={"help": "{dotted spec field: this run's value}, e.g. "
                                                   "{\"prefix.num_virtual_tokens\": 5}."})
    grid: dict[str, list] = field(default_factory=dict,
                                  metadata={"help": "{dotted spec field: every value the sweep gives it}."})

    def to_dict(self) -> dict:
        out = {"id": self.id, "vary": dict(self.vary)}
        if self.grid:
            out["grid"] = {key: list(values) for key, values in self.grid.items()}
        return out


@dataclass
class ExperimentSpec:
    name: str = field(default="experiment", metadata={"help": "A short name for the run."})
    model: ModelSpec = field(default_factory=ModelSpec)
    prefix: PrefixTuningConfig = field(default_factory=lambda: PrefixTuningConfig(**DEFAULT_PREFIX),
                                       metadata={"help": "The prefix every variant starts from."})
    variants: list[VariantSpec] = field(default_factory=list)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    description: str = field(default="", metadata={"help": "Free text; presets say how to run them."})
    sweep: SweepTag | None = field(default=None, metadata={"help": "The sweep this run belongs to, if any."})

    def __post_init__(self):
        if not self.variants:
            self.variants = standard_variants(self.prefix, DEFAULT_VARIANTS)
        problems = _Problems()
        self.check(problems)
        problems.raise_if_any()

    def check(self, problems: _Problems) -> None:
        """Checks across sections; each section already checked its own fields."""
        if not isinstance(self.name, str):
            problems.add("experiment.name", f"must be text, got {self.name!r}")
        elif not self.name.strip():
            problems.add("experiment.name", f"must not be empty, got {self.name!r}")
        names = [v.name for v in self.variants]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not re.fullmatch(r"[\w-]+", name):  # a folder and a module name
                problems.add(f"variants[{i}].name", f"{name!r} cannot name a variant; use letters, digits, _ and -")
            elif name == "base":
                problems.add(f"variants[{i}].name", "'base' is the name of the untuned model; rename it")
            elif _module_dict_attribute(name):
                problems.add(f"variants[{i}].name", f"{name!r} is the name of a torch.nn.ModuleDict attribute, "
                                                    "which cannot name an adapter; rename it")
        if self.variants and not self.prefix_variants:
            problems.add("variants", f"{FINE_TUNE} is the baseline the prefix variants are measured against; choose "
                                     f"at least one prefix variant ({', '.join(STANDARD_VARIANTS)}) beside it")
        for i, v in enumerate(self.variants):
            if not v.is_prefix:
                continue
            if v.prefix.num_virtual_tokens is None:
                problems.add(self.prefix_key(i, "num_virtual_tokens"),
                             "is empty; set the prefix length, e.g. 10 (the paper's table-to-text value)")
            if v.prefix.inference_mode:
                problems.add(self.prefix_key(i, "inference_mode"),
                             "is true, which freezes the prefix and drops the projection MLP (PEFT's mode for "
                             "loading a saved adapter); a spec trains, so remove it or set it false")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.add("variants", f"names must be unique, {duplicates} repeat; rename one")

    def prefix_key(self, index: int, name: str) -> str:
        """The dotted key of the value variant `index` uses for PrefixTuningConfig field `name`: its own
        override ("variants[1].prefix.encoder_hidden_size") or the shared prefix's ("prefix.<name>")."""
        return f"variants[{index}].prefix.{name}" if name in self.variants[index].changes else f"prefix.{name}"

    # --- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The JSON document: the shared prefix's fields that are set, and the variants as chosen
        (a standard variant by its name, a custom one as {"name", "prefix": its changes})."""
        shared = {k: v for k, v in self.prefix.to_json_dict().items()
                  if v is not None and k != "peft_type" and not (k == "inference_mode" and v is False)
                  and not (k == "prefix_projection" and v is False)}
        variants = [v.name if v.standard else {"name": v.name, "prefix": dict(v.changes)} for v in self.variants]
        out = {"name": self.name, "description": self.description, "model": dataclasses.asdict(self.model),
               "prefix": shared, "variants": variants}
        for section in ("data", "training", "generation"):
            out[section] = dataclasses.asdict(getattr(self, section))
        if self.sweep is not None:
            out["sweep"] = self.sweep.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentSpec:
        """Build from a JSON object, gathering every problem into one SpecError. Keys starting with
        "_" are comments (presets use `_command`).

        "prefix" is shared by every variant; "variants" lists standard variant names and/or custom
        variants {"name", "prefix": overrides}; without it, the paper's pair no_projection / projection.
        """
        if not isinstance(d, dict):
            raise SpecError("experiment", f"must be a JSON object, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        problems = _Problems()
        known = {"name", "description", "prefix", "variants", "sweep", *SECTIONS}
        unknown = sorted(set(d) - known)
        if unknown:
            problems.add(unknown[0], f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        sections = {name: _section_from_dict(name, d.get(name, {}), problems) for name in SECTIONS}
        shared_values = d.get("prefix", {})
        if not isinstance(shared_values, dict):
            problems.add("prefix", f"must be a JSON object, got {shared_values!r}")
            shared_values = {}
        if "prefix" not in d:
            shared_values = dict(DEFAULT_PREFIX)
        shared_values = _prefix_values(shared_values, lambda name: f"prefix.{name}", problems)
        shared = None if shared_values is None else _prefix_config(shared_values, lambda name: f"prefix.{name}", problems)
        variants = _variants_from_dict(shared_values, shared, d.get("variants"), problems) if shared is not None else []
        experiment = {}
        for key in ("name", "description"):
            if key in d:
                experiment[key] = d[key]
        if d.get("sweep") is not None:
            experiment["sweep"] = _sweep_from_dict(d["sweep"], problems)
        if problems:  # every problem with the document's values; the checks across them need good values
            problems.raise_if_any()
        try:
            return cls(prefix=shared, variants=variants, **experiment, **sections)
        except SpecError as err:
            problems.absorb(err)
            problems.raise_if_any()
            raise

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExperimentSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError("experiment", f"not valid JSON ({err.msg} at line {err.lineno}, "
                                          f"column {err.colno}); fix the file") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentSpec:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SpecError("experiment", f"cannot read spec file {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise SpecError("experiment", f"cannot read spec file {path}: not UTF-8 text (byte "
                                          f"0x{err.object[err.start]:02x} at position {err.start}); save it as UTF-8") from None
        try:
            return cls.from_json(text)
        except SpecError as err:
            raise SpecError({key: f"{message} (in {path})" for key, message in err.errors.items()}) from None

    # --- derived --------------------------------------------------------------------------------

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def prefix_variants(self) -> list[VariantSpec]:
        """The variants that train a prefix (every one but the fine-tuning baseline)."""
        return [v for v in self.variants if v.is_prefix]

    @property
    def fine_tune(self) -> VariantSpec | None:
        return next((v for v in self.variants if v.kind == FINE_TUNE), None)


SWEEP_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,99}")


def _sweep_from_dict(d: Any, problems: _Problems) -> SweepTag | None:
    """The "sweep" object: an id (letters, digits, _ . -), "vary" {field: JSON scalar} naming spec fields
    ("prefix.<PrefixTuningConfig field>" or "<section>.<field>"), and optionally "grid" {the same
    fields: every value, this run's among them}."""
    if not isinstance(d, dict):
        problems.add("sweep", f"must be a JSON object with an id and vary, got {d!r}")
        return None
    found = len(problems)
    for key in sorted(k for k in d if k not in ("id", "vary", "grid") and not k.startswith("_")):
        problems.add(f"sweep.{key}", "unknown key; a sweep has an id, vary and grid")
    sweep_id, vary, grid = d.get("id"), d.get("vary"), d.get("grid") or {}
    if not isinstance(sweep_id, str) or not SWEEP_ID.fullmatch(sweep_id):
        problems.add("sweep.id", f"must be 1 to 100 letters, digits, _, . or - (starting with a letter or digit), "
                                 f"got {sweep_id!r}")
    if not isinstance(vary, dict) or not vary:
        problems.add("sweep.vary", f"must be an object {{field: value}} with at least one field, got {vary!r}")
        vary = {}
    for key, value in vary.items():
        if not _spec_field(key):
            problems.add(f"sweep.vary.{key}", "is not a field of the spec; name one as prefix.<field> or "
                                              f"<section>.<field> ({', '.join(SECTIONS)})")
        elif not _json_scalar(value):
            problems.add(f"sweep.vary.{key}", f"must be a number, text, true/false or null, got {value!r}")
    if not isinstance(grid, dict) or (grid and set(grid) != set(vary)):
        problems.add("sweep.grid", f"must be an object with the fields of vary ({', '.join(vary)}), got {grid!r}")
        grid = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values or not all(_json_scalar(v) for v in values):
            problems.add(f"sweep.grid.{key}", f"must be a non-empty list of values, got {values!r}")
        elif vary.get(key) not in values:
            problems.add(f"sweep.grid.{key}", f"does not hold this run's value {vary.get(key)!r}")
    return SweepTag(sweep_id, dict(vary), {k: list(v) for k, v in grid.items()}) if len(problems) == found else None


def _spec_field(key: Any) -> bool:
    """Whether `key` names a field of the spec: "prefix.<PrefixTuningConfig field>" or "<section>.<field>"."""
    section, _, name = key.partition(".") if isinstance(key, str) else ("", "", "")
    if section == "prefix":
        return name in prefix_field_names()
    return section in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[section])}


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and value == value
                                                                    and abs(value) != float("inf"))


def _module_dict_attribute(name: str) -> bool:
    """Whether a prefix named `name` would clash with an attribute of the ModuleDict holding them.
    The standard variants' names never do, so a spec of them is checked without importing torch."""
    if name in STANDARD_VARIANTS or name == FINE_TUNE:
        return False
    import torch

    return hasattr(torch.nn.ModuleDict(), name)


def standard_variants(prefix: PrefixTuningConfig, names) -> list[VariantSpec]:
    """The named standard variants of `prefix` (see STANDARD_VARIANTS)."""
    return [VariantSpec(name, dataclasses.replace(prefix, **STANDARD_VARIANTS[name]), dict(STANDARD_VARIANTS[name]))
            for name in names]


def _section_from_dict(section: str, d: Any, problems: _Problems):
    """A section from its JSON object: bad values are named in `problems` and replaced by the field's
    default, so the section's own checks still run on the rest."""
    cls = SECTIONS[section]
    if not isinstance(d, dict):
        problems.add(section, f"must be a JSON object, got {d!r}")
        d = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(d) - names):
        problems.add(f"{section}.{key}", f"unknown field; {section} has {', '.join(sorted(names))}")
    types_ = field_types(cls)
    values = {}
    for key, value in d.items():
        if key in names:
            try:
                values[key] = coerce(f"{section}.{key}", value, *types_[key])
            except SpecError as err:
                problems.absorb(err)
    try:
        return cls(**values)
    except SpecError as err:
        problems.absorb(err)
        return cls()


def _variants_from_dict(shared: dict, shared_config: PrefixTuningConfig, variants: Any,
                        problems: _Problems) -> list[VariantSpec]:
    """The variants, each a standard name, the baseline "fine_tune", or {"name", "prefix": changes};
    `shared` holds the shared prefix's coerced values, which every variant's changes override."""
    if variants is None:
        variants = list(DEFAULT_VARIANTS)
    if not isinstance(variants, list) or not variants:
        problems.add("variants", f"must be a non-empty list of variant names ({', '.join(STANDARD_VARIANTS)}) or "
                                 f"{{name, prefix}} objects, got {variants!r}")
        return []
    out = []
    for i, v in enumerate(variants):
        where = f"variants[{i}].prefix"
        if v == FINE_TUNE:
            out.append(VariantSpec(FINE_TUNE, shared_config, {}, kind=FINE_TUNE))
            continue
        if isinstance(v, str):
            if v not in STANDARD_VARIANTS:
                problems.add(f"variants[{i}]", f"{v!r} is not a standard variant ({', '.join(STANDARD_VARIANTS)}, or "
                                               f"the baseline {FINE_TUNE}); name one of them, or give "
                                               "{\"name\": ..., \"prefix\": {...}}")
                continue
            name, changes = v, dict(STANDARD_VARIANTS[v])
        elif isinstance(v, dict) and "name" in v:
            unknown = sorted(k for k in v if k not in ("name", "prefix") and not k.startswith("_"))
            if unknown:
                problems.add(f"variants[{i}].{unknown[0]}", "unknown key; a variant has only a name and a prefix "
                                                            "(keys starting with _ are comments)")
                continue
            name, raw = v["name"], v.get("prefix", {})
            if not isinstance(raw, dict):
                problems.add(where, f"must be a JSON object, got {raw!r}")
                continue
            changes = _prefix_values(raw, lambda field_name: f"{where}.{field_name}", problems)
            if changes is None:
                continue
        else:
            problems.add(f"variants[{i}]", f"must be a variant name or an object with a name and a prefix, got {v!r}")
            continue
        config = _prefix_config({**shared, **changes}, lambda field_name, c=changes: (
            f"{where}.{field_name}" if field_name in c else f"prefix.{field_name}"), problems)
        if config is not None:
            out.append(VariantSpec(name, config, dict(changes)))
    return out


def _prefix_values(d: dict, key, problems: _Problems) -> dict | None:
    """PrefixTuningConfig field values from JSON, each coerced to its field's type; None (with the
    problems named, `key(field)` giving each one's dotted key) when any is unknown or bad."""
    names = prefix_field_names()
    types_ = field_types(PrefixTuningConfig)
    values, bad = {}, False
    for name, value in d.items():
        if name not in names:
            problems.add(key(name), f"unknown PrefixTuningConfig field; it has {', '.join(sorted(names))}")
            bad = True
            continue
        try:
            values[name] = coerce(key(name), value, *types_[name])
        except SpecError as err:
            problems.absorb(err)
            bad = True
    return None if bad else values


def _prefix_config(values: dict, key, problems: _Problems) -> PrefixTuningConfig | None:
    """PrefixTuningConfig(**values), or None with its error named on `key(field)`."""
    try:
        return PrefixTuningConfig(**values)
    except ConfigError as err:
        problems.add(key(err.field), str(err))
    except (ValueError, TypeError) as err:
        problems.add(key("?").rsplit(".", 1)[0], str(err))
    return None


def prefix_field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(PrefixTuningConfig)}


# ---------------------------------------------------------------------------------------------
# Coercion of JSON values (and the page's widget values, reshaped into the same document)
# ---------------------------------------------------------------------------------------------


def unwrap_optional(type_: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / Optional[X]; other unions keep their first member."""
    origin = typing.get_origin(type_)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(type_) if a is not type(None)]
        optional = len(args) < len(typing.get_args(type_))
        return (args[0] if args else Any), optional
    return type_, False


def type_name(type_: Any) -> str:
    """"int", "float", "bool", "str" or "list[str]": the kind of value a field holds."""
    if typing.get_origin(type_) is list:
        return "list[str]"
    if typing.get_origin(type_) is typing.Literal or (isinstance(type_, type) and issubclass(type_, enum.Enum)):
        return "str"
    return getattr(type_, "__name__", "str")


def field_types(cls) -> dict[str, tuple[Any, bool]]:
    """{field: (annotation, nullable)}; PEFT writes `token_dim: int = None`, so a None default makes
    a field nullable as much as an Optional annotation does."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is None) for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, type_: Any, nullable: bool = False) -> Any:
    """Turn a JSON or widget value into `type_`, or raise SpecError naming `key` and the value."""
    base, optional = unwrap_optional(type_)
    optional = optional or nullable
    if typing.get_origin(base) is list and value in (None, ""):
        return []  # an empty multi-line box: no items
    if value is None or (value == "" and base is not str):
        if optional or base is Any:
            return None
        raise SpecError(key, f"is required, got {value!r}; enter a value")
    if base is bool:
        return _to_bool(key, value)
    if base is int:
        return _to_int(key, value)
    if base is float:
        return _to_float(key, value)
    if base is str and not isinstance(value, str):
        raise SpecError(key, f"must be text, got {value!r}")
    if typing.get_origin(base) is list:
        return _to_str_list(key, value)
    return value


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise SpecError(key, f"must be true or false, got {value!r}")


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SpecError(key, f"must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(key, f"must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise SpecError(key, f"must be a whole number, got {value!r}; round it")
    return int(number)


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpecError(key, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(key, f"must be a number such as 5e-5, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SpecError(key, f"must be a finite number, got {value!r}")
    return number


def _to_str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):  # a multi-line text box: one item a line, blank lines dropped
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, list):
        return value
    raise SpecError(key, f"must be a list of strings or text with one item a line, got {value!r}")
