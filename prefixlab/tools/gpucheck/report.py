"""The pure half of the GPU check: throughput arithmetic, medians and ratios, results.md and results.json.

Nothing here touches a device, so all of it is tested on a CPU-only machine (tests/test_gpucheck.py).
The section modules measure and fill a results dict (the layout is results.json's, documented in
docs/gpu.md); `render_markdown(results)` turns that dict into the short tables of results.md, deriving
every ratio from the raw numbers stored in it, and `write_results` writes both files.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Iterable, Optional

OK, FAILED, ERROR, SKIPPED = "ok", "failed", "error", "skipped"
SECTION_TITLES = {
    "parity": "1. Parity with PEFT on the device",
    "e2e": "2. Offline preset end to end",
    "throughput": "3. Training throughput and memory (GPT-2-medium shape, random weights)",
    "generation": "4. Generation latency (greedy)",
}
IMPLS = ("prefixlab", "peft")
MiB = 2**20


# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median of timings; an empty list means the timing loop never ran, which is an error."""
    values = list(values)
    if not values:
        raise ValueError("median of no values: the timing loop recorded nothing; raise --budget-s or check the "
                         "section's error")
    return float(statistics.median(values))


def tokens_per_second(tokens: int, seconds: float) -> float:
    """Throughput of one step that processed `tokens` tokens in `seconds` (batch * seq_len, no padding)."""
    if tokens <= 0:
        raise ValueError(f"tokens={tokens}: a training step processes at least one token")
    if not seconds > 0:
        raise ValueError(f"seconds={seconds}: a timed step must take a positive time; time it with the device "
                         "synchronised")
    return tokens / seconds


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def timing_summary(step_seconds: list[float], tokens_per_step: int, peak_bytes: Optional[int]) -> dict:
    """One implementation's numbers for one (variant, batch size): the median step and its tokens/s."""
    step = median(step_seconds)
    return {"steps": len(step_seconds), "median_step_s": step,
            "tokens_per_s": tokens_per_second(tokens_per_step, step), "step_peak_bytes": peak_bytes}


def throughput_ratios(row: dict) -> dict:
    """prefixlab over PEFT: speedup (tokens/s) and memory (a step's peak above the resident model)."""
    ours, theirs = row.get("prefixlab") or {}, row.get("peft") or {}
    return {"speedup": ratio(ours.get("tokens_per_s"), theirs.get("tokens_per_s")),
            "memory_ratio": ratio(ours.get("step_peak_bytes"), theirs.get("step_peak_bytes"))}


