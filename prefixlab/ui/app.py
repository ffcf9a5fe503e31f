"""build_app: the panels laid out, registered by id, and their events wired to a Lab by those ids."""

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
from prefixlab.ui.handlers import MESSAGES, Lab
from prefixlab.ui.registry import Registry

REPO_PRESETS = Path(__file__).resolve().parents[2] / "presets"
DEFAULT_PRESET = "offline-tiny"  # runs anywhere: a tiny random-weight model, no download
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
    registry = Registry()
    with gr.Blocks(title="prefixlab") as demo:
        registry.register("page", demo)
        gr.Markdown("# prefixlab · prefix tuning, with and without the projection MLP, side by side")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=420):
                registry.add("preset", panels.build_preset_bar(names, default))
                registry.add("actions", panels.build_actions(opening[MESSAGES]))
                registry.add(FORM, panels.build_form(fields, _suggestions(), {f.key: opening[f.id] for f in fields},
                                                     opening["form.override"]))
                registry.add("export", panels.build_export())
            with gr.Column(scale=7, min_width=520):
                registry.add("accounting", panels.build_accounting_panel(opening["accounting.table"]))
                registry.add("run", panels.build_status_panel())
                registry.add("run", panels.build_chart_panel())
                registry.add("compare", panels.build_comparison_panel())
        registry.add("runs", panels.build_runs_panel())
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
    run_panels = ["run.status", "run.chart", "run.points", "compare.table", "compare.bars", "compare.outputs",
                  "compare.adapter", "runs.table", "run.select", "run.overlay", "run.seen"]
    run_inputs = ["run.select", "run.overlay", "run.smoothing", "run.log_scale", "run.seen", "compare.adapter"]
    inferred = [*lab.inferred_ids]

    # .select (the user picked a preset), not .change: Save as preset selects the saved name, and
    # reloading the form from it would wipe the "Saved preset" message. Not .input either: that also
    # fires when the open dropdown loses focus, and would reset the form to the shown preset.
    r.on("preset.choice.select", lab.load_preset, ["preset.choice"], [*form, "form.override", MESSAGES])
    r.on([f"{i}.change" for i in checked], lab.form_changed, checked,
         ["accounting.table", MESSAGES, "form.prefix.encoder_hidden_size"], trigger_mode="always_last",
         concurrency_id="form", concurrency_limit=4, show_progress="hidden")
    r.on("form.model.name.change", lab.model_changed, ["form.model.name", "form.override"], inferred)
    r.on("form.override.change", lab.override_changed, ["form.override", "form.model.name"], inferred)
    # A new file replaces the last one's verdict; clearing the upload (×) drops a rejection, and the
    # upload_error change then rewrites the messages from the form alone.
    r.on("form.upload.upload", lab.upload_task, ["form.upload", "form.data.source"],
         ["form.data.source", "form.data.source_column", "form.data.target_column", MESSAGES, "form.upload_error"])
    r.on("form.upload.clear", lab.clear_upload, [], ["form.upload_error"])
    r.on("actions.train.click", lab.train, checked, [MESSAGES, "run.select", "run.status"])
    r.on("actions.stop.click", lab.stop, ["run.select"], ["run.status"])
    r.on("export.export_spec.click", lab.export_spec, checked, ["export.spec_file", "export.command", MESSAGES])
    r.on("export.save_preset.click", lab.save_preset, ["export.preset_name", *checked],
         ["preset.choice", "export.spec_file", "export.command", MESSAGES])

    # A preset saved since start-up is offered after a reload, and a changed opening preset refills the form.
    r.on("page.load", lab.presets_on_load, ["preset.default"], ["preset.choice", *form, "form.override", MESSAGES])
    # Reading the run directory: on load (reattach), every timer tick, and when the selection changes.
    r.on("page.load", lab.page_load, [], ["run.select", "run.overlay", "runs.table"])
    for trigger in ("run.timer.tick", "run.select.change", "run.overlay.change", "run.smoothing.release",
                    "run.log_scale.change"):
        r.on(trigger, lab.tick, run_inputs, run_panels, concurrency_id="runs", concurrency_limit=None,
             show_progress="hidden", trigger_mode="always_last")
    r.on("compare.generate.click", lab.generate, ["run.select", "compare.prompt"], ["compare.generated"],
         concurrency_id="generate", concurrency_limit=1)
    r.on("run.select.change", lab.run_selected, [], ["compare.generated", "compare.adapter_file"],
         show_progress="hidden")
    r.on("compare.zip_adapter.click", lab.zip_adapter, ["run.select", "compare.adapter"], ["compare.adapter_file"])
