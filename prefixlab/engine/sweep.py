"""Sweeps: one experiment spec run once per value of one or two of its fields.

A sweep is a group of ordinary runs (DESIGN.md): each is a run folder like any other, whose spec
carries `"sweep": {"id", "vary": {field: its value}, "grid": {field: every value}}` (spec.SweepTag).
Nothing else about a run changes because it belongs to a sweep, and everything a sweep view needs is
in its runs' folders, so a sweep survives restarts of the app as its runs do.

    plan = plan_sweep(spec, {"prefix.num_virtual_tokens": [1, 5, 10, 20, 40]})  # SweepError if bad
    run_ids = submit_sweep(JobQueue(runs_dir), plan)                           # queued, in order
    view = read_sweep(runs_dir, plan.id)         # its runs and points, as they are now
    list_sweeps(runs_dir)                        # every sweep in a runs folder, newest first

`plan_sweep` expands the cartesian product of the values (two fields: every pair) and validates every
expanded spec with ExperimentSpec.from_dict and engine.checks.check before anything is queued: every
problem is gathered into one SweepError, naming the value (or pair of values) and the field. The
paper's comparisons are sweeps of this kind: prefix length (Li & Liang 2021, Figure 4), training-set
size (its low-data study), the projection's width.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefixlab.core.config import PrefixTuningConfig
from prefixlab.engine import checks
from prefixlab.engine.runs import (DONE, FINAL_STATES, QUEUED, JobQueue, RunDir, RunFileError, RunFileUnreadable,
                                   RunsFolderError, atomic_write_json, new_run_id, new_status, read_json,
                                   worker_lock)
from prefixlab.engine.metrics import METRICS
from prefixlab.engine.spec import (SECTIONS, ExperimentSpec, SpecError, coerce, field_types, type_name,
                                   unwrap_optional)

# At most two fields: a line per value of the second, over the first, is as much as one chart reads.
MAX_FIELDS = 2
# A typo in a value list must not queue a week of runs; a bigger study is several sweeps.
MAX_SWEEP_RUNS = 100
# Task metrics a run may report per variant (on 0-100): on metrics.jsonl's own lines (one per model
# and evaluation) and in summary.json's per-variant "metrics".
TASK_METRICS = METRICS
# PrefixTuningConfig fields that are scalars but not settings of an experiment: PEFT's bookkeeping
# (the spec drops peft_type; the model decides task_type) and inference_mode, which a spec refuses.
NOT_SWEEPABLE = frozenset({"peft_type", "task_type", "inference_mode", "peft_version", "base_model_name_or_path",
                           "revision"})
NONE_WORDS = ("none", "null")  # how a value list says "empty" (data.max_train_examples=100,none: all)


class SweepError(SpecError):
    """A sweep that cannot be run. `.errors` maps where each problem is to its message: a field
    ("prefix.foo", "vary"), or the values that make a spec bad ("prefix.num_virtual_tokens=0", or
    "training.max_steps=2, prefix.num_virtual_tokens=5" for a pair)."""


# ---------------------------------------------------------------------------------------------
# Fields


def _field_class(section: str):
    return PrefixTuningConfig if section == "prefix" else SECTIONS.get(section)


def sweepable_fields() -> list[str]:
    """Every field a sweep can vary, "section.name": the scalar fields (numbers, text, true/false) of the
    shared prefix and of each section, in the spec's order."""
    out = []
    for section in ("prefix", *SECTIONS):
        for name, (type_, _) in field_types(_field_class(section)).items():
            if name not in NOT_SWEEPABLE and type_name(unwrap_optional(type_)[0]) in ("int", "float", "bool", "str"):
                out.append(f"{section}.{name}")
    return out


def describe_sweepable() -> str:
    """The sweepable fields, grouped by section, for a message."""
    groups: dict[str, list[str]] = {}
    for name in sweepable_fields():
        section, _, leaf = name.partition(".")
        groups.setdefault(section, []).append(leaf)
    return "; ".join(f"{section}.{{{', '.join(leaves)}}}" for section, leaves in groups.items())


