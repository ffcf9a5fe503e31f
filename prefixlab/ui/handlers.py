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
from prefixlab.engine.limits import MAX_TASK_FILE_BYTES, MAX_UPLOAD_MB, clip
from prefixlab.engine.runs import JobQueue
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.engine.sweep import SweepError, plan_sweep, submit_sweep, sweep_runs
from prefixlab.engine.zoo import model_facts
from prefixlab.ui import datanote, sweeps, values
from prefixlab.ui.access import PageAccess, is_inside, private_temp_dir
from prefixlab.ui.fields import FieldSpec, form_from_spec
from prefixlab.ui.form import error_classes, error_update, to_component_value
from prefixlab.ui.layout import form_layout
from prefixlab.ui.run_handlers import RunHandlers, plain_run_id
from prefixlab.ui.values import Values

MESSAGES = "actions.messages"  # the line above the form naming every bad field
SHOWN = "form.shown_errors"  # the page's state: {form key: message} shown beside the fields now
# What the task's data note reads: a change to any of these recounts (ui/datanote.py).
DATA_NOTE_KEYS = ("model.name", "data.source", "data.source_column", "data.target_column", "data.hub_config",
                  "data.separator", "data.max_train_examples", "data.max_eval_examples", "training.max_length",
                  "prefix.num_virtual_tokens")


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
        self.by_key = {f.key: f for f in fields}
        self.layout = form_layout(fields)
        # The shipped presets (read only: the app never writes into the repository), and the user's,
        # saved with their runs.
        self.presets_dir = Path(presets_dir)
        self.user_presets_dir = queue.runs_dir / "presets"
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
        """The shipped presets, then the user's (a saved name is never a shipped one's)."""
        shipped = sorted(p.stem for p in self.presets_dir.glob("*.json"))
        saved = sorted(p.stem for p in self.user_presets_dir.glob("*.json")) if self.user_presets_dir.is_dir() else []
        return shipped + [name for name in saved if name not in shipped]

    def preset_path(self, name: str) -> Path:
        """A listed preset's file: the shipped one of that name, else the user's."""
        shipped = self.presets_dir / f"{name}.json"
        return shipped if shipped.is_file() else self.user_presets_dir / f"{name}.json"

    def preset_values(self, name: str) -> Values:
        """Every form control, the override box and the message line for preset `name` (a broken
        preset: only the override box, unticked, and the message saying what is wrong)."""
        try:
            spec = ExperimentSpec.load(self.preset_path(name))
        except SpecError as err:
            return {"form.override": False, MESSAGES: values.errors_markdown({err.field: err.message})}
        return self.spec_values(spec)

    def spec_values(self, spec: ExperimentSpec) -> Values:
        """The form showing `spec`: every control, the override box (ticked where the spec pins an
        inferred size, whose fields then show its values; else the model's) and the message line.
        A spec whose variants the form cannot show: only the message."""
        try:
            form, override = form_from_spec(spec)
        except SpecError as err:
            return {MESSAGES: values.errors_markdown({err.field: err.message})}
        out = {**{f.id: to_component_value(f, form.get(f.key)) for f in self.fields}, "form.override": override,
               MESSAGES: ""}
        if not override:
            out.update(self.model_changed({"form.override": False, "form.model.name": spec.model.name}))
        return out

    def initial_state(self, name: str | None) -> Values:
        """What the page opens with, by id: every form input (the controls, the override box, the
        upload's rejection, the messages shown beside the fields), the parameter table and its note,
        and the message line."""
        state = {**{f.id: to_component_value(f, f.default) for f in self.fields},
                 "form.override": False, "form.upload_error": "", MESSAGES: "", SHOWN: {}}
        if name:
            loaded = self.preset_values(name)
            self._opened_with[name] = loaded
            state.update(loaded)  # a broken preset keeps the defaults
        if not state["form.override"]:
            state.update(self.model_changed(state))
        assessed = self.assess(state)
        state["accounting.table"], state["accounting.note"] = assessed.table, assessed.note
        state[SHOWN] = assessed.field_errors(self.by_key)
        state[MESSAGES] = state[MESSAGES] or values.errors_markdown(assessed.errors)
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
        listed preset: a name is never a path)."""
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

    def assess(self, v: Values) -> values.Assessment:
        """Every problem with the form at once, and the parameter counts where they can be made.

        The spec's own checks name every bad value; the checks against the model and the data
        (engine.checks: sizes, positions, the task file's columns and lines) then run on the form
        with those values at their defaults, so their findings on the other fields show too. A path
        the page may not read is refused (and not read), and a rejected upload on show is one more
        problem. The counts are left out while a field they depend on is wrong."""
        raw = values.collect_form(self.fields, values.field_values(self.fields, v), v["form.override"])
        spec, errors = values.check_form(raw)
        stand_in = spec if spec is not None else values.check_form({k: x for k, x in raw.items() if k not in errors})[0]
        denied = self._denied(v)
        rows = []
        if stand_in is not None and "model.name" not in denied:  # the model's config is read for the counts
            rows, found = values.accounting(stand_in, data="data.source" not in denied)
            for key, message in found.items():
                errors.setdefault(key, message)
        for key, message in values.bound_errors(self.fields, raw).items():  # this machine's (its GPUs)
            errors.setdefault(key, message)
        errors = values.with_upload_error({**errors, **denied}, v["form.upload_error"])
        return values.Assessment(spec, errors, rows)

    def form_changed(self, v: Values) -> Values:
        """Any form edit -> the parameter table and its note, the message line, each field's message
        beside it (and its section opened when that is collapsed), encoder_hidden_size enabled or not.

        A rejected upload's message ("form.upload_error", the page's state) stays in the messages
        until the file is replaced or cleared."""
        assessed = self.assess(v)
        projection_on = "projection" in (v["form.experiment.variants"] or [])
        out = {"accounting.table": assessed.table, "accounting.note": assessed.note,
               MESSAGES: values.errors_markdown(assessed.errors), **self.error_updates(assessed.errors, v[SHOWN])}
        hidden_id = "form.prefix.encoder_hidden_size"
        if hidden_id in {f.id for f in self.fields}:
            out[hidden_id] = {**out.get(hidden_id, {"__type__": "update"}), "interactive": projection_on}
        return out

    def error_updates(self, errors: dict[str, str], shown: dict | None) -> Values:
        """The fields whose message changed since `shown` ({key: message} on the page now): each
        shows its new message beside it (or its help again); a collapsed section with a field newly
        wrong opens; and the new `shown`, when it changed."""
        shown = dict(shown or {})
        wrong = {key: message for key, message in errors.items() if key in self.by_key}
        out: Values = {}
        for key in dict.fromkeys([*wrong, *shown]):
            if key in self.by_key and wrong.get(key) != shown.get(key):
                out[self.by_key[key].id] = error_update(self.by_key[key], wrong.get(key))
        for key in wrong:
            section = self.layout.section_of_more(key)
            if section and key not in shown:
                out[f"form.more.{section}"] = gr.update(open=True)
        if wrong != shown:
            out[SHOWN] = wrong
        return out

    def data_note(self, v: Values) -> Values:
        """The task, model or max_length changed -> what the data will do at that max_length (how
        many examples, how many truncated, the max_length at which all fit) and the button that
        sets it. Nothing while one of those fields is wrong (its message says why), or names what
        the page may not read."""
        raw = values.collect_form(self.fields, values.field_values(self.fields, v), v["form.override"])
        spec, errors = values.check_form(raw)
        if spec is None:
            spec = values.check_form({k: x for k, x in raw.items() if k not in errors})[0]
        relevant = any(key.startswith(("data.", "model.")) or key == "training.max_length" for key in errors)
        note = datanote.DataNote("")
        if not (spec is None or relevant or self._denied(v) or v["form.upload_error"]):
            try:
                limit = model_facts(spec.model.name).position_limit
            except ValueError:  # a model whose config cannot be read: model.name's message says why
                limit = False
            if limit is not False:
                prefix = max(variant.prefix.num_virtual_tokens or 0 for variant in spec.variants)
                note = datanote.data_note(spec, None if limit is None else limit - prefix)
        suggestion = note.suggestion
        return {"form.data_note": note.markdown, "form.suggested": suggestion,
                "form.use_suggested": gr.update(visible=suggestion is not None,
                                                value=f"Use max_length {suggestion}" if suggestion else "Use")}

    @staticmethod
    def use_suggested(v: Values) -> Values:
        """The data note's button -> training.max_length set to the suggested value."""
        suggestion = v["form.suggested"]
        return {"form.training.max_length": suggestion} if suggestion else {}

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
        """-> preset dropdown, saved file, CLI command, messages. The preset is saved with the user's
        runs (<runs folder>/presets), never into the shipped presets folder (the repository's). A
        name whose preset exists, shipped or saved ("Offline Tiny!" is offline-tiny), is refused:
        saving never replaces a preset."""
        spec, errors = self._checked(v)
        slug = None
        try:
            slug = values.preset_slug(v["export.preset_name"] or (spec.name if spec else ""))
        except ValueError as err:
            errors = errors or {"preset name": str(err)}
        path = self.user_presets_dir / f"{slug}.json"
        existing = self.preset_path(slug) if slug else path
        taken = {"preset name": f"a preset named {slug!r} already exists ({existing}); saving never replaces a "
                                "preset: type another name"}
        if slug and not errors and (existing.exists() or path.exists()):
            errors = taken
        if spec is None or errors:
            return _not_saved(errors)
        command = values.cli_command(path.resolve())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # "x": created here, never over a preset that appeared since the check above.
            with open(path, "x", encoding="utf-8") as out:
                out.write(values.spec_file_text(spec, command))
        except FileExistsError:
            return _not_saved(taken)
        except OSError as err:
            return _not_saved({"preset name": f"could not write {path} ({err.strerror or err}); check the runs "
                                              "folder (app.py --runs-dir) or type another name"})
        # The download is a copy in the page's own folder (the runs folder may be anywhere).
        download = shutil.copyfile(path, self.download_folder() / path.name)
        return {"preset.choice": gr.update(choices=self.preset_names(), value=slug), "export.spec_file": str(download),
                "export.command": command, MESSAGES: f"Saved preset **{values.md_text(slug)}**."}

    # --- jobs -------------------------------------------------------------------------------------

    def _ready(self, v: Values) -> tuple[ExperimentSpec | None, Values]:
        """(spec, {}) for the form Train would queue, or (None, the update naming every problem in the
        message line and beside its field): the form's values, a rejected upload on show, a path the
        page may not read, this machine's bounds (training.num_processes), and what the worker would
        fail on at setup (engine.checks: model config, sizes, lengths, the task file's lines)."""
        spec, errors = self._checked(v)
        if spec is not None:
            errors = checks.check(spec).errors
        raw = values.collect_form(self.fields, values.field_values(self.fields, v), v["form.override"])
        for key, message in values.bound_errors(self.fields, raw).items():
            errors.setdefault(key, message)
        if errors:
            return None, {MESSAGES: values.errors_markdown(errors), **self.error_updates(errors, v[SHOWN])}
        return spec, {}

    def train(self, v: Values) -> Values:
        """Train -> submit to the queue and return at once: messages, run dropdown, status; or every
        problem, in the message line and beside its field (_ready): a run that cannot start is
        never queued.

        Refused, with the upload's message, while a rejected upload is on show."""
        spec, refused = self._ready(v)
        if spec is None:
            return refused
        try:
            run_id = self.queue.submit(spec)
        except OSError as err:  # runs.RunsFolderError: a read-only or full runs folder, named, nothing left behind
            return {MESSAGES: f"⚠️ {values.md_text(str(err))}"}
        status = values.status_markdown(run_id, self.queue.run_dir(run_id).read_status())
        return {MESSAGES: "", "run.select": gr.update(choices=self._run_ids(), value=run_id), "run.status": status}

    def start_sweep(self, v: Values) -> Values:
        """Start sweep -> the form's experiment, checked as Train checks it (_ready), run once per value
        of the vary boxes' field (or per pair of values of two): planned with engine.sweep.plan_sweep,
        which checks every expanded spec before anything is queued, then queued in order on the page's
        queue, and the new sweep selected in the sweeps menu and drawn.

        A form problem is named as Train names it (the message line, beside its field); a sweep problem
        (a box that is not FIELD=VALUES, a field a sweep cannot vary, a value the field cannot take, a
        run the checks refuse: named by its value and field) in the note under the boxes and beside
        its box. Either way nothing is queued."""
        texts = [v[box] for box in sweeps.VARY_IDS]
        vary, problems = sweeps.read_vary(texts)
        spec, refused = self._ready(v)
        if spec is None:
            note = sweeps.FORM_REFUSED + (f"\n\n{values.errors_markdown(problems)}" if problems else "")
            return {**refused, "sweep.note": note, **self._vary_boxes(problems, texts)}
        plan = None
        if not problems:
            try:
                plan = plan_sweep(spec, vary)
            except SweepError as err:
                problems = err.errors
        if plan is None:
            return {MESSAGES: "", "sweep.note": sweeps.problems_note(problems), **self._vary_boxes(problems, texts)}
        try:
            run_ids = submit_sweep(self.queue, plan)
        except OSError as err:  # runs.RunsFolderError: named; the runs queued before it stay queued
            queued = sweep_runs(self.queue.runs_dir, plan.id)
            kept = f" ({len(queued)} of its {len(plan.specs)} runs were queued and stay queued)" if queued else ""
            return {MESSAGES: "", "sweep.note": f"⚠️ {values.md_text(str(err))}{values.md_text(kept)}",
                    **self._vary_boxes({}, texts)}
        drawn = self.sweep_tick({"sweep.select": plan.id, "sweep.seen": {}, "sweep.metric": v["sweep.metric"]})
        return {MESSAGES: "", "sweep.note": sweeps.queued_note(plan.id, run_ids, plan.fields),
                **self._vary_boxes({}, texts), **drawn,
                "sweep.select": gr.update(choices=sweeps.sweep_choices(self._sweeps()), value=plan.id)}

    @staticmethod
    def _vary_boxes(problems: dict[str, str], texts: list) -> Values:
        """Each vary box's message (sweeps.vary_messages) beside it, or its help again."""
        return {box: gr.update(info=values.field_info(sweeps.HELPS[box], message),
                               elem_classes=error_classes(message))
                for box, message in sweeps.vary_messages(problems, texts).items()}

    def edit_run(self, v: Values) -> Values:
        """"Edit in form": the selected run's experiment (its spec.json) in the form, to change and
        train again; said under the run's charts (the form's message line follows the form)."""
        run_id = v["run.select"]
        if not run_id:
            return {"run.note": "⚠️ select a run first; its experiment then fills the form"}
        try:
            spec = self.queue.run_dir(plain_run_id(run_id)).read_spec()
        except (ValueError, OSError) as err:
            return {"run.note": f"⚠️ {values.md_text(clip(str(err), values.MAX_MESSAGE_CHARS))}"}
        filled = self.spec_values(spec)
        if set(filled) == {MESSAGES}:  # variants the form cannot show
            return {"run.note": filled[MESSAGES]}
        del filled[MESSAGES]
        return {**filled, "run.note": f"The form holds run **{values.md_text(run_id)}**'s experiment: change what "
                                      "you like and press **Train**."}

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
