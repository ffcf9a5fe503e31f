"""Pure functions from form values and run records to what the page shows (no Gradio).

Handlers (ui/handlers.py) call these and wrap the results in component updates, so everything the
page decides -- which values go into the spec, which message goes beside which field, what the
status line and the runs table say -- is testable without a browser.
"""

from __future__ import annotations

import html
import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefixlab.core.config import INFERRED_FIELDS, PrefixTuningConfig, infer_sizes
from prefixlab.engine import checks
from prefixlab.engine.limits import MAX_SAMPLE_CHARS, clip
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.engine.sweep import format_value
from prefixlab.engine.zoo import model_facts
from prefixlab.ui.fields import FieldSpec, spec_from_form
from prefixlab.views.tables import variant_colours

# What an event handler takes and returns: component values (or updates) by registry id, e.g.
# {"run.status": "...", "form.prefix.num_virtual_tokens": 5} (ui/registry.py).
Values = dict[str, Any]

RUNS_HEADERS = ["run", "name", "model", "state", "step", "started (UTC)", "train loss", "val loss"]
# The comparison table's columns as the page heads them (views.tables.COMPARISON_COLUMNS' order).
COMPARISON_HEADERS = {"variant": "variant", "trainable": "trainable", "total": "total", "trainable %": "% trainable",
                      "stored": "stored", "train loss": "train loss", "val loss": "val loss", "tokens/s": "tokens/s",
                      "wall time (s)": "wall time"}
METRIC_HEADERS = {"slot_accuracy": "slot acc. %", "bleu": "BLEU", "chrf": "chrF", "rouge_l": "ROUGE-L"}
# The comparison shows the two headline metrics where the run scored them, so that it stays in the
# first screen at 1280x800; the Task metrics chart and the metrics CSV have all four.
COMPARISON_METRICS = ("slot_accuracy", "bleu")
# Out-of-memory errors across backends; the status line names them as such (and what to try).
_OOM = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|MPS backend out of memory", re.I)
# What one message, one table cell or the log's tail may put on the page (each update stays small,
# whatever a file, a form value or a worker's error holds).
MAX_MESSAGE_CHARS = MAX_SAMPLE_CHARS
MAX_CELL_CHARS = 300
MAX_LOG_CHARS = 4000


# --- text from elsewhere, shown as Markdown or HTML ----------------------------------------------
#
# Form values, file lines, run names, a worker's error and log reach the page's Markdown panels.
# Gradio's Markdown renders HTML (sanitised, but an <img> stays an image) and Markdown, so such
# text is escaped: no tag the browser would build, no emphasis, link, code span or table.

# Markdown's inline markers (CommonMark backslash-escapes any ASCII punctuation); & < > are HTML-escaped.
_MD_MARKERS = re.compile(r"([\\`*_\[\]|~$#])")


def md_text(text) -> str:
    """`text` as Markdown that shows exactly its characters."""
    return _MD_MARKERS.sub(r"\\\1", html.escape(str(text), quote=False))


def md_preformatted(text: str) -> str:
    """A block of `text` (a log) shown as it is, in a <pre> block the text cannot end: HTML-escaped,
    so no `</pre>` of its own, and ``` or any Markdown inside is inert."""
    return f"<pre>\n{html.escape(text, quote=False)}\n</pre>"


def html_message(message: str, css_class: str = "message") -> str:
    """A message (clipped) as an HTML paragraph for a gr.HTML panel (the Generate box's refusals)."""
    return f'<p class="{css_class}">⚠️ {html.escape(clip(str(message), MAX_MESSAGE_CHARS), quote=False)}</p>'


def toast_text(message: str) -> str:
    """A message for gr.Error, whose toast renders HTML: escaped and clipped."""
    return html.escape(clip(str(message), MAX_MESSAGE_CHARS), quote=False)


