"""build_app: the panels laid out, registered by id, and their events wired to a Lab by those ids.

The layout, for a researcher's screen (TensorBoard's scalars beside LlamaBoard's form): a top bar
(preset, Train, Stop); on the left the form, its essentials open and every other field in its
section's collapsed accordion, with the parameters of the experiment it describes; on the right the
selected run: status, its charts as tabs (loss, task metrics, parameters) and the comparison, all in
the first screen at 1280x800, then its outputs, typed-prompt generation, adapter downloads and the
list of runs and the Sweep tab (a sweep of the form's experiment, its chart and table) as tabs. A new
view of runs is one more tab in either tab bar.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

from prefixlab.core.hub import hub_offline, hub_unreachable_reason
from prefixlab.engine.runs import JobQueue
from prefixlab.engine.zoo import MODEL_PRESETS, describe_presets
from prefixlab.ui import panels
from prefixlab.ui.access import private_temp_dir
from prefixlab.ui.fields import FORM, page_fields
from prefixlab.ui.handlers import DATA_NOTE_KEYS, MESSAGES, SHOWN, Lab
from prefixlab.ui.registry import Registry

REPO_PRESETS = Path(__file__).resolve().parents[2] / "presets"
DEFAULT_PRESET = "offline-tiny"  # runs anywhere: a tiny random-weight model, no download
# Gradio's theme, a little denser than its default so the run's charts and comparison fit a laptop
# screen beside the form.
THEME = gr.themes.Default(spacing_size="sm", text_size="sm", radius_size="sm")
# A few lines for the page's own tables (numbers never broken inside, variant swatches) and its
# notes; a field whose value is wrong shows its message in the error colour.
CSS = """
#status { min-height: 2.2em; }
.note, .note p { font-size: 0.85em; opacity: 0.85; }
.messages p { margin: 0.1em 0; }
.field-error [data-testid="block-info"], .field-error .info-text { color: var(--error-text-color); opacity: 1; }
.table-scroll { overflow-x: auto; }
table.grid { width: 100%; border-collapse: collapse; font-size: 0.9em; }
table.grid th, table.grid td { border: 1px solid var(--border-color-primary); padding: 3px 6px;
  vertical-align: top; text-align: left; overflow-wrap: break-word; white-space: pre-wrap; }
