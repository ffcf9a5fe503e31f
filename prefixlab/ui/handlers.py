"""Event handlers: read the form and the run directory, call JobQueue, return component updates.

Every handler returns in a moment except `generate` (a queued event with progress): training runs
in the worker process, and the timer handler only reads files, skipping outputs whose files did not
change since the last tick so a long run does not redraw its finished tables every second.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from prefixlab import compare, plots
from prefixlab.data import peek_columns, read_records
from prefixlab.experiment import ExperimentSpec, SpecError
from prefixlab.runs import JobQueue, RunDir
from prefixlab.ui import values
from prefixlab.ui.fields import FieldSpec
from prefixlab.ui.form import to_component_value
from prefixlab.ui.generate import generate_all, trained_variants

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


class Lab:
    """The page's behaviour over one runs directory and its job queue."""

    def __init__(self, queue: JobQueue, fields: list[FieldSpec], presets_dir: Path):
        self.queue = queue
        self.fields = fields
        self.presets_dir = Path(presets_dir)
        self.inferred_keys = [f.key for f in fields if f.inferred]
        # Downloads (spec JSON, zipped adapters) live here until the app exits, then go.
        self._exports = tempfile.TemporaryDirectory(prefix="prefixlab-exports-")
        self.exports = Path(self._exports.name)

    # --- presets ----------------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return sorted(p.stem for p in self.presets_dir.glob("*.json"))

    def preset_values(self, name: str) -> tuple[list, bool, str]:
        """(component values in field order, override, message) for presets/<name>.json."""
        try:
            spec = ExperimentSpec.load(self.presets_dir / f"{name}.json")
            form, override = values.form_from_spec(spec)
        except SpecError as err:
            return [gr.skip()] * len(self.fields), False, values.errors_markdown({err.field: err.message})
        return [to_component_value(f, form.get(f.key)) for f in self.fields], override, ""

    def initial_state(self, name: str | None) -> tuple[dict, bool, list[list], str]:
        """(control values by key, override, accounting rows, messages) the page opens with."""
        raw = [to_component_value(f, f.default) for f in self.fields]
        override, message = False, ""
        if name:
            loaded, override, message = self.preset_values(name)
            # A broken preset returns skip-updates (dicts): keep the defaults there.
            raw = [old if isinstance(new, dict) else new for old, new in zip(raw, loaded)]
        initial = dict(zip([f.key for f in self.fields], raw))
        if not override:
            initial.update(zip(self.inferred_keys, self.model_changed(initial["model.name"], False)))
        rows, errors, _ = self.form_changed(override, *[initial[f.key] for f in self.fields])
        return initial, override, rows, message or errors

    def load_preset(self, name: str):
        """Preset dropdown -> every form control, the override box and the message line."""
        if not name:
            return [gr.skip()] * (len(self.fields) + 2)
        field_values, override, message = self.preset_values(name)
        return [*field_values, override, message]

    # --- form -------------------------------------------------------------------------------------

    def _spec(self, override: bool, raw: list):
        return values.check_form(values.collect_form(self.fields, raw, override))

    def form_changed(self, override: bool, *raw):
        """Any form edit -> parameter table, field messages, encoder_hidden_size enabled or not."""
        spec, errors = self._spec(override, list(raw))
        rows = []
        if spec is not None:
            rows, errors = values.accounting(spec)
        form = dict(zip([f.key for f in self.fields], raw))
        projection_on = form.get("experiment.variants") != "no_projection"
        return rows, values.errors_markdown(errors), gr.update(interactive=projection_on)

    def model_changed(self, model_name: str, override: bool):
        """A new model -> its inferred sizes in the read-only fields (kept as typed when overriding)."""
        if override:
            return [gr.skip()] * len(self.inferred_keys)
        try:
            sizes = values.inferred_sizes(model_name)
        except ValueError:
            return [""] * len(self.inferred_keys)  # the message under Train says why
        return [str(sizes[k]) for k in self.inferred_keys]

    def override_changed(self, override: bool):
        return [gr.update(interactive=bool(override)) for _ in self.inferred_keys]

    def upload_task(self, path: str | None):
        """An uploaded JSONL/CSV -> data.source (a copy the worker can read) and column pickers."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), ""
        uploads = self.queue.runs_dir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        target = uploads / Path(path).name
        shutil.copyfile(path, target)
        try:
            columns = peek_columns(str(target))
            read_records(target)  # every line, so a bad line far down is named now, not by a failed run
        except ValueError as err:
            # data.source keeps its value: setting it would fire the form's change event, whose
            # (file-blind) check then replaces this message with "" before anyone can read it.
            return gr.skip(), gr.skip(), gr.skip(), values.errors_markdown({"data.source": str(err)})
        pick = lambda wanted, i: wanted if wanted in columns else columns[min(i, len(columns) - 1)]  # noqa: E731
        return (str(target), gr.update(choices=columns, value=pick("source", 0)),
                gr.update(choices=columns, value=pick("target", 1)), "")

    def export_spec(self, override: bool, *raw):
        """-> (spec file, CLI command, messages)."""
        spec, errors = self._spec(override, list(raw))
        if spec is None:
            return None, "", values.errors_markdown(errors)
        path = self.exports / f"{values.preset_slug(spec.name)}.json"
        command = values.cli_command(path.name)
        path.write_text(values.spec_file_text(spec, command), encoding="utf-8")
        return str(path), command, ""

    def save_preset(self, name: str, override: bool, *raw):
        """-> (preset dropdown, saved file, CLI command, messages)."""
        spec, errors = self._spec(override, list(raw))
        try:
            slug = values.preset_slug(name or (spec.name if spec else ""))
        except ValueError as err:
            errors = errors or {"preset name": str(err)}
        if spec is None or errors:
            return gr.skip(), None, "", values.errors_markdown(errors)
        path = self.presets_dir / f"{slug}.json"
        command = values.cli_command(path.resolve())
        path.write_text(values.spec_file_text(spec, command), encoding="utf-8")
        return gr.update(choices=self.preset_names(), value=slug), str(path), command, f"Saved preset **{slug}**."

    # --- jobs -------------------------------------------------------------------------------------

    def train(self, override: bool, *raw):
        """Train -> submit to the queue and return at once: (messages, run dropdown, status)."""
        spec, errors = self._spec(override, list(raw))
        if spec is not None:
            # A model whose config cannot be read, or sizes that do not fit it, would only fail in
            # the worker: say so beside the field instead of queueing a run that cannot start.
            _, errors = values.accounting(spec)
            errors = errors or values.check_task_data(spec)
        if errors:
            return values.errors_markdown(errors), gr.skip(), gr.skip()
        run_id = self.queue.submit(spec)
        status = values.status_markdown(run_id, self.queue.run_dir(run_id).read_status())
        return "", gr.update(choices=self._run_ids(), value=run_id), status

    def stop(self, run_id: str | None):
        if not run_id:
            return values.status_markdown("", {})
        try:
            self.queue.cancel(run_id)
        except ValueError as err:
            return f"⚠️ {err}"
        run = self.queue.run_dir(run_id)
        return values.status_markdown(run_id, run.read_status(), run.log_tail(20)) + "\n\nStop requested."

    def _run_ids(self) -> list[str]:
        return [info.run_id for info in self.queue.list_runs()]

    # --- reading runs -----------------------------------------------------------------------------

    def page_load(self):
        """Page opened or refreshed: every run on disk, the running (else newest) one selected."""
        infos = self.queue.list_runs()
        ids = [i.run_id for i in infos]
        selected = values.default_selection(infos)
        return (gr.update(choices=ids, value=selected), gr.update(choices=[""] + ids, value=""),
                self.runs_rows(infos))

    def runs_rows(self, infos=None) -> list[list]:
        rows = []
        for info in infos if infos is not None else self.queue.list_runs():
            run = RunDir(info.path)
            rows.append(values.run_row(info, run.read_summary(), run.read_metrics()))
        return rows

    def tick(self, run_id, overlay, smoothing, log_scale, seen):
        """Timer (about 1 s) and run selection: redraw what changed on disk since `seen`.

        Returns status, chart, points, comparison, bars, grid, adapter dropdown, runs table, run
        dropdown, overlay dropdown and the new `seen`.
        """
        seen = dict(seen or {})
        infos = self.queue.list_runs()
        listing = tuple((i.run_id, i.state, i.step) for i in infos)
        out_runs = [gr.skip()] * 3
        if listing != seen.get("listing"):
            out_runs[0] = self.runs_rows(infos)
            seen["listing"] = listing
        ids = [i.run_id for i in infos]
        if ids != seen.get("ids"):  # the dropdowns change only when a run appears (not every step)
            out_runs[1:] = [gr.update(choices=ids), gr.update(choices=[""] + ids)]
            seen["ids"] = ids
        if not run_id:
            return [values.status_markdown("", {}), *[gr.skip()] * 6, *out_runs, seen]
        run = self.queue.run_dir(run_id)
        status = run.read_status()
        log_tail = run.log_tail(20) if status.get("state") == "failed" else ""
        status_md = values.status_markdown(run_id, status, log_tail)
        signature = (run_id, overlay, smoothing, log_scale, files_signature(run.path),
                     files_signature(self.queue.runs_dir / overlay) if overlay else None)
        if signature == seen.get("run"):
            return [status_md, *[gr.skip()] * 6, *out_runs, seen]
        seen["run"] = signature
        return [status_md, *self.run_panels(run, overlay, smoothing, log_scale), *out_runs, seen]

    def run_panels(self, run: RunDir, overlay, smoothing, log_scale) -> list:
        """Chart, point count, comparison table, parameter bars, output grid, adapter choices of a run."""
        runs_metrics = {run.run_id: run.read_metrics()}
        if overlay and overlay != run.run_id:
            runs_metrics[overlay] = self.queue.run_dir(overlay).read_metrics()
        curves = plots.loss_curves(runs_metrics, smoothing)
        counts = plots.curve_counts(curves)
        points = f"{counts['train']} training points, {counts['eval']} validation points"
        rows = compare.comparison_table(run.path)
        headers, grid = compare.output_grid(run.path)
        adapters = trained_variants(run)
        return [
            plots.loss_figure(runs_metrics, smoothing, log_scale), points,
            pd.DataFrame(rows, columns=list(compare.COMPARISON_COLUMNS)),
            plots.parameter_figure([r for r in rows if r["trainable"] is not None]),
            values.grid_html(headers, grid),
            gr.update(choices=adapters, value=adapters[0] if adapters else None),
        ]

    # --- generation and downloads -------------------------------------------------------------------

    def generate(self, run_id, prompt, progress=gr.Progress()):
        """Typed prompt -> base and every variant's output (queued; loads the run's model once)."""
        if not run_id:
            raise gr.Error("select a run first (the runs list), then generate")
        try:
            rows = generate_all(self.queue.run_dir(run_id).path, prompt,
                                on_progress=lambda fraction, text: progress(fraction, desc=text))
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return values.grid_html(["prompt", *[name for name, _ in rows]], [[prompt, *[out for _, out in rows]]])

    def zip_adapter(self, run_id, variant):
        """-> a zip of runs/<id>/adapters/<variant> (adapter_config.json + adapter_model.safetensors)."""
        if not run_id or not variant:
            raise gr.Error("select a run and one of its trained adapters first")
        folder = self.queue.run_dir(run_id).adapter_path(variant)
        if not (folder / "adapter_config.json").is_file():
            raise gr.Error(f"run {run_id} has no saved adapter {variant!r} yet")
        base = self.exports / f"{run_id}-{variant}"
        return shutil.make_archive(str(base), "zip", root_dir=folder)