def field_value(spec: ExperimentSpec, name: str) -> Any:
    """The value `spec` has for the dotted field `name` (the shared prefix's, for prefix fields), as JSON."""
    section, _, leaf = name.partition(".")
    value = getattr(spec.prefix if section == "prefix" else getattr(spec, section), leaf)
    return getattr(value, "value", value)  # an enum as its string


def short_name(name: str) -> str:
    """"num_virtual_tokens" for "prefix.num_virtual_tokens": what run names and chart labels use."""
    return name.partition(".")[2] or name


def format_value(value: Any) -> str:
    """A value as a person reads it on a label: 5, 5e-05, true, none, the text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label(values: Mapping[str, Any]) -> str:
    """"prefix.num_virtual_tokens=5, training.max_steps=20": a combination of values."""
    return ", ".join(f"{name}={format_value(value)}" for name, value in values.items())


# ---------------------------------------------------------------------------------------------
# Values


def parse_vary(text: str) -> tuple[str, list]:
    """"prefix.num_virtual_tokens=1,5,10" -> ("prefix.num_virtual_tokens", ["1", "5", "10"]): the
    command line's `--vary` (values stay text; plan_sweep coerces them to the field's type). A value
    list starting with "[" is JSON (for text holding commas: 'prefix.prefix_tuning_init_text=["a, b", "c"]')."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SweepError("vary", f"needs FIELD=VALUE1,VALUE2,..., got {text!r}; e.g. prefix.num_virtual_tokens=1,5,10")
    return name, parse_values(name, rest)


def parse_values(name: str, text: str) -> list:
    """The values of one field from text: comma-separated, or a JSON list; empty text is no values."""
    text = text.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise SweepError(name, f"values {text!r} are not a JSON list ({err.msg}); write them as "
                                   "V1,V2,... or a JSON list") from None
        if not isinstance(values, list):
            raise SweepError(name, f"values {text!r} are not a JSON list; write them as V1,V2,...")
        return values
    if not text:
        return []
    values = [item.strip() for item in text.split(",")]
    if any(not item for item in values):
        raise SweepError(name, f"values {text!r} hold an empty one; remove the extra comma, or write none for "
                               "an empty value")
    return values


def typed_values(name: str, raw: Sequence, problems: dict[str, str]) -> list:
    """`raw` (text or JSON values) as values of field `name`, each coerced as the spec coerces it; every
    problem goes into `problems`, keyed by the field or by "field=value"."""
    section, _, leaf = name.partition(".")
    if name not in sweepable_fields():
        problems[name] = f"is not a field a sweep can vary; it can vary {describe_sweepable()}"
        return []
    type_, nullable = field_types(_field_class(section))[leaf]
    kind, optional = type_name(unwrap_optional(type_)[0]), unwrap_optional(type_)[1]
    nullable = nullable or optional  # PEFT's `int = None` fields too (their own checks say when None is wrong)
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        problems[name] = f"needs a list of values, got {raw!r}"
        return []
    if not raw:
        problems[name] = f"has no values to sweep over; give one or more ({kind} values" + (
            ", or none)" if optional else ")")
        return []
    values = []
    for item in raw:
        value = None if isinstance(item, str) and item.strip().lower() in NONE_WORDS and nullable else item
        try:
            value = coerce(name, value, type_, nullable)
        except SpecError as err:
            problems[f"{name}={format_value(item)}"] = err.message
            continue
        if any(type(v) is type(value) and v == value for v in values):
            problems[name] = f"{format_value(value)} is given twice; give each value once"
            continue
        values.append(value)
    return values


# ---------------------------------------------------------------------------------------------
# Planning: expand and validate, before anything is queued


@dataclass
class SweepPlan:
    """A validated sweep, not yet queued: its id, {field: values} in order, and one spec per
    combination (the cartesian product, the last field varying fastest), each tagged with the sweep."""

    id: str
    grid: dict[str, list]
    specs: list[ExperimentSpec]

    @property
    def fields(self) -> list[str]:
        return list(self.grid)

    def values(self, index: int) -> dict[str, Any]:
        """The values the `index`-th spec was given."""
        return dict(self.specs[index].sweep.vary)