def log_tail_clip(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """The last `limit` characters of a log (its end is what explains a failure)."""
    if len(text) <= limit:
        return text
    return f"… ({len(text) - limit:,} earlier characters)\n{text[-limit:]}"


# --- form -> spec ------------------------------------------------------------------------------


def collect_form(fields: list[FieldSpec], raw: dict, override: bool) -> dict:
    """Dotted-key form values for spec_from_form, from the components' values by field key
    (every one of `fields` must be there).

    Inferred size fields are left out unless "override" is ticked, so the sizes come from the
    model; when ticked, the shown values are passed on and checked against the model.
    """
    values = {}
    for f in fields:
        value = raw[f.key]
        if f.inferred and not override:
            continue
        if isinstance(value, str) and value == "" and f.optional:
            value = None
        if f.kind == "int" and isinstance(value, float):
            # A number box sends 2.5 as typed (no rounding on the page): a whole float is that
            # number, any other one is passed as the text typed, so the spec names it like a text
            # box's value ("must be a whole number, got '2.5'; round it").
            value = int(value) if value.is_integer() else _typed(value)
        if f.kind == "lines" and isinstance(value, str):
            # One item a line; passed as a list because spec_from_form rejects "" for a list field.
            value = [line.strip() for line in value.splitlines() if line.strip()]
        values[f.key] = value
    return values


def field_values(fields: list[FieldSpec], values: Values) -> dict:
    """The form's control values by field key ("training.batch_size"), from an event's values by id."""
    return {f.key: values[f.id] for f in fields}


def _typed(number: float) -> str:
    """A float as a person would have typed it: 2.5 -> "2.5", 1e+20 -> "1e+20"."""
    return repr(number)


def check_form(values: dict) -> tuple[ExperimentSpec | None, dict[str, str]]:
    """(spec, {}) for good values, (None, {dotted key: message, ...}) naming every bad one. Never raises."""
    try:
        spec = spec_from_form(values)
    except SpecError as err:
        return None, dict(err.errors)
    except ValueError as err:  # a core check not yet mapped to a field; still a message, not a trace
        return None, {"experiment": str(err)}
    return spec, {}


def bound_errors(fields: list[FieldSpec], form: dict) -> dict[str, str]:
    """{key: message} for each collected form value (collect_form) over the bound this machine puts
    on its field (FieldSpec.maximum: training.num_processes, one process per GPU)."""
    out = {}
    for f in fields:
        value = form.get(f.key)
        if f.maximum is None or isinstance(value, bool) or not isinstance(value, int) or value <= f.maximum:
            continue
        allowed = "1" if f.maximum == 1 else f"1 to {f.maximum}"
        out[f.key] = f"must be at most {f.maximum} on this machine ({f.bound}), got {value}; set {allowed}"
    return out


def field_info(help_text: str, message: str | None) -> str:
    """What a form field shows under its label: its help, or while its value is wrong the message
    saying what is wrong and what to do. Gradio escapes the text (HTML) and renders a little
    Markdown in it; a "[text](link)" quoted from a typed value is kept from becoming a link."""
    if not message:
        return help_text
    return "⚠️ " + clip(str(message), MAX_MESSAGE_CHARS).replace("](", "]\u200b(")


def errors_markdown(errors: dict[str, str]) -> str:
    """The message block under the form: the field's key in bold, then what is wrong and what to do.
    Messages quote what was typed or read, so they are escaped (and clipped); the keys are the page's own."""
    return "\n\n".join(f"⚠️ **{html.escape(key)}**: {md_text(clip(str(message), MAX_MESSAGE_CHARS))}"
                       for key, message in errors.items())


# --- model-derived values ----------------------------------------------------------------------


def inferred_sizes(model_name: str, num_virtual_tokens: int = 1) -> dict[str, int]:
    """{"prefix.num_layers": ..., ...}: the sizes the model's config gives (no weights loaded).

    Raises ValueError (ModelLoadError) when the model's config cannot be read, e.g. a Hub id offline.
    """
    facts = model_facts(model_name)
    filled = infer_sizes(PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens), facts.config, facts.task_type)
    return {f"prefix.{name}": getattr(filled, name) for name in INFERRED_FIELDS}


