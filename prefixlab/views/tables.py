"""Tables for the comparison panel, read from a run directory (finished or still running).

Two tables: the side-by-side comparison of the variants of a run (parameters, losses, speed; before
summary.json exists the parameter counts are engine.checks' accounting, from the spec alone), and
the output grid (per prompt: reference, the base model's output and each variant's). The pure `*_rows` functions take parsed records so tests
can feed them directly; `comparison_table(run_dir)` and `output_grid(run_dir)` read the directory.
"""

from __future__ import annotations

import math
import warnings

from prefixlab.engine import checks
from prefixlab.engine.runs import RunDir

COMPARISON_COLUMNS = (
    "variant", "trainable", "total", "trainable %", "stored",
    "train loss", "val loss", "tokens/s", "wall time (s)",
)
ACCOUNTING_COLUMNS = ("variant", "trainable", "total", "trainable %", "stored in adapter", "formula")


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
    return rows


def _rounded(row: dict) -> dict:
    """Losses to 4 decimals, speed and time to 1: the table is read, not computed with."""
    digits = {"train loss": 4, "val loss": 4, "tokens/s": 1, "wall time (s)": 1}
    return {k: (round(v, digits[k]) if k in digits and _number(v) else v) for k, v in row.items()}


def run_variants(spec, metrics: list[dict], summary: dict | None) -> list[str]:
    """Variant names in the spec's order, plus any that only the metrics or summary mention."""
    names = [v.name for v in spec.variants] if spec is not None else []
    names += [r.get("variant") for r in metrics if r.get("variant")]
    names += list((summary or {}).get("variants", {}))
    return list(dict.fromkeys(names))


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