def new_sweep_id(name: str) -> str:
    """"20261205-101500-offline-tiny-3f9a": sortable by creation (UTC), readable, unique."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-").lower()[:24] or "sweep"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{slug}-{secrets.token_hex(2)}"


def experiment_name(spec: ExperimentSpec) -> str:
    """The spec's name, without the values a sweep appended to it (a sweep of one of a sweep's runs)."""
    return _base_name({"name": spec.name}) if spec.sweep else spec.name


def expand(spec: ExperimentSpec, grid: Mapping[str, Sequence], sweep_id: str) -> list[dict]:
    """One spec document per combination of `grid`'s (already typed) values, each with the values set,
    the values in its name, and its sweep tag."""
    base = spec.to_dict()
    base.pop("sweep", None)
    documents = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        document = json.loads(json.dumps(base))  # a deep copy
        for name, value in values.items():
            section, _, leaf = name.partition(".")
            document.setdefault(section, {})[leaf] = value
        tags = ", ".join(f"{short_name(n)}={format_value(v)}" for n, v in values.items())
        document["name"] = f"{experiment_name(spec)} ({tags})"
        document["sweep"] = {"id": sweep_id, "vary": values, "grid": {n: list(v) for n, v in grid.items()}}
        documents.append(document)
    return documents


def plan_sweep(spec: ExperimentSpec, vary: Mapping[str, Sequence], *, sweep_id: str | None = None,
               check: bool = True) -> SweepPlan:
    """Validate a sweep of `spec` over `vary` ({field: values}, one or two fields; values typed or as
    text, e.g. from parse_vary) and return its plan. Raises SweepError with every problem: an unknown
    field or an empty list (with what is allowed), a value the field cannot take, and every expanded
    spec that ExperimentSpec.from_dict or (`check`, the default) engine.checks.check refuses, named by
    its value(s). Nothing is written."""
    if not isinstance(vary, Mapping) or not vary:
        raise SweepError("vary", f"a sweep varies one or two fields, got none; it can vary {describe_sweepable()}")
    problems: dict[str, str] = {}
    if len(vary) > MAX_FIELDS:
        problems["vary"] = f"a sweep varies at most {MAX_FIELDS} fields, got {len(vary)} ({', '.join(vary)})"
    grid = {name: typed_values(name, values, problems) for name, values in vary.items()}
    for name in grid:
        if name.startswith("prefix.") and name not in problems and all(short_name(name) in v.changes
                                                                       for v in spec.prefix_variants):
            names = ", ".join(v.name for v in spec.prefix_variants)
            problems[name] = (f"is set by every variant of the spec ({names}), so the sweep would change no run; "
                              "sweep another field, or remove it from the variants")
    if any("=" not in key for key in problems) or not all(grid.values()):  # no sweep to expand
        raise SweepError(problems)
    runs = math.prod(len(values) for values in grid.values())
    if runs > MAX_SWEEP_RUNS:
        raise SweepError("vary", f"{' x '.join(str(len(v)) for v in grid.values())} values make {runs} runs, over the "
                                 f"limit of {MAX_SWEEP_RUNS} (MAX_SWEEP_RUNS in prefixlab/engine/sweep.py); "
                                 "give fewer values")
    sweep_id = sweep_id or new_sweep_id(experiment_name(spec))
    specs, failures = [], []
    for document in expand(spec, grid, sweep_id):
        values = document["sweep"]["vary"]
        try:
            expanded = ExperimentSpec.from_dict(document)
        except SpecError as err:
            failures.append((values, err.errors))
            continue
        errors = checks.check(expanded).errors if check else {}
        if errors:
            failures.append((values, errors))
        else:
            specs.append(expanded)
    problems.update(describe_failures(failures, grid))
    if problems:
        raise SweepError(problems)
    return SweepPlan(sweep_id, grid, specs)


def describe_failures(failures: list[tuple[dict, dict[str, str]]], grid: Mapping[str, list]) -> dict[str, str]:
    """{where: message} for the expanded specs that were refused. A problem every run has is the base
    spec's, named by its own field once; one that every run with a value of one field has is named by
    that value ("training.max_steps=1"); any other by its pair of values. A message is prefixed by its
    own field when that is not a varied one."""
    where: dict[tuple[str, str], list[dict]] = {}
    for values, errors in failures:
        for item in errors.items():
            where.setdefault(item, []).append(values)
    runs = math.prod(len(v) for v in grid.values())
    out: dict[str, list[str]] = {}
    for (key, message), combinations in where.items():
        if len(combinations) == runs:
            out.setdefault(key, []).append(message)
            continue
        text = message if key in grid else f"{key}: {message}"
        for values in combinations:
            labels = [f"{n}={format_value(values[n])}" for n in grid
                      if sum(c[n] == values[n] for c in combinations) == runs // len(grid[n])]
            place = labels[0] if labels else label(values)
            if text not in out.setdefault(place, []):
                out[place].append(text)
    return {place: "; ".join(messages) for place, messages in out.items()}


def submit_sweep(queue: JobQueue, plan: SweepPlan) -> list[str]:
    """Queue every run of the plan, in its order (the queue runs them oldest first); returns their ids.
    Raises runs.RunsFolderError when the runs folder cannot take them (the runs queued before stay)."""
    return [queue.submit(spec) for spec in plan.specs]


class Reservation:
    """The run folders of a plan that this process trains itself (the CLI's `sweep` without --queue):
    made queued, like JobQueue.submit's, while this process holds each one's worker lock, so that no
    page's queue starts them (it skips a queued run whose lock is held, and starts nothing while any
    lock is held). `release(i)` lets run i's lock go (the worker takes it again, in this thread);
    leaving the block releases them all, and a run still queued then is free for any queue."""

    def __init__(self):
        self.runs: list[RunDir] = []
        self._locks: list[ExitStack] = []

    def release(self, index: int) -> None:
        self._locks[index].close()

    def close(self) -> None:
        for stack in self._locks:
            stack.close()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reserve_sweep(runs_dir: str | Path, plan: SweepPlan) -> Reservation:
    """A queued run folder per spec of `plan`, in order, each held by this process (see Reservation).
    Raises runs.RunsFolderError, leaving none of them behind, when the runs folder cannot take them."""
    runs_dir = Path(runs_dir)
    reservation = Reservation()
    try:
        for spec in plan.specs:
            while True:
                run = RunDir(runs_dir / new_run_id(spec.name, runs_dir))
                try:
                    run.path.mkdir(parents=True)
                    break
                except FileExistsError:  # another process took this id in the same millisecond
                    continue
            reservation.runs.append(run)
            lock = ExitStack()
            reservation._locks.append(lock)
            lock.enter_context(worker_lock(run.path))  # before spec.json: no queue ever sees it unheld
            run.write_spec(spec)
            atomic_write_json(run.status_path, new_status(QUEUED))
    except OSError as err:
        reservation.close()
        for run in reservation.runs:
            shutil.rmtree(run.path, ignore_errors=True)  # ours alone: their ids are new
        raise RunsFolderError.wrap(err, runs_dir, "queue the sweep's runs") from err
    return reservation


# ---------------------------------------------------------------------------------------------
# Reading a sweep from its runs' folders


def sweep_tag(document: Any) -> dict | None:
    """A spec document's "sweep" object, when it has a usable one (an id and a vary object)."""
    tag = document.get("sweep") if isinstance(document, dict) else None
    if isinstance(tag, dict) and isinstance(tag.get("id"), str) and isinstance(tag.get("vary"), dict):
        return tag
    return None