def blocks_counts(key: str) -> bool:
    """Whether a problem with form key `key` keeps the parameter counts from being computed (they
    depend on the model, the prefix's fields and the variants only)."""
    return key.startswith(("prefix.", "model.", "variants")) or key == "experiment.variants"


@dataclass
class Assessment:
    """The form as the page judges it (Lab.assess): its spec (None while a value is wrong), every
    problem by key, and the parameter rows counted for it."""

    spec: ExperimentSpec | None
    errors: dict[str, str]
    rows: list[list]

    @property
    def blockers(self) -> list[str]:
        """The keys whose problems keep the counts from being computed."""
        return [key for key in self.errors if blocks_counts(key)]

    @property
    def table(self) -> str:
        return "" if self.blockers else accounting_html(self.rows)

    @property
    def note(self) -> str:
        """Under the parameter table: which field stops it from being computed, when one does."""
        blockers = self.blockers
        if not blockers:
            return ""
        named = ", ".join(f"**{html.escape(key)}**" for key in blockers)
        return f"Not computed until {named} {'is' if len(blockers) == 1 else 'are'} fixed (the message is beside it)."

    def field_errors(self, keys) -> dict[str, str]:
        """The problems of fields the page shows (`keys`), by key."""
        return {key: message for key, message in self.errors.items() if key in keys}


def accounting(spec: ExperimentSpec, data: bool = True) -> tuple[list[list], dict[str, str]]:
    """(table rows, errors): exact per-variant parameter counts for the spec, without weights, and
    every problem engine.checks.check finds (no rows when the model's config cannot be read or a
    size does not fit it). data=False leaves the task data unread."""
    checked = checks.check(spec, data=data)
    return [[r["variant"], r["trainable"], r["total"], r["trainable %"], r["stored"], r["formula"]]
            for r in checked.rows()], checked.errors


# --- the experiment as a file and a command ------------------------------------------------------


def cli_command(spec_path: str | Path) -> str:
    """The shell command that trains this experiment headless (same spec, same worker). A path under
    the current folder is shown relative to it (presets/my-recipe.json), any other one absolute."""
    path = Path(spec_path)
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            pass
    return f"python -m prefixlab train {shlex.quote(str(path))}"


def spec_file_text(spec: ExperimentSpec, command: str) -> str:
    """The spec as JSON, headed like the shipped presets by the `_command` that trains it."""
    return json.dumps({"_command": command, **spec.to_dict()}, indent=2)


# A saved preset's or exported spec's file name (without .json), in characters: 60 characters of up
# to 4 UTF-8 bytes each stay under the usual 255-byte limit on a file name.
MAX_SLUG_CHARS = 60


def _slug(name: str) -> str:
    """Letters (any script) and digits, lower case, runs of anything else as one "-"."""
    return re.sub(r"[\W_]+", "-", name or "").strip("-").lower()


def preset_slug(name: str) -> str:
    """A file name for a saved preset: "My run #2" -> "my-run-2", "日本語" -> "日本語".

    Raises ValueError naming the preset name and the fix when it has no letters or digits, or is
    too long for a file name."""
    slug = _slug(name)
    if not slug:
        raise ValueError(f"preset name {name!r} has no letters or digits; type a name such as my-recipe")
    if len(slug) > MAX_SLUG_CHARS:
        raise ValueError(f"preset name is {len(slug)} characters long as a file name ({slug[:20]}...); "
                         f"type a name of at most {MAX_SLUG_CHARS} letters and digits")
    return slug


def export_file_name(experiment_name: str) -> str:
    """The exported spec's file name: the experiment name as a slug ("offline-tiny.json"), cut to
    MAX_SLUG_CHARS, or "experiment.json" for a name with no letters or digits ("!!!")."""
    slug = _slug(experiment_name)[:MAX_SLUG_CHARS].strip("-")
    return f"{slug or 'experiment'}.json"


