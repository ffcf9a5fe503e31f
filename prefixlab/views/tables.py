"""Tables for the comparison panel, read from a run directory (finished or still running).

Two tables: the side-by-side comparison of the variants of a run (parameters, losses, speed; before
summary.json exists the parameter counts are engine.checks' accounting, from the spec alone), and
the output grid (per prompt: reference, the base model's output and each variant's). The pure `*_rows` functions take parsed records so tests
can feed them directly; `comparison_table(run_dir)` and `output_grid(run_dir)` read the directory.

Also what every view of a run shares: one colour per variant (`variant_colours`, used by the
figures and by the page's tables alike) and the run's metrics as CSV (`metrics_csv`).
"""

from __future__ import annotations

import csv
import io
import math
import warnings

from prefixlab.engine import checks
from prefixlab.engine.runs import RunDir

COMPARISON_COLUMNS = (
    "variant", "trainable", "total", "trainable %", "stored",
    "train loss", "val loss", "tokens/s", "wall time (s)",
)
# Task metrics (engine.metrics), after COMPARISON_COLUMNS where the run scored any: the last
# evaluation's values (summary.json's at the end); the untuned base model gets a row of its own then.
METRIC_COLUMNS = ("slot_accuracy", "bleu", "chrf", "rouge_l")
ACCOUNTING_COLUMNS = ("variant", "trainable", "total", "trainable %", "stored in adapter", "formula")
# The untuned model: metrics.jsonl's task-metric lines name it as a variant, but it trains nothing
# and has no row of its own in the comparison.
BASE = "base"
# One colour per variant, the same in every chart and table of the page: the standard variants keep
# theirs whatever else a run has; any other variant takes the next free colour, in the run's order.
STANDARD_COLOURS = {"no_projection": "#1f77b4", "projection": "#ff7f0e", "fine_tune": "#2ca02c", BASE: "#7f7f7f"}
PALETTE = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939")


def variant_colours(names) -> dict[str, str]:
    """{variant: colour} for `names` in the order given (a run's variants in its spec's order)."""
    out, free = {}, iter(c for c in PALETTE if c not in STANDARD_COLOURS.values())
    for name in dict.fromkeys(names):
        out[name] = STANDARD_COLOURS.get(name) or next(free, None) or PALETTE[len(out) % len(PALETTE)]
    return out


def trainable_percent(trainable: int, total: int) -> float:
    """Share of all parameters that train, in percent (PEFT's print_trainable_parameters)."""
    return 100.0 * trainable / total if total else 0.0


def _last(records: list[dict], variant: str, key: str):
    values = [r[key] for r in records if r.get("variant") == variant and _number(r.get(key))]
    return values[-1] if values else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(records: list[dict], variant: str, key: str):
    values = [r[key] for r in records if r.get("variant") == variant and _number(r.get(key))]
    return sum(values) / len(values) if values else None


def _wall_time(records: list[dict], variant: str):
    times = [r["time"] for r in records if r.get("variant") == variant and _number(r.get("time"))]
    return max(times) - min(times) if len(times) > 1 else None


def live_variant_row(variant: str, metrics: list[dict]) -> dict:
    """What the metrics so far say about a variant of a run that has no summary.json yet."""
    return {
        "train loss": _last(metrics, variant, "loss"),
        "val loss": _last(metrics, variant, "eval_loss"),
        "tokens/s": _mean(metrics, variant, "tokens_per_s"),
        "wall time (s)": _wall_time(metrics, variant),
    }


def summary_variant_row(entry: dict, wall_time_s: float | None = None) -> dict:
    """One variant's entry of summary.json, under the comparison table's column names.

    The variants train in lockstep in one worker, so the run's wall time is every variant's.
    """
    return {
        "trainable": entry.get("trainable"),
        "total": entry.get("total"),
        "stored": entry.get("stored"),
        "train loss": entry.get("final_train_loss"),
        "val loss": entry.get("final_eval_loss"),
        "tokens/s": entry.get("tokens_per_s"),
        "wall time (s)": wall_time_s,
    }


def comparison_rows(variants: list[str], metrics: list[dict], summary: dict | None,
                    accounting: dict[str, dict] | None = None) -> list[dict]:
    """The variants side by side, one row each, columns COMPARISON_COLUMNS.

    summary.json (written when a run ends) is the authority; before it exists the losses come from
    metrics.jsonl and the parameter counts from `accounting` (variant -> checks.variant_accounting()).
    """
    per_variant = (summary or {}).get("variants", {})
    rows = []
    for name in variants:
        row = dict.fromkeys(COMPARISON_COLUMNS)
        row["variant"] = name
        row.update({k: v for k, v in (accounting or {}).get(name, {}).items() if k in row})
        row.update(live_variant_row(name, metrics))
        if name in per_variant:
            from_summary = summary_variant_row(per_variant[name], summary.get("wall_time_s"))
            row.update({k: v for k, v in from_summary.items() if v is not None})
        if row["trainable"] is not None and row["total"]:
            row["trainable %"] = round(trainable_percent(row["trainable"], row["total"]), 4)
        rows.append(_rounded(row))
    return _with_task_metrics(rows, metrics, summary)


