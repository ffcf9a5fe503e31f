"""Event handlers: read the form and the run directory, call JobQueue, return component updates.

Every handler returns in a moment except `generate` (a queued event with progress): training runs
in the worker process, and the timer handler only reads files, skipping outputs whose files did not
change since the last tick so a long run does not redraw its finished tables every second.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from prefixlab.engine import checks
from prefixlab.views import figures as plots
from prefixlab.views import tables as compare
from prefixlab.engine.data import DataError, read_table
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.engine.runs import JobQueue, RunDir
from prefixlab.ui import values
from prefixlab.ui.fields import FieldSpec, form_from_spec
from prefixlab.ui.form import to_component_value
from prefixlab.ui.generate import generate_all, no_adapters_message, trained_variants

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
        self._opened_with: dict[str, tuple] = {}  # the preset the page was built with: its values

    # --- presets ----------------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return sorted(p.stem for p in self.presets_dir.glob("*.json"))

    def preset_values(self, name: str) -> tuple[list, bool, str]:
        """(component values in field order, override, message) for presets/<name>.json."""
        try:
            spec = ExperimentSpec.load(self.presets_dir / f"{name}.json")
            form, override = form_from_spec(spec)
        except SpecError as err:
            return [gr.skip()] * len(self.fields), False, values.errors_markdown({err.field: err.message})
        return [to_component_value(f, form.get(f.key)) for f in self.fields], override, ""

    def initial_state(self, name: str | None) -> tuple[dict, bool, list[list], str]:
        """(control values by key, override, accounting rows, messages) the page opens with."""
        raw = [to_component_value(f, f.default) for f in self.fields]
        override, message = False, ""
        if name:
            loaded, override, message = self.preset_values(name)
            self._opened_with[name] = (loaded, override)
            # A broken preset returns skip-updates (dicts): keep the defaults there.
            raw = [old if isinstance(new, dict) else new for old, new in zip(raw, loaded)]
        initial = dict(zip([f.key for f in self.fields], raw))
        if not override:
            initial.update(zip(self.inferred_keys, self.model_changed(initial["model.name"], False)))
        rows, errors, _ = self.form_changed(override, *[initial[f.key] for f in self.fields])
        return initial, override, rows, message or errors

    def presets_on_load(self, name: str | None):
        """Page opened or refreshed: the presets folder as it is now (a preset saved since start-up
        is offered), and the form refilled when the opening preset's file changed on disk since the
        app built the page. -> preset dropdown, every form control, override box, message line."""
        keep = [gr.skip()] * (len(self.fields) + 2)
        names = self.preset_names()
        dropdown = gr.update(choices=names)
        if not name or name not in names:
            return [dropdown, *keep]
        field_values, override, message = self.preset_values(name)
        if (field_values, override) == self._opened_with.get(name):
            return [dropdown, *keep]
        return [dropdown, *field_values, override, message]

    def load_preset(self, name: str):
        """Preset dropdown -> every form control, the override box and the message line."""
        if not name:
            return [gr.skip()] * (len(self.fields) + 2)
        field_values, override, message = self.preset_values(name)
        return [*field_values, override, message]

    # --- form -------------------------------------------------------------------------------------

    def _spec(self, override: bool, raw: list):
        return values.check_form(values.collect_form(self.fields, raw, override))

    def _checked(self, override: bool, raw: list, upload_error: str | None):
        """(spec, errors) of the form, with a rejected upload still on show as an error: Train,
        export and save refuse while it is there (the form still names the task it had before)."""
        spec, errors = self._spec(override, raw)
        errors = values.with_upload_error(errors, upload_error)
        return (None if errors else spec), errors

    def form_changed(self, override: bool, *raw, upload_error: str | None = None):
        """Any form edit -> parameter table, field messages, encoder_hidden_size enabled or not.

        A rejected upload's message (`upload_error`, the page's state) stays in the messages until
        the file is replaced or cleared."""
        spec, errors = self._spec(override, list(raw))
        rows = []
        if spec is not None:
            rows, errors = values.accounting(spec)
        form = dict(zip([f.key for f in self.fields], raw))
        projection_on = "projection" in (form.get("experiment.variants") or [])
        errors = values.with_upload_error(errors, upload_error)
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

    def override_changed(self, override: bool, model_name: str | None = None):
        """Ticked: the inferred sizes become editable. Unticked: read-only again, showing the chosen
        model's values (not whatever was typed while overriding, which the spec no longer uses)."""
        if override:
            return [gr.update(interactive=True) for _ in self.inferred_keys]
        shown = self.model_changed(model_name, False) if model_name else [""] * len(self.inferred_keys)
        return [gr.update(interactive=False, value=value) for value in shown]

    def upload_task(self, path: str | None, current_source: str | None = None):
        """An uploaded JSONL/CSV -> data.source (a stored copy the worker can read), column pickers,
        messages, and the upload's rejection ("" when accepted; the page keeps it as state).

        The file is checked where Gradio put it, every line, before anything is stored; an accepted
        file is stored as runs/uploads/<name>-<hash of its content><suffix>, so it never replaces
        the file of another upload that a queued or finished run reads. A rejected one is never
        stored, and data.source keeps `current_source`."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), ""
        name = Path(path).name
        try:
            columns, _ = read_table(path)  # every line, so a bad line far down is named now, not by a failed run
            if len(columns) < 2:
                raise DataError(f"{path}: the file has only one column, {columns[0]!r}; a task file needs a "
                                "source column and a different target column (e.g. 'source' and 'target'); "
                                "add the missing column")
        except (ValueError, OSError) as err:
            # Named by its own name, not by the temporary folder Gradio put it in.
            detail = str(err).replace(str(Path(path)), name).replace(path, name)
            rejection = values.upload_rejected(detail, current_source)
            return gr.skip(), gr.skip(), gr.skip(), values.errors_markdown({"data.source": rejection}), rejection
        try:
            target = self._store_upload(Path(path))
        except OSError as err:
            rejection = values.upload_rejected(
                f"{name}: could not be stored in {self.queue.runs_dir / 'uploads'} ({err.strerror or err})",
                current_source)
            return gr.skip(), gr.skip(), gr.skip(), values.errors_markdown({"data.source": rejection}), rejection
        # "source" and "target" where the file has them, else the first column the other does not take.
        if "target" in columns:
            target_column = "target"
            source_column = "source" if "source" in columns else next(c for c in columns if c != "target")
        else:
            source_column = "source" if "source" in columns else columns[0]
            target_column = next(c for c in columns if c != source_column)
        return (str(target), gr.update(choices=columns, value=source_column),
                gr.update(choices=columns, value=target_column), "", "")

    def _store_upload(self, path: Path) -> Path:
        """Copy a checked upload to runs/uploads/<name>-<content hash><suffix> (atomically; the
        same content uploaded again is the same file, and is not rewritten)."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        uploads = self.queue.runs_dir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        target = uploads / values.upload_name(path.name, digest)
        if not target.is_file():
            # Unique per call: two sessions storing the same file at once each write their own.
            partial = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
            shutil.copyfile(path, partial)
            os.replace(partial, target)
        return target.resolve()  # an exported spec or preset then works from any working directory

    def export_spec(self, override: bool, *raw, upload_error: str | None = None):
        """-> (spec file, CLI command, messages). The file is named after the experiment
        ("experiment.json" for a name with no letters or digits)."""
        spec, errors = self._checked(override, list(raw), upload_error)
        if spec is None:
            return None, "", values.errors_markdown(errors)
        path = self.exports / values.export_file_name(spec.name)
        command = values.cli_command(path.name)
        path.write_text(values.spec_file_text(spec, command), encoding="utf-8")
        return str(path), command, ""

    def save_preset(self, name: str, override: bool, *raw, upload_error: str | None = None):
        """-> (preset dropdown, saved file, CLI command, messages). Never replaces a preset: a name
        whose file exists (shipped or saved, "Offline Tiny!" is offline-tiny.json) is refused."""
        spec, errors = self._checked(override, list(raw), upload_error)
        slug = None
        try:
            slug = values.preset_slug(name or (spec.name if spec else ""))
        except ValueError as err:
            errors = errors or {"preset name": str(err)}
        path = self.presets_dir / f"{slug}.json"
        taken = {"preset name": f"a preset named {slug!r} already exists ({path}); saving never replaces a "
                                "preset: type another name"}
        if slug and not errors and path.exists():
            errors = taken
        if spec is None or errors:
            return gr.skip(), None, "", values.errors_markdown(errors)
        command = values.cli_command(path.resolve())
        try:
            # "x": created here, never over a preset that appeared since the check above.
            with open(path, "x", encoding="utf-8") as out:
                out.write(values.spec_file_text(spec, command))
        except FileExistsError:
            return gr.skip(), None, "", values.errors_markdown(taken)
        except OSError as err:
            return gr.skip(), None, "", values.errors_markdown(
                {"preset name": f"could not write {path} ({err.strerror or err}); check the presets folder "
                                "(app.py --presets-dir) or type another name"})
        return gr.update(choices=self.preset_names(), value=slug), str(path), command, f"Saved preset **{slug}**."

    # --- jobs -------------------------------------------------------------------------------------

    def train(self, override: bool, *raw, upload_error: str | None = None):
        """Train -> submit to the queue and return at once: (messages, run dropdown, status).

        Refused, with the upload's message, while a rejected upload is on show."""
        spec, errors = self._checked(override, list(raw), upload_error)
        if spec is not None:
            # What the worker would fail on at setup (model config, sizes, lengths, the task file's
            # lines): say so beside the field instead of queueing a run that cannot start.
            errors = checks.check(spec).errors
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

    def tick(self, run_id, overlay, smoothing, log_scale, seen, variant=None):
        """Timer (about 1 s) and run selection: redraw what changed on disk since `seen`.

        Returns status, chart, points, comparison, bars, grid, adapter dropdown, runs table, run
        dropdown, overlay dropdown and the new `seen`. `variant`, the adapter picked, stays picked
        while the run still has it.
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
        # A run whose folder was deleted on disk: unselect it in the same update that drops it from
        # the choices (a dropdown holding a value it no longer offers fails every later event).
        if overlay and overlay not in ids:
            out_runs[2] = gr.update(choices=[""] + ids, value="")
            overlay = ""
        panels = [gr.skip()] * 6
        if run_id and run_id not in ids:
            out_runs[1] = gr.update(choices=ids, value=None)
            seen["gone"], run_id = run_id, None
            seen.pop("run", None)
            panels = self.empty_panels()  # not the deleted run's chart and tables
        if not run_id:
            status_md = values.status_markdown("", {})
            if seen.get("gone"):
                status_md = f"Run **{seen['gone']}** no longer exists (its folder was removed).\n\n{status_md}"
            return [status_md, *panels, *out_runs, seen]
        seen.pop("gone", None)
        run = RunDir(self.queue.runs_dir / run_id)  # listed above; reads as empty if deleted since
        status = run.read_status()
        log_tail = run.log_tail(20) if status.get("state") == "failed" else ""
        status_md = values.status_markdown(run_id, status, log_tail)
        signature = (run_id, overlay, smoothing, log_scale, files_signature(run.path),
                     files_signature(self.queue.runs_dir / overlay) if overlay else None)
        if signature == seen.get("run"):
            return [status_md, *[gr.skip()] * 6, *out_runs, seen]
        seen["run"] = signature
        return [status_md, *self.run_panels(run, overlay, smoothing, log_scale, variant), *out_runs, seen]

    @staticmethod
    def empty_panels() -> list:
        """run_panels with no run: an empty chart, tables and grid, no adapters."""
        return [plots.loss_figure({}), "", pd.DataFrame([], columns=list(compare.COMPARISON_COLUMNS)),
                plots.parameter_figure([]), values.grid_html([], []), gr.update(choices=[], value=None)]

    def run_panels(self, run: RunDir, overlay, smoothing, log_scale, variant=None) -> list:
        """Chart, point count, comparison table, parameter bars, output grid, adapter choices of a run
        (`variant` kept selected while it is one of them)."""
        runs_metrics = {run.run_id: run.read_metrics()}
        if overlay and overlay != run.run_id:
            runs_metrics[overlay] = RunDir(self.queue.runs_dir / overlay).read_metrics()
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
            gr.update(choices=adapters, value=variant if variant in adapters else (adapters[0] if adapters else None)),
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
        return shutil.make_archive(str(base), "zip", root_dir=folder)