def upload_name(original: str, digest: str) -> str:
    """Where an accepted upload is stored: its name with the content's hash before the suffix
    ("task.jsonl" -> "task-3f2a9c1b7d4e.jsonl"), so a later file of the same name never replaces
    the one a queued or finished run reads."""
    path = Path(original)
    return f"{path.stem}-{digest[:12]}{path.suffix.lower()}"


def upload_columns(columns: list[str]) -> tuple[str, str]:
    """(source, target) columns to pick first for an uploaded file's `columns` (two or more):
    "source" and "target" where the file has them, else the first column the other does not take."""
    if "target" in columns:
        source = "source" if "source" in columns else next(c for c in columns if c != "target")
        return source, "target"
    source = "source" if "source" in columns else columns[0]
    return source, next(c for c in columns if c != source)


def upload_rejected(detail: str, current_source: str | None) -> str:
    """The message for a rejected upload: what is wrong with the file (its name and line), that it
    was not used, and what to do. Train, export and save refuse with it while the file is shown."""
    kept = f"data.source is still {current_source!r}" if current_source else "data.source is unchanged"
    return (f"{detail.rstrip('. ')}. This file was not used ({kept}): upload a fixed file, or clear the upload (×) "
            "to go on without it.")


def with_upload_error(errors: dict[str, str], upload_error: str | None) -> dict[str, str]:
    """`errors` with a rejected upload's message first, on data.source (it replaces any other
    data.source message: the file is what to fix first)."""
    if not upload_error:
        return errors
    return {"data.source": upload_error, **{k: v for k, v in errors.items() if k != "data.source"}}


# --- runs --------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


def remaining_seconds(step: int, total: int | None, seconds_per_step: float | None) -> float | None:
    """Steps left times the measured time a step takes; None without a total or a measured pace."""
    if not total or seconds_per_step is None or seconds_per_step < 0:
        return None
    return seconds_per_step * max(total - (step or 0), 0)


# The pace is measured over at most this many of the last logged intervals (a run's pace settles
# after its first steps; evaluations in between count, as they take time too).
PACE_WINDOW = 20


def seconds_per_step(metrics: list[dict]) -> float | None:
    """The measured time per optimizer step: from metrics.jsonl's training lines (each carries its
    step and wall-clock time), over the last PACE_WINDOW intervals between logged steps. None until
    two steps are logged: the time before the first one is start-up (loading the model and data),
    which an estimate from the run's start would spread over every remaining step."""
    times: dict[int, float] = {}
    for record in metrics:
        step, when = record.get("step"), record.get("time")
        if "loss" in record and isinstance(step, int) and isinstance(when, (int, float)):
            times[step] = max(times.get(step, when), when)  # the variants of one step: its last line
    steps = sorted(times)[-(PACE_WINDOW + 1):]
    if len(steps) < 2 or steps[-1] == steps[0]:
        return None
    return max(times[steps[-1]] - times[steps[0]], 0.0) / (steps[-1] - steps[0])


def is_out_of_memory(text: str) -> bool:
    return bool(_OOM.search(text or ""))


