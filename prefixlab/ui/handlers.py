"""Event handlers: read the form, call JobQueue, return component updates (the run panels' handlers
are in ui/run_handlers.py; Lab has both).

Every handler takes the values of its event's inputs by registry id ({"form.model.name": ..., ...})
and returns the outputs it changes, by id; an output it leaves out keeps its value (ui/registry.py
turns ids into components at the event boundary, ui/app.py declares each event's inputs and
outputs). They return in a moment: training runs in the worker process.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

from prefixlab.engine import checks
from prefixlab.engine.data import DataError, read_table
from prefixlab.engine.limits import MAX_TASK_FILE_BYTES, MAX_UPLOAD_MB
from prefixlab.engine.runs import JobQueue
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.ui import values
from prefixlab.ui.access import PageAccess, is_inside, private_temp_dir
from prefixlab.ui.fields import FieldSpec, form_from_spec
from prefixlab.ui.form import to_component_value
from prefixlab.ui.run_handlers import RunHandlers, plain_run_id
from prefixlab.ui.values import Values

MESSAGES = "actions.messages"  # the line above the form naming every bad field


class Lab(RunHandlers):
    """The page's behaviour over one runs directory and its job queue.

    `temp_dir` is where Gradio receives uploads (GRADIO_TEMP_DIR; default: this process's private
    folder, ui/access.py): only a file there is taken as an upload. Downloads are written under its
    exports/ folder. `allow_paths` are the folders beyond runs/uploads whose files the page may
    name as a task or model (app.py --allow-path)."""

    def __init__(self, queue: JobQueue, fields: list[FieldSpec], presets_dir: Path, *,
                 temp_dir: str | Path | None = None, allow_paths: Iterable[str | Path] = ()):
        super().__init__()
        self.queue = queue
        self.fields = fields
        self.presets_dir = Path(presets_dir)
        self.inferred_ids = [f.id for f in fields if f.inferred]
        self.access = PageAccess(queue.runs_dir / "uploads", allow_paths)
        self.temp_dir = Path(temp_dir).resolve() if temp_dir is not None else private_temp_dir()
        # Downloads (spec JSON, zipped adapters), each in a folder of its own (two sessions exporting
        # the same name never share a file); served by Gradio from here, removed with the folder.
        self.exports = self.temp_dir / "exports"
        self.exports.mkdir(parents=True, exist_ok=True)
        self._opened_with: dict[str, Values] = {}  # the preset the page was built with: its values

    # --- presets ----------------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return sorted(p.stem for p in self.presets_dir.glob("*.json"))

    def preset_values(self, name: str) -> Values:
        """Every form control, the override box and the message line for presets/<name>.json (a
        broken preset: only the override box, unticked, and the message saying what is wrong)."""
        try:
            spec = ExperimentSpec.load(self.presets_dir / f"{name}.json")
            form, override = form_from_spec(spec)
        except SpecError as err:
            return {"form.override": False, MESSAGES: values.errors_markdown({err.field: err.message})}
        return {**{f.id: to_component_value(f, form.get(f.key)) for f in self.fields},
                "form.override": override, MESSAGES: ""}

    def initial_state(self, name: str | None) -> Values:
        """What the page opens with, by id: every form input (the controls, the override box, the
        upload's rejection), the parameter table and the message line."""
        state = {**{f.id: to_component_value(f, f.default) for f in self.fields},
                 "form.override": False, "form.upload_error": "", MESSAGES: ""}
        if name:
            loaded = self.preset_values(name)
            self._opened_with[name] = loaded
            state.update(loaded)  # a broken preset keeps the defaults
        if not state["form.override"]:
            state.update(self.model_changed(state))
        changed = self.form_changed(state)
        state["accounting.table"] = changed["accounting.table"]
        state[MESSAGES] = state[MESSAGES] or changed[MESSAGES]
        return state

    def presets_on_load(self, v: Values) -> Values:
        """Page opened or refreshed: the presets folder as it is now (a preset saved since start-up
        is offered), and the form refilled when the opening preset's file changed on disk since the
        app built the page."""
        name, names = v["preset.default"], self.preset_names()
        dropdown = {"preset.choice": gr.update(choices=names)}
        if not name or name not in names:
            return dropdown
        loaded = self.preset_values(name)
        opened = self._opened_with.get(name)
        if opened is not None and _without_message(loaded) == _without_message(opened):
            return dropdown
        return {**dropdown, **loaded}

    def load_preset(self, v: Values) -> Values:
        """Preset dropdown -> every form control, the override box and the message line (only a
        preset of the presets folder: a name is never a path)."""
        name = v["preset.choice"]
        return self.preset_values(name) if name and name in self.preset_names() else {}

    # --- form -------------------------------------------------------------------------------------

    def _spec(self, v: Values):
        return values.check_form(values.collect_form(self.fields, values.field_values(self.fields, v),
                                                     v["form.override"]))

    def _denied(self, v: Values) -> dict[str, str]:
        """A model folder or task file the page may not read ({field: message}; ui/access.py)."""
        return self.access.errors(v["form.model.name"], v["form.data.source"])

    def _checked(self, v: Values):
        """(spec, errors) of the form, with a rejected upload still on show as an error: Train,
        export and save refuse while it is there (the form still names the task it had before).
        A path the page may not read is an error too, and nothing reads it."""
        spec, errors = self._spec(v)
        errors = values.with_upload_error({**errors, **self._denied(v)}, v["form.upload_error"])
        return (None if errors else spec), errors

    def form_changed(self, v: Values) -> Values:
        """Any form edit -> parameter table, field messages, encoder_hidden_size enabled or not.

        A rejected upload's message ("form.upload_error", the page's state) stays in the messages
        until the file is replaced or cleared."""
        spec, errors = self._spec(v)
        denied = self._denied(v)
        rows = []
        if spec is not None and "model.name" not in denied:  # the model's config is read for the counts
            rows, errors = values.accounting(spec, data="data.source" not in denied)
        errors = {**errors, **denied}
        projection_on = "projection" in (v["form.experiment.variants"] or [])
        errors = values.with_upload_error(errors, v["form.upload_error"])
        return {"accounting.table": rows, MESSAGES: values.errors_markdown(errors),
                "form.prefix.encoder_hidden_size": gr.update(interactive=projection_on)}

    def model_changed(self, v: Values) -> Values:
        """A new model -> its inferred sizes in the read-only fields (kept as typed when overriding)."""
        if v["form.override"]:
            return {}
        if self.access.model_error(v["form.model.name"]):
            return dict.fromkeys(self.inferred_ids, "")  # not read; the messages say why
        try:
            sizes = values.inferred_sizes(v["form.model.name"])
        except ValueError:
            return dict.fromkeys(self.inferred_ids, "")  # the message under Train says why
        return {f.id: str(sizes[f.key]) for f in self.fields if f.inferred}

    def override_changed(self, v: Values) -> Values:
        """Ticked: the inferred sizes become editable. Unticked: read-only again, showing the chosen
        model's values (not whatever was typed while overriding, which the spec no longer uses)."""
        if v["form.override"]:
            return {id_: gr.update(interactive=True) for id_ in self.inferred_ids}
        shown = self.model_changed(v) if v["form.model.name"] else dict.fromkeys(self.inferred_ids, "")
        return {id_: gr.update(interactive=False, value=value) for id_, value in shown.items()}

    def upload_task(self, v: Values) -> Values:
        """An uploaded JSONL/CSV -> data.source (a stored copy the worker can read), column pickers,
        messages, and the upload's rejection ("" when accepted; the page keeps it as state).

        The file is checked where Gradio put it, every line, before anything is stored; an accepted
        file is stored as runs/uploads/<name>-<hash of its content><suffix>, so it never replaces
        the file of another upload that a queued or finished run reads. A rejected one is never
        stored, and data.source keeps its value."""
        path, current_source = v["form.upload"], v["form.data.source"]
        if not path:
            return {"form.upload_error": ""}
        name = Path(path).name
        refused = self._not_an_upload(path)
        if refused:
            return _upload_refused(values.upload_rejected(refused, current_source))
        try:
            columns, _ = read_table(path)  # every line, so a bad line far down is named now, not by a failed run
            if len(columns) < 2:
                raise DataError(f"{path}: the file has only one column, {columns[0]!r}; a task file needs a "
                                "source column and a different target column (e.g. 'source' and 'target'); "
                                "add the missing column")
        except (ValueError, OSError) as err:
            # Named by its own name, not by the temporary folder Gradio put it in.
            detail = str(err).replace(str(Path(path)), name).replace(path, name)
            return _upload_refused(values.upload_rejected(detail, current_source))
        try:
            target = self._store_upload(Path(path))
        except OSError as err:
            return _upload_refused(values.upload_rejected(
                f"{name}: could not be stored in {self.queue.runs_dir / 'uploads'} ({err.strerror or err})",
                current_source))
        source_column, target_column = values.upload_columns(columns)
        return {"form.data.source": str(target),
                "form.data.source_column": gr.update(choices=columns, value=source_column),
                "form.data.target_column": gr.update(choices=columns, value=target_column),
                MESSAGES: "", "form.upload_error": ""}

    def _not_an_upload(self, path: str) -> str | None:
        """Why `path` is not taken as an upload, or None: only a file Gradio received from a browser
        (in this app's own temporary folder, never its downloads) of at most MAX_UPLOAD_MB."""
        name = Path(path).name
        try:
            received = is_inside(path, self.temp_dir) and not is_inside(path, self.exports)
            size = Path(path).stat().st_size if received else 0
        except (OSError, ValueError):
            received, size = False, 0
        if not received:
            return (f"{name}: not a file uploaded to this page (the page takes only files sent with its upload "
                    "button); upload the file again")
        if size > MAX_UPLOAD_MB * 1024**2:
            return (f"{name} is {size / 1024**2:,.0f} MB, more than the {MAX_UPLOAD_MB} MB the page takes; upload a "
                    f"smaller file, or train from the command line (python -m prefixlab train SPEC.json reads task "
                    f"files of up to {MAX_TASK_FILE_BYTES // 1024**3} GB)")
        return None

    @staticmethod
    def clear_upload(v: Values) -> Values:
        """The upload cleared (×): its rejection goes, and the messages are rewritten from the form."""
        return {"form.upload_error": ""}

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

    def export_spec(self, v: Values) -> Values:
        """-> spec file, CLI command, messages. The file is named after the experiment
        ("experiment.json" for a name with no letters or digits)."""
        spec, errors = self._checked(v)
        if spec is None:
            return {"export.spec_file": None, "export.command": "", MESSAGES: values.errors_markdown(errors)}
        path = self.download_folder() / values.export_file_name(spec.name)
        command = values.cli_command(path.name)
        path.write_text(values.spec_file_text(spec, command), encoding="utf-8")
        return {"export.spec_file": str(path), "export.command": command, MESSAGES: ""}

    def save_preset(self, v: Values) -> Values:
        """-> preset dropdown, saved file, CLI command, messages. Never replaces a preset: a name
        whose file exists (shipped or saved, "Offline Tiny!" is offline-tiny.json) is refused."""
        spec, errors = self._checked(v)
        slug = None
        try:
            slug = values.preset_slug(v["export.preset_name"] or (spec.name if spec else ""))
        except ValueError as err:
            errors = errors or {"preset name": str(err)}
        path = self.presets_dir / f"{slug}.json"
        taken = {"preset name": f"a preset named {slug!r} already exists ({path}); saving never replaces a "
                                "preset: type another name"}
        if slug and not errors and path.exists():
            errors = taken
        if spec is None or errors:
            return _not_saved(errors)
        command = values.cli_command(path.resolve())
        try:
            # "x": created here, never over a preset that appeared since the check above.
            with open(path, "x", encoding="utf-8") as out:
                out.write(values.spec_file_text(spec, command))
        except FileExistsError:
            return _not_saved(taken)
        except OSError as err:
            return _not_saved({"preset name": f"could not write {path} ({err.strerror or err}); check the presets "
                                              "folder (app.py --presets-dir) or type another name"})
        # The download is a copy in the page's own folder (the presets folder may be anywhere).
        download = shutil.copyfile(path, self.download_folder() / path.name)
        return {"preset.choice": gr.update(choices=self.preset_names(), value=slug), "export.spec_file": str(download),
                "export.command": command, MESSAGES: f"Saved preset **{values.md_text(slug)}**."}

    # --- jobs -------------------------------------------------------------------------------------

    def train(self, v: Values) -> Values:
        """Train -> submit to the queue and return at once: messages, run dropdown, status.

        Refused, with the upload's message, while a rejected upload is on show."""
        spec, errors = self._checked(v)
        if spec is not None:
            # What the worker would fail on at setup (model config, sizes, lengths, the task file's
            # lines): say so beside the field instead of queueing a run that cannot start.
            errors = checks.check(spec).errors
        if errors:
            return {MESSAGES: values.errors_markdown(errors)}
        try:
            run_id = self.queue.submit(spec)
        except OSError as err:  # runs.RunsFolderError: a read-only or full runs folder, named, nothing left behind
            return {MESSAGES: f"⚠️ {values.md_text(str(err))}"}
        status = values.status_markdown(run_id, self.queue.run_dir(run_id).read_status())
        return {MESSAGES: "", "run.select": gr.update(choices=self._run_ids(), value=run_id), "run.status": status}

    def stop(self, v: Values) -> Values:
        run_id = v["run.select"]
        if not run_id:
            return {"run.status": values.status_markdown("", {})}
        try:
            self.queue.cancel(plain_run_id(run_id))
        except ValueError as err:
            return {"run.status": f"⚠️ {values.md_text(err)}"}
        run = self.queue.run_dir(run_id)
        return {"run.status": values.status_markdown(run_id, run.read_status(), run.log_tail(20))
                + "\n\nStop requested."}

    def _run_ids(self) -> list[str]:
        return [info.run_id for info in self.queue.list_runs()]

def _without_message(preset: Values) -> Values:
    return {k: value for k, value in preset.items() if k != MESSAGES}


def _upload_refused(rejection: str) -> Values:
    """A rejected upload: its message on data.source, kept as the page's state while it is shown."""
    return {MESSAGES: values.errors_markdown({"data.source": rejection}), "form.upload_error": rejection}


def _not_saved(errors: dict[str, str]) -> Values:
    return {"export.spec_file": None, "export.command": "", MESSAGES: values.errors_markdown(errors)}
