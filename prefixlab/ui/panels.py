"""Page layout: one builder per panel, each returning `{name: component}` (no event wiring here).

ui/app.py registers each panel's components under a namespace ("run" + "status" -> "run.status",
ui/registry.py) and wires the events by those ids; the handlers are in ui/handlers.py. A
component added to a panel is one more entry in its dict: nothing else counts the components.
The page's state (gr.State) and timer belong to the panel they serve. Stable elem_id's on everything
a browser test touches.
"""

from __future__ import annotations

import gradio as gr

from prefixlab.views import figures as plots
from prefixlab.views import tables as compare
from prefixlab.ui import values
from prefixlab.ui.fields import SECTION_TITLES, FieldSpec, fields_by_section
from prefixlab.ui.form import component_for

OPEN_SECTIONS = {"experiment", "prefix", "model", "data", "training"}  # generation starts collapsed
TIMER_SECONDS = 1.0  # how often the run panels read the run directory


def build_preset_bar(preset_names: list[str], default: str | None) -> dict:
    with gr.Row():
        preset = gr.Dropdown(preset_names, value=default, label="preset", elem_id="preset", scale=3,
                             info="Fills the whole form from presets/<name>.json")
    # The preset the page opened with: a page load refills the form if its file changed since.
    return {"choice": preset, "default": gr.State(default)}


def build_form(fields: list[FieldSpec], suggestions: dict[str, tuple], initial: dict, override: bool) -> dict:
    """The configuration form, one accordion per section: a control per field, by its key
    ("prefix.num_virtual_tokens"), the override box, the task upload and its rejection's state.

    `initial` holds the controls' first values by key (the default preset's), so the page opens filled in.
    """
    out = {}
    for section, section_fields in fields_by_section(fields).items():
        if not section_fields:
            continue
        with gr.Accordion(SECTION_TITLES.get(section, section), open=section in OPEN_SECTIONS,
                          elem_id=f"section-{section}"):
            if section == "prefix":
                out["override"] = gr.Checkbox(
                    override, label="override inferred sizes", elem_id="override-inferred",
                    info="num_layers, token_dim, num_attention_heads and num_transformer_submodules come "
                         "from the model; tick to set them yourself (they are checked against the model)")
            if section == "data":
                out["upload"] = gr.File(label="upload a task file (JSONL or CSV)", file_types=[".jsonl", ".csv"],
                                        elem_id="upload-task", height=90)
            for f in section_fields:
                out[f.key] = component_for(f, suggestions.get(f.key, ()), initial.get(f.key))
    out["upload_error"] = gr.State("")  # a rejected upload's message while its file is on show
    return out


def build_actions(errors: str) -> dict:
    """Train / Stop, and the line naming any form field whose value is wrong."""
    messages = gr.Markdown(errors, elem_id="form-errors")
    with gr.Row():
        train = gr.Button("Train", variant="primary", elem_id="train")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    return {"train": train, "stop": stop, "messages": messages}


def build_export() -> dict:
    """Save the form as a preset, download the spec JSON, and the equivalent CLI command."""
    with gr.Accordion("Save / export", open=False, elem_id="section-export"):
        with gr.Row():
            preset_name = gr.Textbox(label="preset name", elem_id="preset-name", scale=2)
            save = gr.Button("Save as preset", elem_id="save-preset", scale=1)
            export = gr.Button("Export spec JSON", elem_id="export-spec", scale=1)
        spec_file = gr.File(label="experiment spec", elem_id="spec-file", interactive=False, height=90)
        command = gr.Code(label="the same run from a terminal", language="shell", elem_id="cli-command",
                          interactive=False)
    return {"preset_name": preset_name, "save_preset": save, "export_spec": export, "spec_file": spec_file,
            "command": command}


def build_accounting_panel(rows: list[list]) -> dict:
    gr.Markdown("### Parameters (exact, computed without loading weights)")
    table = gr.Dataframe(rows or None, headers=values.ACCOUNTING_HEADERS, interactive=False, elem_id="accounting",
                         wrap=True, column_widths=["14%", "12%", "13%", "10%", "12%", "39%"])
    gr.Markdown("trainable = what the optimiser updates; stored in adapter = what adapter_model.safetensors "
                "holds (the projection MLP trains but is not saved: only the prefix it produces is). "
                "total = base model + trainable.", elem_classes=["note"])
    return {"table": table}


def build_status_panel() -> dict:
    """The status line, the timer that refreshes the run panels, and what they last drew ("seen")."""
    return {"status": gr.Markdown(values.status_markdown("", {}), elem_id="status"), "seen": gr.State({}),
            "timer": gr.Timer(TIMER_SECONDS)}


def build_chart_panel() -> dict:
    with gr.Row():
        run = gr.Dropdown([], label="run", elem_id="run-select", scale=3)
        overlay = gr.Dropdown([], label="overlay another run", elem_id="overlay-select", scale=3)
    with gr.Row():
        smoothing = gr.Slider(0.0, 0.95, value=0.6, step=0.05, label="smoothing", elem_id="smoothing")
        log_scale = gr.Checkbox(False, label="log scale", elem_id="log-scale")
    chart = gr.Plot(plots.loss_figure({}), label="loss", elem_id="loss-chart", format="png")
    points = gr.Markdown("", elem_id="loss-points")
    return {"select": run, "overlay": overlay, "smoothing": smoothing, "log_scale": log_scale,
            "chart": chart, "points": points}


def build_comparison_panel() -> dict:
    gr.Markdown("### Comparison")
    table = gr.Dataframe(headers=list(compare.COMPARISON_COLUMNS), interactive=False, elem_id="comparison")
    bars = gr.Plot(plots.parameter_figure([]), label="parameters", elem_id="parameter-chart", format="png")
    gr.Markdown("### Outputs (base model and every variant on the same prompts)")
    grid = gr.HTML(values.grid_html([], []), elem_id="outputs")
    with gr.Row():
        prompt = gr.Textbox(label="new prompt", placeholder="name[The Eagle] | food[French] | ...",
                            elem_id="prompt", scale=4)
        generate = gr.Button("Generate with base + every variant", elem_id="generate", scale=1)
    generated = gr.HTML("", elem_id="generated")
    with gr.Row():
        variant = gr.Dropdown([], label="adapter", elem_id="adapter-select", scale=2)
        zip_button = gr.Button("Download adapter (PEFT folder, zipped)", elem_id="zip-adapter", scale=2)
    adapter_file = gr.File(label="adapter zip", interactive=False, elem_id="adapter-file", height=90)
    return {"table": table, "bars": bars, "outputs": grid, "prompt": prompt, "generate": generate,
            "generated": generated, "adapter": variant, "zip_adapter": zip_button, "adapter_file": adapter_file}


def build_runs_panel() -> dict:
    gr.Markdown("### Runs")
    table = gr.Dataframe(headers=values.RUNS_HEADERS, interactive=False, elem_id="runs", wrap=True)
    return {"table": table}