@dataclass
class SweepRun:
    """One run of a sweep, as its folder says now."""

    run_id: str
    path: Path
    values: dict[str, Any]  # this run's value of each varied field
    state: str
    step: int
    total_steps: int | None
    error: str | None
    document: dict = field(repr=False)  # spec.json as read


def _tagged_runs(runs_dir: str | Path):
    """(path, spec document, its sweep tag) of every run folder whose spec.json carries a sweep tag, in
    run-id order (the order they were queued). Folders whose spec.json cannot be read are skipped."""
    try:
        paths = sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and (p / "spec.json").is_file())
    except (FileNotFoundError, NotADirectoryError):
        return
    for path in paths:
        try:
            document = read_json(path / "spec.json")
        except (RunFileError, RunFileUnreadable):
            continue
        tag = sweep_tag(document)
        if tag is not None:
            yield path, document, tag


def sweep_runs(runs_dir: str | Path, sweep_id: str) -> list[SweepRun]:
    """The runs of sweep `sweep_id` in `runs_dir`, in the order they were queued."""
    out = []
    for path, document, tag in _tagged_runs(runs_dir):
        if tag["id"] != sweep_id:
            continue
        status = RunDir(path).read_status()
        out.append(SweepRun(path.name, path, dict(tag["vary"]), status.get("state") or QUEUED,
                            status.get("step") or 0, status.get("total_steps"), status.get("error"), document))
    return out