def status_markdown(run_id: str, status: dict, log_tail: str = "", now: float | None = None,
                    pace: float | None = None, settings: str = "") -> str:
    """One status line: state, step / total, elapsed and remaining (from `pace`, the measured seconds
    per step: seconds_per_step); the run's settings under it; on failure the error and log tail
    (escaped: they quote files and the worker's output; the log in a block it cannot leave)."""
    if not run_id:
        return "No run selected. Configure an experiment and press **Train**."
    now = time.time() if now is None else now
    state = status.get("state", "queued")
    step, total = status.get("step") or 0, status.get("total_steps")
    started, finished = status.get("started_at"), status.get("finished_at")
    elapsed = ((finished or now) - started) if started else None
    parts = [f"**{md_text(run_id)}** · **{md_text(state)}**", f"step {md_text(step)} / {md_text(total) if total else '?'}",
             f"elapsed {_duration(elapsed)}"]
    if state == "running":
        left = remaining_seconds(step, total, pace)
        parts.append(f"remaining {_duration(left)}" if left is not None else "remaining: measuring the step time…")
    line = " · ".join(parts)
    if settings:
        line += f"  \n{settings}"
    if state == "failed":
        error = status.get("error") or "the worker stopped without a message"
        if is_out_of_memory(error + "\n" + log_tail):
            line += ("\n\n**Out of memory.** Lower training.batch_size or training.max_length, "
                     "or choose a smaller model.")
        line += f"\n\n**Error:** {md_text(clip(str(error), MAX_MESSAGE_CHARS))}"
        if log_tail:
            line += f"\n\n{md_preformatted(log_tail_clip(log_tail))}"
    return line


def final_losses(summary: dict | None, metrics: list[dict]) -> tuple[str, str]:
    """("v1 1.23, v2 1.10", ...) final train and validation loss per variant, for the runs table."""
    train, val = {}, {}
    for variant, entry in ((summary or {}).get("variants") or {}).items():
        if entry.get("final_train_loss") is not None:
            train[variant] = entry["final_train_loss"]
        if entry.get("final_eval_loss") is not None:
            val[variant] = entry["final_eval_loss"]
    for record in metrics:  # a run without summary (running, failed): the last logged values
        if "loss" in record and record.get("variant") not in (summary or {}).get("variants", {}):
            train[record["variant"]] = record["loss"]
        if "eval_loss" in record and record.get("variant") not in (summary or {}).get("variants", {}):
            val[record["variant"]] = record["eval_loss"]
    fmt = lambda d: ", ".join(f"{k} {v:.3f}" for k, v in d.items())  # noqa: E731
    return fmt(train), fmt(val)


def run_row(info, summary: dict | None, metrics: list[dict]) -> list:
    """One line of the runs table from a runs.RunInfo and the run's summary / metrics."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.started_at)) if info.started_at is not None else ""
    step = f"{info.step} / {info.total_steps}" if info.total_steps else str(info.step)
    cells = [info.run_id, info.name, info.model, info.state, step, started, *final_losses(summary, metrics)]
    return [clip(cell, MAX_CELL_CHARS) if isinstance(cell, str) else cell for cell in cells]


def run_label(run_id: str, name: str | None = None) -> str:
    """A run's short name for legends: its experiment name and start time, "offline-tiny 14:03:12"
    (run ids are "YYYYmmdd-HHMMSSmmm-<slug>", UTC)."""
    match = re.fullmatch(r"(\d{8})-(\d{2})(\d{2})(\d{2})\d*-(.*)", run_id or "")
    if not match:
        return clip(run_id or "", 60)
    _, hh, mm, ss, slug = match.groups()
    return f"{clip(name or slug, 40)} {hh}:{mm}:{ss}"


def run_labels(run_ids: list[str], names: dict[str, str] | None = None) -> dict[str, str]:
    """run_label of each run; runs whose labels coincide are named by their ids instead."""
    labels = {r: run_label(r, (names or {}).get(r)) for r in run_ids}
    taken = [label for label in labels.values()]
    return {r: (label if taken.count(label) == 1 else r) for r, label in labels.items()}


def settings_line(spec) -> str:
    """The run's settings that tell runs apart, on one line (from its spec.json)."""
    if spec is None:
        return ""
    prefixes = [v for v in spec.variants if getattr(v, "is_prefix", True)]  # not the fine_tune baseline
    prefix, t, lengths = spec.prefix, spec.training, {v.prefix.num_virtual_tokens for v in prefixes}
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.num_epochs:g} epochs"
    parts = [spec.model.name, f"task {Path(spec.data.source).name}", f"{'/'.join(map(str, sorted(lengths)))} virtual tokens"]
    if any(v.prefix.prefix_projection for v in prefixes):
        parts.append(f"encoder_hidden_size {prefix.encoder_hidden_size or 'token_dim'}")
    parts += [f"lr {t.learning_rate:g}", steps, f"batch {t.batch_size}", f"max_length {t.max_length}"]
    return " · ".join(md_text(clip(str(p), 80)) for p in parts)