def _with_task_metrics(rows: list[dict], metrics: list[dict], summary: dict | None) -> list[dict]:
    """Each row's last task metrics (METRIC_COLUMNS the run scored), and a first row for the base
    model (scored at step 0), when the run scored any; the rows unchanged otherwise."""
    per_variant = (summary or {}).get("variants", {})

    def last(variant: str) -> dict:
        values = {key: _last(metrics, variant, key) for key in METRIC_COLUMNS}
        final = per_variant.get(variant, {}).get("metrics") if variant != BASE else (summary or {}).get("base_metrics")
        values.update({k: v for k, v in (final or {}).items() if k in values and _number(v)})
        return values

    scored = {r["variant"]: last(r["variant"]) for r in rows} | {BASE: last(BASE)}
    columns = [key for key in METRIC_COLUMNS if any(v.get(key) is not None for v in scored.values())]
    if not columns:
        return rows
    base = dict.fromkeys(rows[0] if rows else COMPARISON_COLUMNS) | {"variant": BASE}
    out = [base] if any(scored[BASE].get(k) is not None for k in columns) else []
    for row in [*out, *rows]:
        row.update({key: None if scored[row["variant"]].get(key) is None else round(scored[row["variant"]][key], 1)
                    for key in columns})
    return out + rows


def _rounded(row: dict) -> dict:
    """Losses to 4 decimals, speed and time to 1: the table is read, not computed with."""
    digits = {"train loss": 4, "val loss": 4, "tokens/s": 1, "wall time (s)": 1}
    return {k: (round(v, digits[k]) if k in digits and _number(v) else v) for k, v in row.items()}


def run_variants(spec, metrics: list[dict], summary: dict | None) -> list[str]:
    """Variant names in the spec's order, plus any that only the metrics or summary mention."""
    names = [v.name for v in spec.variants] if spec is not None else []
    names += [r.get("variant") for r in metrics if r.get("variant")]
    names += list((summary or {}).get("variants", {}))
    return [n for n in dict.fromkeys(names) if n != BASE]


def safe_accounting(spec) -> dict[str, dict]:
    """The spec's parameter accounting keyed by variant (engine.checks), or {} when the model's config
    cannot be read (an offline Hub id) or the sizes do not fit it."""
    if spec is None:
        return {}
    return {row["variant"]: row for row in checks.check(spec, data=False, machine=False).rows()}


def readable_spec(run: RunDir):
    """The run's spec, or None (with a warning naming the file) when spec.json cannot be read: the
    page polls every second and shows what the other files hold."""
    try:
        return run.read_spec()
    except (ValueError, OSError) as err:
        warnings.warn(f"{err}; showing the run without it", stacklevel=2)
        return None


def comparison_table(run_dir) -> list[dict]:
    """The comparison rows of the run in `run_dir` (see comparison_rows)."""
    run = RunDir(run_dir)
    spec, metrics, summary = readable_spec(run), run.read_metrics(), run.read_summary()
    accounting = safe_accounting(spec) if not summary else {}
    return comparison_rows(run_variants(spec, metrics, summary), metrics, summary, accounting)


def output_grid_rows(samples: list[dict], variants: list[str]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the output grid: prompt, reference (when any), base, then each variant."""
    has_reference = any(s.get("reference") for s in samples)
    names = list(dict.fromkeys(list(variants) + [k for s in samples for k in s.get("outputs", {}) if k != "base"]))
    headers = ["prompt"] + (["reference"] if has_reference else []) + ["base"] + names
    rows = []
    for s in samples:
        outputs = s.get("outputs", {})
        row = [s.get("prompt", "")] + ([s.get("reference") or ""] if has_reference else [])
        rows.append(row + [outputs.get(k, "") for k in ["base"] + names])
    return headers, rows


def output_grid(run_dir) -> tuple[list[str], list[list[str]]]:
    """The output grid of the run in `run_dir` (see output_grid_rows)."""
    run = RunDir(run_dir)
    spec = readable_spec(run)
    return output_grid_rows(run.read_samples(), [v.name for v in spec.variants] if spec else [])


# Columns every metrics.jsonl line may carry, first in the CSV in this order; any other key follows.
CSV_FIRST = ("run", "variant", "step", "epoch", "loss", "eval_loss", "lr", "tokens_per_s", "time")


def metrics_csv(runs_metrics: dict[str, list[dict]]) -> str:
    """Every metrics.jsonl line of the runs ({run id: records}) as CSV, one row a line, a "run"
    column first: the columns the worker writes, then any other key (task metrics: bleu, ...)."""
    keys = list(CSV_FIRST)
    for records in runs_metrics.values():
        for record in records:
            keys += [k for k in record if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run, records in runs_metrics.items():
        for record in records:
            writer.writerow({"run": run, **{k: v for k, v in record.items() if not isinstance(v, (dict, list))}})
    return out.getvalue()