@dataclass
class SweepSummary:
    """One sweep of a runs folder, for a list: id, name, model, the fields varied, its runs' states."""

    id: str
    name: str
    model: str
    fields: list[str]
    states: dict[str, int]  # state -> how many runs are in it
    run_ids: list[str]

    @property
    def runs(self) -> int:
        return len(self.run_ids)


def list_sweeps(runs_dir: str | Path) -> list[SweepSummary]:
    """Every sweep with a run in `runs_dir`, newest first."""
    found: dict[str, SweepSummary] = {}
    for path, document, tag in _tagged_runs(runs_dir):
        summary = found.get(tag["id"])
        if summary is None:
            model = document.get("model") if isinstance(document.get("model"), dict) else {}
            summary = found[tag["id"]] = SweepSummary(tag["id"], _base_name(document), str(model.get("name", "")),
                                                      list(tag["vary"]), {}, [])
        state = RunDir(path).read_status().get("state") or QUEUED
        summary.states[state] = summary.states.get(state, 0) + 1
        summary.run_ids.append(path.name)
    return sorted(found.values(), key=lambda s: s.run_ids[0], reverse=True)


def _base_name(document: dict) -> str:
    """The experiment's name without the values expand() appended to it."""
    name = str(document.get("name", ""))
    return re.sub(r" \([^()]*\)$", "", name)


@dataclass
class SweepPoint:
    """One variant of one run of a sweep: the varied value(s), the run's state, and what the run
    measured (None while it is queued or running; `metrics` empty when it has no task metrics)."""

    run_id: str
    variant: str
    values: dict[str, Any]
    state: str
    trainable: int | None
    val_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0
    total_steps: int | None = None

    @property
    def finished(self) -> bool:
        """The run ended (done, cancelled or failed); its values are final."""
        return self.state in FINAL_STATES

    @property
    def complete(self) -> bool:
        """The run trained all its steps (state done)."""
        return self.state == DONE

    def value(self, name: str) -> float | None:
        """"val_loss" or a task metric's value, None where the run has none."""
        return self.val_loss if name == "val_loss" else self.metrics.get(name)


@dataclass
class SweepView:
    """A sweep as its run folders say now: the fields and their values, the model, every run, every
    point (run x variant), and the combinations no run folder holds (deleted by hand)."""

    id: str
    name: str
    model: str
    grid: dict[str, list]
    runs: list[SweepRun]
    points: list[SweepPoint]
    missing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fields(self) -> list[str]:
        return list(self.grid)

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(p.variant for p in self.points))

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs:
            out[run.state] = out.get(run.state, 0) + 1
        return out

    def fingerprint(self) -> tuple:
        """Everything the chart and the table show, hashable: a page redraws only when it changes."""
        return (tuple((r.run_id, r.state) for r in self.runs),
                tuple((p.run_id, p.variant, p.trainable, p.val_loss, tuple(sorted(p.metrics.items())))
                      for p in self.points), tuple(tuple(m.items()) for m in self.missing))