def points_markdown(counts: dict[str, dict[str, dict[str, int]]], labels: dict[str, str]) -> str:
    """The points the loss chart shows, per variant (and per run when one is overlaid):
    "no_projection: 20 training, 4 validation points · projection: ..."."""
    lines = []
    for run, variants in counts.items():
        text = " · ".join(f"{md_text(v)}: {c['train']} training, {c['eval']} validation points"
                          for v, c in variants.items())
        lines.append(text if len(counts) == 1 else f"{md_text(labels.get(run, run))}: {text}")
    return "  \n".join(lines)


def default_selection(infos: list) -> str | None:
    """The run to show on page load: the running one, else the newest (reattach after a refresh)."""
    for info in infos:
        if info.state == "running":
            return info.run_id
    return infos[0].run_id if infos else None


# --- outputs -------------------------------------------------------------------------------------


def grid_html(headers: list[str], rows: list[list[str]], empty: str = "no outputs yet") -> str:
    """An HTML table for side-by-side outputs (columns: prompt, reference, base, variants...).

    Text is escaped (model output is arbitrary) and clipped to limits.MAX_SAMPLE_CHARS; an empty or
    whitespace-only output is named as such, so a model that generated only spaces is told apart
    from a missing column.
    """
    if not rows:
        return f'<p class="grid-empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(clip(str(h), MAX_CELL_CHARS))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_grid_cell(cell) for cell in row) + "</tr>" for row in rows)
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _grid_cell(text: str) -> str:
    if not text:
        return "<td><em>(empty)</em></td>"
    if not text.strip():
        return f"<td><em>(only whitespace, {len(text)} characters)</em></td>"
    return f"<td>{html.escape(clip(text))}</td>"


# --- numeric tables (parameters, comparison, runs) -------------------------------------------------
#
# Plain HTML tables: numbers right-aligned with thousands separators, cells that never break inside
# a word or number (CSS `table.data`, ui/app.py), and each variant's name behind its colour swatch,
# the colour its curves have in the charts (views.tables.variant_colours).


def _number(value, digits: int | None = None, grouped: bool = True) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(clip(str(value), MAX_CELL_CHARS))
    if digits is None:
        return f"{value:,}" if grouped else str(value)
    return f"{value:,.{digits}f}" if grouped else f"{value:.{digits}f}"


def variant_cell(name: str, colour: str | None) -> str:
    """A variant's name behind its chart colour."""
    swatch = f'<span class="swatch" style="background:{colour}"></span>' if colour else ""
    return f'<td class="variant">{swatch}{html.escape(clip(str(name), MAX_CELL_CHARS))}</td>'


