"""Page layout: one builder per panel, each returning `{name: component}` (no event wiring here).

ui/app.py lays the panels out (a top bar; the form on the left; the run on the right) and registers
each panel's components under a namespace ("run" + "status" -> "run.status", ui/registry.py); the
events are wired by those ids and the handlers are in ui/handlers.py. A component added to a panel
is one more entry in its dict: nothing else counts the components. The page's state (gr.State) and
timer belong to the panel they serve. Stable elem_id's on everything a browser test touches.

The form's fields are placed by ui/layout.py: the essentials open, every other field in its
section's "more" accordion (a field added to a config lands there with no change here).
"""

from __future__ import annotations

import gradio as gr

from prefixlab.ui import sweeps, values
from prefixlab.ui.fields import FieldSpec
from prefixlab.ui.form import clamped_slider, component_for
from prefixlab.ui.layout import FormLayout, more_title
from prefixlab.views import figures as plots
from prefixlab.views.sweep import METRIC_CHOICES, METRIC_LABELS

TIMER_SECONDS = 1.0  # how often the run panels read the run directory
# Field names that say nothing without their section; among the essentials (no section heading
# above them) they are labelled by their dotted key ("model.name").
QUALIFIED_NAMES = frozenset({"name", "source", "description"})
TITLE = "**prefixlab** · prefix tuning (Li & Liang 2021), with and without the projection MLP, side by side"


def build_title() -> dict:
    return {"title": gr.Markdown(TITLE, elem_id="title")}


def build_preset_bar(preset_names: list[str], default: str | None) -> dict:
    preset = gr.Dropdown(preset_names, value=default, label="preset (fills the whole form: shipped, then yours)",
                         elem_id="preset", scale=2, min_width=220)
    # The preset the page opened with: a page load refills the form if its file changed since.
    return {"choice": preset, "default": gr.State(default)}


def build_actions() -> dict:
    """Train / Stop (in the top bar, always in reach)."""
    train = gr.Button("Train", variant="primary", elem_id="train", scale=1, min_width=90, size="md")
    stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=90, size="md")
    return {"train": train, "stop": stop}


def build_messages(errors: str) -> dict:
    """The line above the form: every problem Train, export and save would refuse on (each field's
    own message is also shown beside it), and their confirmations."""
    return {"messages": gr.Markdown(errors, elem_id="form-errors", elem_classes=["messages"])}


def _field_row(fields: dict[str, FieldSpec], keys: tuple[str, ...], suggestions: dict, initial: dict,
               errors: dict[str, str], out: dict, full_labels: bool = False) -> None:
    """One row of controls; `full_labels`: labelled by their dotted keys ("training.max_length"),
    where no section heading says which section they are from."""
    with gr.Row(equal_height=False):
        for key in keys:
            f = fields[key]
            wide = f.kind in ("multi", "lines")
            label = f.key if full_labels and f.name in QUALIFIED_NAMES else None
            out[key] = component_for(f, suggestions.get(key, ()), initial.get(key), errors.get(key),
                                     label=label, scale=2 if wide else 1, min_width=140)


def build_essentials(fields: list[FieldSpec], layout: FormLayout, suggestions: dict[str, tuple], initial: dict,
                     errors: dict[str, str]) -> dict:
    """The choices made for every run, always open (layout.essentials), and beside max_length what
    the task's data will do at that length (ui/datanote.py), with its suggested max_length.

    `initial` holds the controls' first values by key (the default preset's), so the page opens
    filled in; `errors` the opening form's messages by key."""
    by_key = {f.key: f for f in fields}
    out: dict = {}
    with gr.Group(elem_id="essentials"):
        for row in layout.essentials:
            _field_row(by_key, row, suggestions, initial, errors, out, full_labels=True)
    with gr.Row(equal_height=False, elem_id="data-note-row"):
        out["data_note"] = gr.Markdown("", elem_id="data-note", elem_classes=["note"], scale=4)
        out["use_suggested"] = gr.Button("Use the suggested max_length", elem_id="use-suggested", size="sm",
                                         scale=1, min_width=120, visible=False)
    out["suggested"] = gr.State(None)  # the max_length the note suggests
    out["shown_errors"] = gr.State(dict(errors))  # {key: message} beside the fields now
    return out


