"""build_app: the panels laid out and their events wired to a Lab."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from prefixlab.engine.runs import JobQueue
from prefixlab.ui import panels
from prefixlab.ui.fields import page_fields
from prefixlab.ui.handlers import Lab
from prefixlab.core.hub import hub_offline, hub_unreachable_reason
from prefixlab.engine.zoo import MODEL_PRESETS, describe_presets

REPO_PRESETS = Path(__file__).resolve().parents[2] / "presets"
DEFAULT_PRESET = "offline-tiny"  # runs anywhere: a tiny random-weight model, no download
TIMER_SECONDS = 1.0
CSS = """
#status { min-height: 2.5em; }
.note { font-size: 0.85em; opacity: 0.8; }
table.grid { width: 100%; border-collapse: collapse; font-size: 0.9em; table-layout: fixed; }
table.grid th, table.grid td { border: 1px solid var(--border-color-primary); padding: 4px 6px;
  vertical-align: top; text-align: left; overflow-wrap: anywhere; white-space: pre-wrap; }
table.grid th { background: var(--background-fill-secondary); }
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


def build_app(queue: JobQueue, presets_dir: str | Path = REPO_PRESETS) -> tuple[gr.Blocks, Lab]:
    """The whole page over `queue`'s runs directory. The caller launches it (and starts the queue)."""
    fields = page_fields()
    lab = Lab(queue, fields, Path(presets_dir))
    names = lab.preset_names()
    default = DEFAULT_PRESET if DEFAULT_PRESET in names else (names[0] if names else None)
    initial, override, rows, errors = lab.initial_state(default)
    with gr.Blocks(title="prefixlab") as demo:
        gr.Markdown("# prefixlab · prefix tuning, with and without the projection MLP, side by side")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=420):
                c = panels.build_preset_bar(names, default)
                c |= panels.build_actions(errors)
                c |= panels.build_form(fields, _suggestions(), initial, override)
                c |= panels.build_export()
            with gr.Column(scale=7, min_width=520):
                c |= panels.build_accounting_panel(rows)
                c |= panels.build_status_panel()
                c |= panels.build_chart_panel()
                c |= panels.build_comparison_panel()
        c |= panels.build_runs_panel()
        c["seen"] = gr.State({})
        c["upload_error"] = gr.State("")  # a rejected upload's message while its file is on show
        c["default_preset"] = gr.State(default)
        c["timer"] = gr.Timer(TIMER_SECONDS)
        wire(demo, lab, c)
    return demo, lab


def with_upload(handler):
    """handler(override, *raw, upload_error=...) as an event function whose first input is the
    upload_error state: Train, export and save refuse while a rejected upload is on show."""
    def event(upload_error, override, *raw):
        return handler(override, *raw, upload_error=upload_error)
    return event


def wire(demo: gr.Blocks, lab: Lab, c: dict) -> None:
    """Connect events to Lab's handlers. The timer reads files only; generation is its own queue."""
    fields = c["fields"]
    form_inputs = [c["override"], *fields.values()]
    inferred = [fields[k] for k in lab.inferred_keys]
    form_outputs = [*fields.values(), c["override"], c["errors"]]
    run_outputs = [c["status"], c["chart"], c["points"], c["comparison"], c["bars"], c["grid"], c["variant"],
                   c["runs"], c["run"], c["overlay"], c["seen"]]
    run_inputs = [c["run"], c["overlay"], c["smoothing"], c["log_scale"], c["seen"], c["variant"]]

    # .select (the user picked a preset), not .change: Save as preset selects the saved name, and
    # reloading the form from it would wipe the "Saved preset" message. Not .input either: that also
    # fires when the open dropdown loses focus, and would reset the form to the shown preset.
    c["preset"].select(lab.load_preset, c["preset"], form_outputs)
    checked_inputs = [c["upload_error"], *form_inputs]
    gr.on([comp.change for comp in checked_inputs], with_upload(lab.form_changed), checked_inputs,
          [c["accounting"], c["errors"], fields["prefix.encoder_hidden_size"]], trigger_mode="always_last",
          concurrency_id="form", concurrency_limit=4, show_progress="hidden")
    fields["model.name"].change(lab.model_changed, [fields["model.name"], c["override"]], inferred)
    c["override"].change(lab.override_changed, [c["override"], fields["model.name"]], inferred)
    # A new file replaces the last one's verdict; clearing the upload (×) drops a rejection, and the
    # upload_error change then rewrites the messages from the form alone.
    c["upload"].upload(lab.upload_task, [c["upload"], fields["data.source"]],
                       [fields["data.source"], fields["data.source_column"], fields["data.target_column"],
                        c["errors"], c["upload_error"]])
    c["upload"].clear(lambda: "", None, c["upload_error"])
    c["train"].click(with_upload(lab.train), checked_inputs, [c["errors"], c["run"], c["status"]])
    c["stop"].click(lab.stop, c["run"], c["status"])
    c["export"].click(with_upload(lab.export_spec), checked_inputs, [c["spec_file"], c["command"], c["errors"]])
    c["save"].click(lambda name, upload_error, override, *raw: lab.save_preset(
                        name, override, *raw, upload_error=upload_error),
                    [c["preset_name"], *checked_inputs], [c["preset"], c["spec_file"], c["command"], c["errors"]])

    # A preset saved since start-up is offered after a reload, and a changed opening preset refills the form.
    demo.load(lab.presets_on_load, c["default_preset"], [c["preset"], *fields.values(), c["override"], c["errors"]])
    # Reading the run directory: on load (reattach), every timer tick, and when the selection changes.
    demo.load(lab.page_load, None, [c["run"], c["overlay"], c["runs"]])
    for trigger in (c["timer"].tick, c["run"].change, c["overlay"].change, c["smoothing"].release,
                    c["log_scale"].change):
        trigger(lab.tick, run_inputs, run_outputs, concurrency_id="runs", concurrency_limit=None,
                show_progress="hidden", trigger_mode="always_last")
    c["generate"].click(lab.generate, [c["run"], c["prompt"]], c["generated"], concurrency_id="generate",
                        concurrency_limit=1)
    # Another run selected: the last one's generations and adapter zip would sit under its status.
    c["run"].change(lambda: ("", None), None, [c["generated"], c["adapter_file"]], show_progress="hidden")
    c["zip"].click(lab.zip_adapter, [c["run"], c["variant"]], c["adapter_file"])