table.grid th { background: var(--background-fill-secondary); }
table.data td { white-space: nowrap; overflow-wrap: normal; }
table.data th { white-space: normal; overflow-wrap: normal; word-break: keep-all; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.data tr.formula td { white-space: normal; font-size: 0.85em; opacity: 0.85; border-top: none; }
table.data tr.selected td { background: var(--background-fill-secondary); font-weight: 600; }
table.runs td { white-space: normal; }
.swatch { display: inline-block; width: 0.75em; height: 0.75em; border-radius: 2px; margin-right: 0.4em; }
"""


def model_choices(hub_reachable: bool) -> tuple[tuple[str, str], ...]:
    """(label, name) for the model dropdown: small real models first where the Hub answers,
    the offline presets first where it does not (choosing a Hub model then says why it cannot load)."""
    presets = describe_presets()
    real = [c for c in presets if not MODEL_PRESETS[c[1]].offline]
    offline = [c for c in presets if MODEL_PRESETS[c[1]].offline]
    return tuple(real + offline if hub_reachable else offline + real)


def _suggestions() -> dict[str, tuple]:
    # One HEAD request at start-up (3 s at most, cached), skipped when HF_HUB_OFFLINE is set.
    reachable = not hub_offline() and hub_unreachable_reason() is None
    return {"model.name": model_choices(reachable), "data.source": ("e2e-synth",),
            "data.source_column": ("source",), "data.target_column": ("target",)}


def build_page(queue: JobQueue, presets_dir: str | Path = REPO_PRESETS, *,
               allow_paths: Iterable[str | Path] = ()) -> tuple[gr.Blocks, Lab, Registry]:
    """The whole page over `queue`'s runs directory, its behaviour, and its components and events
    by id. The caller launches the page (and starts the queue).

    Gradio's files go to this process's private folder (ui/access.py: GRADIO_TEMP_DIR is set to
    it before any component is made). `allow_paths`: folders whose files the page may name as a
    task or model, besides runs/uploads (app.py --allow-path)."""
    temp_dir = private_temp_dir()
    # Gradio's queue rebuilds a pandas table of its last 10,000 events after every event, for a
    # monitoring page the lab does not use: with twenty viewers ticking every second that grows
    # into most of a tick's cost. Every 1,000 events over the last 1,000 instead (read when the
    # Blocks' queue is made, below; a value set by the user wins).
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    fields = page_fields()
    lab = Lab(queue, fields, Path(presets_dir), temp_dir=temp_dir, allow_paths=allow_paths)
    names = lab.preset_names()
    default = DEFAULT_PRESET if DEFAULT_PRESET in names else (names[0] if names else None)
    opening = lab.initial_state(default)
    initial = {f.key: opening[f.id] for f in fields}
    errors = opening[SHOWN]
    suggestions = _suggestions()
    registry = Registry()
    with gr.Blocks(title="prefixlab", fill_width=True) as demo:
        registry.register("page", demo)
        with gr.Row(equal_height=True, elem_id="top-bar", variant="compact"):
            with gr.Column(scale=3, min_width=280):
                registry.add("page", panels.build_title())
            registry.add("preset", panels.build_preset_bar(names, default))
            registry.add("actions", panels.build_actions())
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=400, elem_id="form-column"):
                registry.add("actions", panels.build_messages(opening[MESSAGES]))
                registry.add(FORM, panels.build_essentials(fields, lab.layout, suggestions, initial, errors))
                registry.add("accounting", panels.build_accounting_panel(opening["accounting.table"],
                                                                         opening["accounting.note"]))
                registry.add(FORM, panels.build_more(fields, lab.layout, suggestions, initial,
                                                     opening["form.override"], errors))
                registry.add("export", panels.build_export())
            with gr.Column(scale=7, min_width=520, elem_id="run-column"):
                with gr.Row(equal_height=True, elem_id="run-bar"):
                    registry.add("run", panels.build_run_choice())
                    registry.add("run", panels.build_chart_settings())
                registry.add("run", panels.build_status_panel())
                with gr.Tabs(elem_id="chart-tabs"):
                    with gr.Tab("Loss", id="loss", elem_id="tab-loss"):
                        registry.add("run", panels.build_loss_panel())
                    with gr.Tab("Task metrics", id="metrics", elem_id="tab-metrics"):
                        registry.add("run", panels.build_metrics_panel())
                    with gr.Tab("Parameters", id="parameters", elem_id="tab-parameters"):
                        registry.add("run", panels.build_bars_panel())
                registry.add("run", panels.build_chart_footer())
                registry.add("compare", panels.build_comparison_panel())
                with gr.Tabs(elem_id="output-tabs"):
                    with gr.Tab("Outputs", id="outputs", elem_id="tab-outputs"):
                        registry.add("compare", panels.build_outputs_panel())
                    with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                        registry.add("compare", panels.build_generate_panel())
                    with gr.Tab("Download adapter", id="adapters", elem_id="tab-adapters"):
                        registry.add("compare", panels.build_adapter_panel())
                    with gr.Tab("All runs", id="runs", elem_id="tab-runs"):
                        registry.add("runs", panels.build_runs_panel())
                    with gr.Tab("Sweep", id="sweep", elem_id="tab-sweep"):
                        registry.add("sweep", panels.build_sweep_panel())
        wire(registry, lab)
    return demo, lab, registry


def build_app(queue: JobQueue, presets_dir: str | Path = REPO_PRESETS, *,
              allow_paths: Iterable[str | Path] = ()) -> tuple[gr.Blocks, Lab]:
    """The whole page over `queue`'s runs directory. The caller launches it (and starts the queue)."""
    demo, lab, _ = build_page(queue, presets_dir, allow_paths=allow_paths)
    return demo, lab


def wire(r: Registry, lab: Lab) -> None:
    """Connect events to Lab's handlers by id: each names what it reads and what it may change.
    The timer reads files only; generation is its own queue."""
    form = [f.id for f in lab.fields]
    checked = ["form.upload_error", "form.override", *form]  # what Train, export and save read
    field_messages = [*form, *r.ids("form.more."), SHOWN]  # where each field's message goes
    run_panels = ["run.status", "run.chart", "run.metrics", "run.points", "run.bars", "compare.table",
                  "compare.outputs", "compare.adapter", "runs.table", "run.select", "run.overlay", "run.seen"]
    run_inputs = ["run.select", "run.overlay", "run.smoothing", "run.log_scale", "run.seen", "compare.adapter"]
    inferred = [*lab.inferred_ids]
    data_note = ["form.data_note", "form.suggested", "form.use_suggested"]

    # .select (the user picked a preset), not .change: Save as preset selects the saved name, and
    # reloading the form from it would wipe the "Saved preset" message. Not .input either: that also
    # fires when the open dropdown loses focus, and would reset the form to the shown preset.
    r.on("preset.choice.select", lab.load_preset, ["preset.choice"], [*form, "form.override", MESSAGES])
    r.on([f"{i}.change" for i in checked], lab.form_changed, [*checked, SHOWN],
         ["accounting.table", "accounting.note", MESSAGES, *field_messages], trigger_mode="always_last",
         concurrency_id="form", concurrency_limit=4, show_progress="hidden")
    # What the task's data does at max_length: counted apart from the form's checks (the first count
    # loads a tokenizer), on the fields it reads and when the page opens.
    r.on([f"form.{key}.change" for key in DATA_NOTE_KEYS if f"form.{key}" in r] + ["page.load"], lab.data_note,
         checked, data_note, trigger_mode="always_last", concurrency_id="data_note", concurrency_limit=2,
         show_progress="hidden")
    r.on("form.use_suggested.click", lab.use_suggested, ["form.suggested"], ["form.training.max_length"])
    r.on("form.model.name.change", lab.model_changed, ["form.model.name", "form.override"], inferred)
    r.on("form.override.change", lab.override_changed, ["form.override", "form.model.name"], inferred)
    # A new file replaces the last one's verdict; clearing the upload (×) drops a rejection, and the
    # upload_error change then rewrites the messages from the form alone.
    r.on("form.upload.upload", lab.upload_task, ["form.upload", "form.data.source"],
         ["form.data.source", "form.data.source_column", "form.data.target_column", MESSAGES, "form.upload_error"])
    r.on("form.upload.clear", lab.clear_upload, [], ["form.upload_error"])
    r.on("actions.train.click", lab.train, [*checked, SHOWN], [MESSAGES, "run.select", "run.status", *field_messages])
    r.on("actions.stop.click", lab.stop, ["run.select"], ["run.status"])
    r.on("export.export_spec.click", lab.export_spec, checked, ["export.spec_file", "export.command", MESSAGES])
    r.on("export.save_preset.click", lab.save_preset, ["export.preset_name", *checked],
         ["preset.choice", "export.spec_file", "export.command", MESSAGES])
    r.on("run.edit.click", lab.edit_run, ["run.select"], [*form, "form.override", "run.note"])

    # A preset saved since start-up is offered after a reload, and a changed opening preset refills the form.
    r.on("page.load", lab.presets_on_load, ["preset.default"], ["preset.choice", *form, "form.override", MESSAGES])
    # Reading the run directory: on load (reattach), every timer tick, and when the selection changes.
    r.on("page.load", lab.page_load, [], ["run.select", "run.overlay", "runs.table"])
    for trigger in ("run.timer.tick", "run.select.change", "run.overlay.change", "run.smoothing.release",
                    "run.smoothing.change", "run.log_scale.change"):
        r.on(trigger, lab.tick, run_inputs, run_panels, concurrency_id="runs", concurrency_limit=None,
             show_progress="hidden", trigger_mode="always_last")
    r.on("compare.generate.click", lab.generate, ["run.select", "compare.prompt"], ["compare.generated"],
         concurrency_id="generate", concurrency_limit=1)
    r.on("run.select.change", lab.run_selected, [],
         ["compare.generated", "compare.adapter_file", "compare.adapter_note", "run.files", "run.note"],
         show_progress="hidden")
    r.on("compare.zip_adapter.click", lab.zip_adapter, ["run.select", "compare.adapter"],
         ["compare.adapter_file", "compare.adapter_note"])
    # Sweeps: started from the form (checked as Train checks it), read back from the run folders (on
    # load, so a restarted app lists them), redrawn by the run panels' timer when what they show changes.
    sweep_view = ["sweep.select", "sweep.chart", "sweep.table", "sweep.seen"]
    r.on("sweep.start.click", lab.start_sweep, [*checked, SHOWN, "sweep.vary", "sweep.vary2", "sweep.metric"],
         [MESSAGES, *field_messages, "sweep.note", "sweep.vary", "sweep.vary2", *sweep_view])
    r.on("page.load", lab.sweeps_on_load, [], ["sweep.select"])
    r.on(["run.timer.tick", "sweep.select.change", "sweep.metric.change"], lab.sweep_tick,
         ["sweep.select", "sweep.seen", "sweep.metric"], sweep_view, concurrency_id="sweeps",
         concurrency_limit=None, show_progress="hidden", trigger_mode="always_last")
    r.on("run.export.click", lab.export_charts, ["run.select", "run.overlay", "run.smoothing", "run.log_scale"],
         ["run.files", "run.note"])