def build_more(fields: list[FieldSpec], layout: FormLayout, suggestions: dict[str, tuple], initial: dict,
               override: bool, errors: dict[str, str]) -> dict:
    """Every field that is not an essential, in its section's collapsed accordion ("more.<section>",
    opened by the page when one of its fields is wrong), with the override box among the prefix's
    inferred sizes and the task upload among the task's fields."""
    by_key = {f.key: f for f in fields}
    out: dict = {}
    for section, rows in layout.more.items():
        with gr.Accordion(more_title(section), open=False, elem_id=f"section-{section}") as accordion:
            out[f"more.{section}"] = accordion
            if section == "data":
                out["upload"] = gr.File(label="upload a task file (.jsonl, .json or .csv)", elem_id="upload-task",
                                        file_types=None)
            for row in rows:
                if section == "prefix" and any(by_key[k].inferred for k in row) and "override" not in out:
                    out["override"] = gr.Checkbox(
                        override, label="override inferred sizes", elem_id="override-inferred",
                        info="num_layers, token_dim, num_attention_heads and num_transformer_submodules come from "
                             "the model; tick to set them yourself (they are checked against the model)")
                _field_row(by_key, row, suggestions, initial, errors, out)
    if "override" not in out:  # no inferred size on the page: the box still exists for the handlers
        out["override"] = gr.Checkbox(override, visible=False, elem_id="override-inferred")
    out["upload_error"] = gr.State("")  # a rejected upload's message while its file is on show
    return out


def build_export() -> dict:
    """Save the form as a preset, download the spec JSON, and the equivalent CLI command."""
    with gr.Accordion("Save as preset / export the spec", open=False, elem_id="section-export"):
        with gr.Row(equal_height=True):
            preset_name = gr.Textbox(label="preset name", elem_id="preset-name", scale=2, min_width=160,
                                     info="saved with your runs (<runs folder>/presets), listed after the shipped ones")
            save = gr.Button("Save as preset", elem_id="save-preset", scale=1, min_width=100)
            export = gr.Button("Export spec JSON", elem_id="export-spec", scale=1, min_width=100)
        spec_file = gr.File(label="experiment spec", elem_id="spec-file", interactive=False)
        command = gr.Code(label="the same run from a terminal", language="shell", elem_id="cli-command",
                          interactive=False)
    return {"preset_name": preset_name, "save_preset": save, "export_spec": export, "spec_file": spec_file,
            "command": command}


def build_accounting_panel(table_html: str, note: str = "") -> dict:
    """The parameters of the experiment in the form (not of a run: the comparison has a run's)."""
    with gr.Group(elem_id="accounting-panel"):
        gr.Markdown("**Parameters of the experiment in the form** (exact, without loading weights; a selected "
                    "run's are in its comparison)", elem_classes=["panel-title"])
        table = gr.HTML(table_html, elem_id="accounting")
        note_md = gr.Markdown(note, elem_id="accounting-note", elem_classes=["note"])
    return {"table": table, "note": note_md}


def build_run_choice() -> dict:
    """Which run to show, and which to overlay on its charts."""
    run = gr.Dropdown([], label="run", elem_id="run-select", scale=3, min_width=200)
    # The overlay's and the adapter's choices follow the selected run: an event already on its way
    # with the value picked before may meet the new choices, and Gradio would refuse it (an error
    # toast); the handlers check the value themselves (the tick drops an overlay that is not a run).
    overlay = gr.Dropdown([], label="overlay another run", elem_id="overlay-select", scale=3, min_width=180,
                          allow_custom_value=True)
    return {"select": run, "overlay": overlay}


def build_chart_settings() -> dict:
    """The loss chart's smoothing (a typed value out of range is clamped, never an error) and scale."""
    smoothing = clamped_slider(0.0, 0.95, value=0.6, step=0.05, label="smoothing", elem_id="smoothing", scale=2,
                              min_width=150)
    log_scale = gr.Checkbox(False, label="log scale", elem_id="log-scale", scale=1, min_width=110)
    return {"smoothing": smoothing, "log_scale": log_scale}


def build_status_panel() -> dict:
    """The status line, the timer that refreshes the run panels, and what they last drew ("seen")."""
    return {"status": gr.Markdown(values.status_markdown("", {}), elem_id="status"), "seen": gr.State({}),
            "timer": gr.Timer(TIMER_SECONDS)}


def build_loss_panel() -> dict:
    return {"chart": gr.Plot(plots.loss_figure({}), show_label=False, elem_id="loss-chart", format="png")}


def build_metrics_panel() -> dict:
    """Task metrics (BLEU, chrF, ROUGE-L, slot accuracy) over the steps, where the run logs them."""
    return {"metrics": gr.Plot(plots.metric_figure({}), show_label=False, elem_id="metric-chart", format="png")}


def build_bars_panel() -> dict:
    return {"bars": gr.Plot(plots.parameter_figure([]), show_label=False, elem_id="parameter-chart", format="png")}