def overall_status(results: dict) -> str:
    """ok only when every section that was asked for ran and passed."""
    sections = results.get("sections", {})
    if sections and all(s.get("status") == OK for s in sections.values()):
        return OK
    return FAILED


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def fmt_number(value: Optional[float], spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def fmt_mib(nbytes: Optional[float]) -> str:
    return fmt_number(None if nbytes is None else nbytes / MiB, ",.0f", " MiB")


def fmt_ratio(value: Optional[float]) -> str:
    return fmt_number(value, ".2f", "x")


def fmt_yes_no(value: Optional[bool]) -> str:
    return "n/a" if value is None else ("yes" if value else "**NO**")


def fmt_err(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# ---------------------------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------------------------


def render_markdown(results: dict) -> str:
    """The short report: a header (date, device, versions, status) and one table per section."""
    lines = _header(results)
    renderers = {"parity": _parity, "e2e": _e2e, "throughput": _throughput, "generation": _generation}
    for name, section in results.get("sections", {}).items():
        lines += ["", f"## {SECTION_TITLES.get(name, name)}: {section.get('status', '?')}"
                  + (f" ({section['seconds']:.1f} s)" if section.get("seconds") is not None else ""), ""]
        if section.get("status") in (ERROR, SKIPPED):
            lines.append(f"{section['status']}: {section.get('error') or section.get('reason') or 'no message'}")
            continue
        lines += renderers.get(name, _unknown)(section)
        for problem in section.get("problems", []):
            lines.append(f"- problem: {problem}")
    return "\n".join(lines) + "\n"


def _header(results: dict) -> list[str]:
    device = results.get("device", {})
    versions = results.get("versions", {})
    title = f"# prefixlab GPU check, {results.get('date', '?')}, {device.get('name', '?')}"
    lines = [title, ""]
    if results.get("test_run"):
        lines += ["**Test run on a non-CUDA device with tiny sizes: these numbers are not a GPU result.**", ""]
    lines.append("- status: " + overall_status(results) + f" (wall {fmt_number(results.get('wall_s'), '.0f', ' s')}"
                 + f", budget {fmt_number(results.get('budget_s'), '.0f', ' s')})")
    facts = [f"{k} {v}" for k, v in device.items() if k != "name"]
    if facts:
        lines.append("- device: " + ", ".join(facts))
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def _unknown(section: dict) -> list[str]:
    return [f"`{ {k: v for k, v in section.items() if k not in ('status', 'seconds')} }`"]


def _parity(section: dict) -> list[str]:
    tol = section.get("tolerance", {})
    lines = [f"Max |logits - prefixlab's fp32 logits| on a padded batch. fp32: PEFT within {tol.get('fp32_atol')}. "
             f"Low precision: prefixlab's error <= {tol.get('bf16_factor')} x PEFT's error + {tol.get('bf16_eps')}.",
             ""]
    rows = [[r["arch"], r["prefix_projection"], r["mode"], fmt_err(r.get("err_prefixlab")), fmt_err(r.get("err_peft")),
             "yes" if r.get("ok") else "**NO**"] for r in section.get("rows", [])]
    lines += table(["arch", "projection", "mode", "max err prefixlab", "max err PEFT", "ok"], rows)
    gen = section.get("generation", [])
    if gen:
        same = sum(1 for g in gen if g.get("equal"))
        lines += ["", f"Greedy generation (fp32) equal to decoding with PEFT's forward: {same}/{len(gen)}"
                  + "".join(f"; differs: {g['arch']} projection={g['prefix_projection']}" for g in gen
                            if not g.get("equal"))]
    return lines


def _e2e(section: dict) -> list[str]:
    lines = [f"- run: state {section.get('state')}, device {section.get('device')}, mixed precision "
             f"{section.get('mixed_precision')}, wall {fmt_number(section.get('wall_time_s'), '.1f', ' s')}",
             f"- peak GPU memory: worker {fmt_mib(section.get('worker_peak_gpu_bytes'))}, device-wide while it ran "
             f"{fmt_mib(section.get('device_peak_above_baseline_bytes'))} above the idle baseline; released after "
             f"exit: {fmt_yes_no(section.get('memory_released'))}", ""]
    rows = [[name, fmt_number(v.get("first_loss"), ".3f"), fmt_number(v.get("last_loss"), ".3f"),
             fmt_number(v.get("tokens_per_s")), v.get("adapter_dtype", "n/a")]
            for name, v in section.get("variants", {}).items()]
    return lines + table(["variant", "first loss", "last loss", "tokens/s", "saved adapter dtype"], rows)


def _throughput(section: dict) -> list[str]:
    shape = section.get("shape", {})
    lines = [f"Random GPT-2 (n_embd {shape.get('n_embd')}, n_layer {shape.get('n_layer')}, n_head "
             f"{shape.get('n_head')}, vocab {shape.get('vocab_size')}), seq {shape.get('seq_len')}, "
             f"{shape.get('num_virtual_tokens')} virtual tokens, {section.get('autocast_dtype')} autocast, "
             f"AdamW; median of {shape.get('repeats')} interleaved steps each. Memory: a step's peak above what "
             f"is resident (the shared base model is {fmt_mib(section.get('resident_model_bytes'))}).", ""]
    rows = []
    for r in section.get("rows", []):
        ours, theirs, derived = r.get("prefixlab", {}), r.get("peft", {}), throughput_ratios(r)
        rows.append([r["prefix_projection"], r["batch_size"], fmt_number(ours.get("tokens_per_s")),
                     fmt_number(theirs.get("tokens_per_s")), fmt_ratio(derived["speedup"]),
                     fmt_mib(ours.get("step_peak_bytes")), fmt_mib(theirs.get("step_peak_bytes")),
                     fmt_ratio(derived["memory_ratio"])])
    return lines + table(["projection", "batch", "prefixlab tok/s", "PEFT tok/s", "speedup", "prefixlab step peak",
                          "PEFT step peak", "memory ratio"], rows)


def _generation(section: dict) -> list[str]:
    lines = [f"{section.get('new_tokens')} new tokens after a {section.get('prompt_len')}-token prompt, "
             f"{section.get('autocast_dtype')} autocast, median of interleaved calls.", ""]
    rows = [[r["batch_size"], fmt_number(r.get("base_ms"), ".1f"), fmt_number(r.get("prefix_ms"), ".1f"),
             fmt_ratio(ratio(r.get("prefix_ms"), r.get("base_ms")))] for r in section.get("rows", [])]
    return lines + table(["batch", "base model ms", "with prefix ms", "prefix / base"], rows)


def write_results(out_dir: Path, results: dict) -> str:
    """DIR/results.json (atomic) and DIR/results.md; returns the markdown."""
    from prefixlab.engine.runs import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", json.loads(json.dumps(results, default=str)))
    markdown = render_markdown(results)
    (out_dir / "results.md").write_text(markdown, encoding="utf-8")
    return markdown