def read_sweep(runs_dir: str | Path, sweep_id: str) -> SweepView:
    """Sweep `sweep_id` of `runs_dir` as it is now: a point per run and variant, with values for the
    runs that ended. Raises ValueError, naming the sweeps there are, when no run belongs to it."""
    runs = sweep_runs(runs_dir, sweep_id)
    if not runs:
        known = [s.id for s in list_sweeps(runs_dir)]
        raise ValueError(f"no sweep {sweep_id!r} in {runs_dir}; "
                         + (f"its sweeps are {', '.join(known[:10])}" if known else "it holds no sweep"))
    first = runs[0].document
    tag = sweep_tag(first)
    grid = {name: list(values) for name, values in (tag.get("grid") or {}).items()}
    if set(grid) != set(tag["vary"]):  # no grid stored: the values the runs have
        grid = {name: list(dict.fromkeys(r.values.get(name) for r in runs)) for name in tag["vary"]}
    points = [point for run in runs for point in run_points(run)]
    have = [tuple(r.values.get(n) for n in grid) for r in runs]
    missing = [dict(zip(grid, c)) for c in itertools.product(*grid.values()) if c not in have]
    model = first.get("model") if isinstance(first.get("model"), dict) else {}
    return SweepView(sweep_id, _base_name(first), str(model.get("name", "")), grid, runs, points, missing)


def run_points(run: SweepRun) -> list[SweepPoint]:
    """A point per variant of `run`. Trainable parameters from summary.json, or engine.checks' accounting
    before it exists; validation loss and task metrics once the run ended: summary.json's, else the
    last ones metrics.jsonl holds."""
    folder = RunDir(run.path)
    try:
        spec = ExperimentSpec.from_dict(run.document)
    except SpecError:
        spec = None
    names = spec.variant_names if spec is not None else []
    summary = folder.read_summary() if run.state in FINAL_STATES else None
    per_variant = (summary or {}).get("variants") or {}
    names += [n for n in per_variant if n not in names]
    accounting = {} if spec is None or all(n in per_variant for n in names) else _accounting(spec)
    records = folder.read_metrics() if run.state in FINAL_STATES else []
    points = []
    for name in names:
        entry = per_variant.get(name) if isinstance(per_variant.get(name), dict) else {}
        trainable = entry.get("trainable") if _number(entry.get("trainable")) else accounting.get(name)
        point = SweepPoint(run.run_id, name, dict(run.values), run.state, trainable, step=run.step,
                           total_steps=run.total_steps)
        if run.state in FINAL_STATES:
            point.val_loss = _final(entry.get("final_eval_loss"), records, name, "eval_loss")
            point.metrics = _final_metrics(summary, entry, records, name)
        points.append(point)
    return points


def _accounting(spec: ExperimentSpec) -> dict[str, int]:
    """{variant: trainable parameters} from the spec alone (engine.checks), {} when the model's config
    cannot be read here."""
    try:
        return {row["variant"]: row["trainable"] for row in checks.check(spec, data=False, machine=False).rows()}
    except (ValueError, OSError):
        return {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def _last(records: list[dict], variant: str, key: str) -> float | None:
    values = [r[key] for r in records if r.get("variant") == variant and _number(r.get(key))]
    return float(values[-1]) if values else None


def _final(value: Any, records: list[dict], variant: str, key: str) -> float | None:
    return float(value) if _number(value) else _last(records, variant, key)


def _final_metrics(summary: dict | None, entry: dict, records: list[dict], variant: str) -> dict[str, float]:
    """A variant's final task metrics: summary.json's per-variant "metrics" (also accepted as
    summary["metrics"][variant]), else each metric's last value on metrics.jsonl's lines."""
    from_summary = entry.get("metrics")
    if not isinstance(from_summary, dict):
        whole = (summary or {}).get("metrics")
        from_summary = whole.get(variant) if isinstance(whole, dict) else None
    out = {}
    for key in TASK_METRICS:
        value = from_summary.get(key) if isinstance(from_summary, dict) else None
        value = _final(value, records, variant, key)
        if value is not None:
            out[key] = value
    return out
