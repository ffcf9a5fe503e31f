"""Page layout: one builder per panel, each returning its components by name (no event wiring here).

Stable elem_id's on everything a browser test touches; ui/handlers.py wires the events.
"""

from __future__ import annotations

import gradio as gr

from prefixlab.views import figures as plots
from prefixlab.views import tables as compare
from prefixlab.ui import values
from prefixlab.ui.fields import SECTION_TITLES, FieldSpec, fields_by_section
from prefixlab.ui.form import component_for

OPEN_SECTIONS = {"experiment", "prefix", "model", "data", "training"}  # generation starts collapsed


def build_preset_bar(preset_names: list[str], default: str | None) -> dict:
    with gr.Row():
        preset = gr.Dropdown(preset_names, value=default, label="preset", elem_id="preset", scale=3,
                             info="Fills the whole form from presets/<name>.json")
    return {"preset": preset}


def build_form(fields: list[FieldSpec], suggestions: dict[str, tuple], initial: dict, override: bool) -> dict:
    """The configuration form, one accordion per section; returns {"fields": {key: component}, ...}.

    `initial` holds the controls' first values (the default preset's), so the page opens filled in.
    """
    components: dict[str, gr.components.Component] = {}
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
                components[f.key] = component_for(f, suggestions.get(f.key, ()), initial.get(f.key))
    out["fields"] = components
    return out


def build_actions(errors: str) -> dict:
    """Train / Stop, and the line naming any form field whose value is wrong."""
    messages = gr.Markdown(errors, elem_id="form-errors")
    with gr.Row():
        train = gr.Button("Train", variant="primary", elem_id="train")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    return {"train": train, "stop": stop, "errors": messages}


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
    return {"preset_name": preset_name, "save": save, "export": export, "spec_file": spec_file,
            "command": command}


def build_accounting_panel(rows: list[list]) -> dict:
    gr.Markdown("### Parameters (exact, computed without loading weights)")
    table = gr.Dataframe(rows or None, headers=values.ACCOUNTING_HEADERS, interactive=False, elem_id="accounting",
                         wrap=True, column_widths=["14%", "12%", "13%", "10%", "12%", "39%"])
    gr.Markdown("trainable = what the optimiser updates; stored in adapter = what adapter_model.safetensors "
                "holds (the projection MLP trains but is not saved: only the prefix it produces is). "
                "total = base model + trainable.", elem_classes=["note"])
    return {"accounting": table}


def build_status_panel() -> dict:
    return {"status": gr.Markdown(values.status_markdown("", {}), elem_id="status")}


def build_chart_panel() -> dict:
    with gr.Row():
        run = gr.Dropdown([], label="run", elem_id="run-select", scale=3)
        overlay = gr.Dropdown([], label="overlay another run", elem_id="overlay-select", scale=3)
    with gr.Row():
        smoothing = gr.Slider(0.0, 0.95, value=0.6, step=0.05, label="smoothing", elem_id="smoothing")
        log_scale = gr.Checkbox(False, label="log scale", elem_id="log-scale")
    chart = gr.Plot(plots.loss_figure({}), label="loss", elem_id="loss-chart", format="png")
    points = gr.Markdown("", elem_id="loss-points")
    return {"run": run, "overlay": overlay, "smoothing": smoothing, "log_scale": log_scale,
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
    return {"comparison": table, "bars": bars, "grid": grid, "prompt": prompt, "generate": generate,
            "generated": generated, "variant": variant, "zip": zip_button, "adapter_file": adapter_file}


def build_runs_panel() -> dict:
    gr.Markdown("### Runs")
    table = gr.Dataframe(headers=values.RUNS_HEADERS, interactive=False, elem_id="runs", wrap=True)
    return {"runs": table}
