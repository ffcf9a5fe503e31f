"""Event handlers of the run panels: the timer and the run selection read the run directory; the
typed prompt generates; an adapter downloads as a zip. Lab (ui/handlers.py) has these too.

Like every handler, they take their event's inputs by registry id and return the outputs they
change, by id. The timer handler only reads files, leaving out outputs whose files did not change
since the last tick, so a long run does not redraw its finished tables every second; `generate` is
the one slow handler (a queued event with progress).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from prefixlab.engine.runs import JobQueue, RunDir
from prefixlab.ui import values
from prefixlab.ui.generate import generate_all, no_adapters_message, trained_variants
from prefixlab.ui.values import Values
from prefixlab.views import figures as plots
from prefixlab.views import tables as compare

RUN_FILES = ("status.json", "metrics.jsonl", "samples.jsonl", "summary.json")


def files_signature(run_path: Path) -> tuple:
    """(mtime_ns, size) of the files a run's panels read: equal signatures mean nothing to redraw."""
    out = []
    for name in RUN_FILES:
        try:
            st = (run_path / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


class RunHandlers:
    """Reading runs, generating and downloading, over `queue`'s runs directory."""

    queue: JobQueue
    exports: Path  # where downloads are written (a temporary folder of the app's lifetime)

    def page_load(self, v: Values) -> Values:
        """Page opened or refreshed: every run on disk, the running (else newest) one selected."""
        infos = self.queue.list_runs()
        ids = [i.run_id for i in infos]
        return {"run.select": gr.update(choices=ids, value=values.default_selection(infos)),
                "run.overlay": gr.update(choices=[""] + ids, value=""), "runs.table": self.runs_rows(infos)}

    def runs_rows(self, infos=None) -> list[list]:
        rows = []
        for info in infos if infos is not None else self.queue.list_runs():
            run = RunDir(info.path)
            rows.append(values.run_row(info, run.read_summary(), run.read_metrics()))
        return rows

    def tick(self, v: Values) -> Values:
        """Timer (about 1 s) and run selection: redraw what changed on disk since "run.seen".

        Returns the status line always, and of the chart, points, comparison, bars, output grid,
        adapter dropdown, runs table, run and overlay dropdowns and "run.seen" only those that
        changed. The adapter picked ("compare.adapter") stays picked while the run still has it.
        """
        run_id, overlay = v["run.select"], v["run.overlay"]
        seen = dict(v["run.seen"] or {})
        out: Values = {}
        infos = self.queue.list_runs()
        listing = tuple((i.run_id, i.state, i.step) for i in infos)
        if listing != seen.get("listing"):
            out["runs.table"] = self.runs_rows(infos)
            seen["listing"] = listing
        ids = [i.run_id for i in infos]
        if ids != seen.get("ids"):  # the dropdowns change only when a run appears (not every step)
            out |= {"run.select": gr.update(choices=ids), "run.overlay": gr.update(choices=[""] + ids)}
            seen["ids"] = ids
        # A run whose folder was deleted on disk: unselect it in the same update that drops it from
        # the choices (a dropdown holding a value it no longer offers fails every later event).
        if overlay and overlay not in ids:
            out["run.overlay"] = gr.update(choices=[""] + ids, value="")
            overlay = ""
        if run_id and run_id not in ids:
            out["run.select"] = gr.update(choices=ids, value=None)
            seen["gone"], run_id = run_id, None
            seen.pop("run", None)
            out |= self.empty_panels()  # not the deleted run's chart and tables
        if not run_id:
            status_md = values.status_markdown("", {})
            if seen.get("gone"):
                status_md = f"Run **{seen['gone']}** no longer exists (its folder was removed).\n\n{status_md}"
            return out | {"run.status": status_md} | _changed_seen(v, seen)
        seen.pop("gone", None)
        run = RunDir(self.queue.runs_dir / run_id)  # listed above; reads as empty if deleted since
        status = run.read_status()
        log_tail = run.log_tail(20) if status.get("state") == "failed" else ""
        out["run.status"] = values.status_markdown(run_id, status, log_tail)
        smoothing, log_scale = v["run.smoothing"], v["run.log_scale"]
        signature = (run_id, overlay, smoothing, log_scale, files_signature(run.path),
                     files_signature(self.queue.runs_dir / overlay) if overlay else None)
        if signature != seen.get("run"):
            seen["run"] = signature
            out |= self.run_panels(run, overlay, smoothing, log_scale, v["compare.adapter"])
        return out | _changed_seen(v, seen)

    @staticmethod
    def empty_panels() -> Values:
        """run_panels with no run: an empty chart, tables and grid, no adapters."""
        return {"run.chart": plots.loss_figure({}), "run.points": "",
                "compare.table": pd.DataFrame([], columns=list(compare.COMPARISON_COLUMNS)),
                "compare.bars": plots.parameter_figure([]), "compare.outputs": values.grid_html([], []),
                "compare.adapter": gr.update(choices=[], value=None)}

    def run_panels(self, run: RunDir, overlay, smoothing, log_scale, variant=None) -> Values:
        """Chart, point count, comparison table, parameter bars, output grid, adapter choices of a run
        (`variant` kept selected while it is one of them)."""
        runs_metrics = {run.run_id: run.read_metrics()}
        if overlay and overlay != run.run_id:
            runs_metrics[overlay] = RunDir(self.queue.runs_dir / overlay).read_metrics()
        counts = plots.curve_counts(plots.loss_curves(runs_metrics, smoothing))
        rows = compare.comparison_table(run.path)
        headers, grid = compare.output_grid(run.path)
        adapters = trained_variants(run)
        return {
            "run.chart": plots.loss_figure(runs_metrics, smoothing, log_scale),
            "run.points": f"{counts['train']} training points, {counts['eval']} validation points",
            "compare.table": pd.DataFrame(rows, columns=list(compare.COMPARISON_COLUMNS)),
            "compare.bars": plots.parameter_figure([r for r in rows if r["trainable"] is not None]),
            "compare.outputs": values.grid_html(headers, grid),
            "compare.adapter": gr.update(choices=adapters,
                                         value=variant if variant in adapters else (adapters[0] if adapters else None)),
        }

    # --- generation and downloads -------------------------------------------------------------------

    @staticmethod
    def run_selected(v: Values) -> Values:
        """Another run selected: the last one's generations and adapter zip would sit under its status."""
        return {"compare.generated": "", "compare.adapter_file": None}

    def generate(self, v: Values, progress=gr.Progress()) -> Values:
        """Typed prompt -> base and every variant's output (queued; loads the run's model once)."""
        run_id, prompt = v["run.select"], v["compare.prompt"]
        if not run_id:
            raise gr.Error("select a run first (the runs list), then generate")
        try:
            rows = generate_all(self.queue.run_dir(run_id).path, prompt,
                                on_progress=lambda fraction, text: progress(fraction, desc=text))
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return {"compare.generated": values.grid_html(["prompt", *[name for name, _ in rows]],
                                                      [[prompt, *[out for _, out in rows]]])}

    def zip_adapter(self, v: Values) -> Values:
        """-> a zip of runs/<id>/adapters/<variant> (adapter_config.json + adapter_model.safetensors)."""
        run_id, variant = v["run.select"], v["compare.adapter"]
        if not run_id:
            raise gr.Error("select a run and one of its trained adapters first")
        try:
            run = self.queue.run_dir(run_id)
        except ValueError:
            raise gr.Error(f"run {run_id} no longer exists (its folder was removed); choose another run") from None
        if not trained_variants(run):
            raise gr.Error(no_adapters_message(run))
        if not variant:
            raise gr.Error("select one of the run's trained adapters first")
        folder = run.adapter_path(variant)
        if not (folder / "adapter_config.json").is_file():
            raise gr.Error(f"run {run_id} has no saved adapter {variant!r} yet")
        base = self.exports / f"{run_id}-{variant}"
        return {"compare.adapter_file": shutil.make_archive(str(base), "zip", root_dir=folder)}


def _changed_seen(v: Values, seen: dict) -> Values:
    """"run.seen" when it differs from what the page holds, else nothing (the tick sends only changes)."""
    return {"run.seen": seen} if seen != v["run.seen"] else {}