def _table(headers: list[str], body: list[str], elem_class: str = "grid data") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return (f'<div class="table-scroll"><table class="{elem_class}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _num_cell(text: str) -> str:
    return f'<td class="num">{text}</td>'


# How each comparison column is written: None for integers (grouped), else the decimals.
_COMPARISON_DIGITS = {"trainable %": 2, "train loss": 4, "val loss": 4, "tokens/s": 0,
                      "slot_accuracy": 1, "bleu": 1, "chrf": 1, "rouge_l": 1}


def comparison_html(rows: list[dict], order=(), empty: str = "no run selected") -> str:
    """The comparison (views.tables.comparison_rows) as a table: parameters, final losses, speed and
    wall time per variant, each variant in its colour."""
    if not rows:
        return f'<p class="grid-empty">{html.escape(empty)}</p>'
    colours = variant_colours([*order, *(r["variant"] for r in rows)])
    # Task-metric columns (views.tables.METRIC_COLUMNS) where the run scored any.
    headers = COMPARISON_HEADERS | {k: METRIC_HEADERS[k] for k in COMPARISON_METRICS if k in rows[0]}
    body = []
    for row in rows:
        cells = [variant_cell(row["variant"], colours.get(row["variant"]))]
        for column in headers:
            if column == "variant":
                continue
            value = row.get(column)
            text = _duration(value) if column == "wall time (s)" and value is not None else \
                _number(value, _COMPARISON_DIGITS.get(column))
            cells.append(_num_cell(text))
        body.append(f"<tr>{''.join(cells)}</tr>")
    return _table(list(headers.values()), body)


def accounting_html(rows: list[list], empty: str = "") -> str:
    """The form's parameter accounting (`accounting` rows) as a table, each variant's formula on a
    line of its own under its counts."""
    if not rows:
        return f'<p class="grid-empty">{html.escape(empty)}</p>' if empty else ""
    colours = variant_colours([r[0] for r in rows])
    body = []
    for variant, trainable, total, percent, stored, formula in rows:
        cells = [variant_cell(variant, colours[variant]), _num_cell(_number(trainable)), _num_cell(_number(total)),
                 _num_cell(_number(percent, 2)), _num_cell(_number(stored))]
        body.append(f"<tr>{''.join(cells)}</tr>")
        body.append(f'<tr class="formula"><td colspan="5"><code>{html.escape(str(formula))}</code></td></tr>')
    return _table(["variant", "trainable", "total", "% trainable", "stored in adapter"], body)


def runs_html(rows: list[list], selected: str | None = None) -> str:
    """The runs table (run_row rows), the selected run's row marked."""
    if not rows:
        return '<p class="grid-empty">no runs yet: press Train</p>'
    body = []
    for row in rows:
        mark = ' class="selected"' if selected and row[0] == selected else ""
        cells = "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
        body.append(f"<tr{mark}>{cells}</tr>")
    return _table(RUNS_HEADERS, body, "grid data runs")


# --- sweeps --------------------------------------------------------------------------------------

SWEEP_VALUE_HEADERS = {"trainable": "trainable", "val loss": "val loss", **METRIC_HEADERS}
_SWEEP_DIGITS = {"val loss": 4, "slot_accuracy": 1, "bleu": 1, "chrf": 1, "rouge_l": 1}


def sweep_html(headers: list[str], rows: list[list], fields: list[str], variants=(),
               empty: str = "no sweep selected") -> str:
    """A sweep's table (views.sweep.sweep_table: per run and variant the varied value(s), variant,
    state, trainable parameters, final validation loss and task metrics) as one of the page's tables:
    each variant in its colour, numbers right-aligned, every value escaped (a varied text is typed)."""
    if not rows:
        return f'<p class="grid-empty">{html.escape(empty)}</p>'
    colours = variant_colours([*variants, *(row[len(fields)] for row in rows if row[len(fields)] != "-")])
    body = []
    for row in rows:
        cells = []
        for column, value in zip(headers, row):
            if column == "variant":
                cells.append(variant_cell(value, colours.get(value)))
            elif column == "state":
                cells.append(f"<td>{html.escape(clip(str(value), MAX_CELL_CHARS))}</td>")
            elif column in fields:
                text = html.escape(clip(format_value(value), MAX_CELL_CHARS))
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                cells.append(_num_cell(text) if numeric else f"<td>{text}</td>")
            else:
                cells.append(_num_cell(_number(value, _SWEEP_DIGITS.get(column))))
        body.append(f"<tr>{''.join(cells)}</tr>")
    shown = [SWEEP_VALUE_HEADERS.get(h, h) for h in headers]
    return _table(shown, body, "grid data sweep")