def build_chart_footer() -> dict:
    """Under the charts: the loss chart's point counts per variant, the charts and metrics as files,
    and the button that fills the form from the run ("edit and run again")."""
    with gr.Row(equal_height=False, elem_id="chart-footer"):
        points = gr.Markdown("", elem_id="loss-points", elem_classes=["note"], scale=4)
        export = gr.Button("⤓ charts (PNG, SVG) + metrics (CSV)", elem_id="export-charts", size="sm", scale=2,
                           min_width=150)
        edit = gr.Button("Edit in form", elem_id="edit-run", size="sm", scale=1, min_width=100)
    note = gr.Markdown("", elem_id="run-note", elem_classes=["note"])  # what the buttons did, or why not
    files = gr.File(label="charts and metrics", elem_id="chart-files", file_count="multiple", interactive=False,
                    visible=False)
    return {"points": points, "export": export, "edit": edit, "note": note, "files": files}


def build_comparison_panel() -> dict:
    """The selected run's variants side by side (parameters, losses, speed, wall time)."""
    return {"table": gr.HTML(values.comparison_html([]), elem_id="comparison")}


def build_outputs_panel() -> dict:
    """What the run generated for its prompts: base model and every variant, side by side."""
    return {"outputs": gr.HTML(values.grid_html([], []), elem_id="outputs")}


def build_generate_panel() -> dict:
    """A typed prompt, generated with the base model and every trained variant of the run."""
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(label="new prompt", placeholder="name[The Eagle] | food[French] | ...", elem_id="prompt",
                            scale=4)
        generate = gr.Button("Generate with base + every variant", elem_id="generate", scale=1)
    return {"prompt": prompt, "generate": generate, "generated": gr.HTML("", elem_id="generated")}


def build_adapter_panel() -> dict:
    """A trained variant's adapter as a zip of its PEFT folder; why not, when it cannot be."""
    with gr.Row(equal_height=True):
        # Checked by the handler (zip_adapter), not by Gradio: see build_run_choice.
        variant = gr.Dropdown([], label="adapter", elem_id="adapter-select", scale=2, allow_custom_value=True)
        zip_button = gr.Button("Download adapter (PEFT folder, zipped)", elem_id="zip-adapter", scale=2)
    note = gr.Markdown("", elem_id="adapter-note", elem_classes=["note"])
    adapter_file = gr.File(label="adapter zip", interactive=False, elem_id="adapter-file")
    return {"adapter": variant, "zip_adapter": zip_button, "adapter_note": note, "adapter_file": adapter_file}


def build_runs_panel() -> dict:
    """Every run in the runs folder, newest first."""
    return {"table": gr.HTML(values.runs_html([]), elem_id="runs")}


def build_sweep_panel() -> dict:
    """A sweep of the form's experiment: one or two fields to vary (FIELD=V1,V2,..., as the command
    line's --vary), Start sweep, what it did or why not; then the runs folder's sweeps, and the selected
    one's chart (its metric against the varied value and against trainable parameters) and table, which
    fill in as its runs end (the run panels' timer)."""
    with gr.Row(equal_height=False):
        vary = gr.Textbox(label="vary", placeholder=sweeps.VARY_EXAMPLE, info=sweeps.VARY_HELP, elem_id="sweep-vary",
                          scale=3, min_width=220)
        vary2 = gr.Textbox(label="and vary (optional)", placeholder="training.learning_rate=0.05,0.1",
                           info=sweeps.VARY2_HELP, elem_id="sweep-vary2", scale=2, min_width=180)
        start = gr.Button("Start sweep", variant="primary", elem_id="start-sweep", scale=1, min_width=110)
    note = gr.Markdown("", elem_id="sweep-note", elem_classes=["note", "messages"])
    with gr.Row(equal_height=True):
        # Checked by the handler (the tick selects the newest sweep when the one asked for is gone).
        select = gr.Dropdown([], label="sweep", elem_id="sweep-select", scale=3, min_width=240,
                             allow_custom_value=True)
        metric = gr.Dropdown([("default: slot accuracy, else BLEU, else validation loss", ""),
                              *((METRIC_LABELS[m], m) for m in METRIC_CHOICES)], value="", label="metric",
                             elem_id="sweep-metric", scale=1, min_width=160)
    chart = gr.Plot(None, show_label=False, elem_id="sweep-chart", format="png")
    table = gr.HTML(values.sweep_html([], [], [], empty=sweeps.NO_SWEEPS), elem_id="sweep-table")
    return {"vary": vary, "vary2": vary2, "start": start, "note": note, "select": select, "metric": metric,
            "chart": chart, "table": table, "seen": gr.State({})}
