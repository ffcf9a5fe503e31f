"""app.py's flags and build_app (the page builds over an empty runs directory)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

import gradio as gr
import pytest

from prefixlab.engine.runs import JobQueue
from prefixlab.ui import build_app, panels
from prefixlab.ui.app import REPO_PRESETS, build_page
from prefixlab.ui.registry import Registry, WiringError

_spec = importlib.util.spec_from_file_location("lab_app", Path(__file__).resolve().parents[1] / "app.py")
lab_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab_app)


def test_defaults_listen_on_localhost_only():
    args = lab_app.parse_args([])
    assert (args.host, args.port, args.share, args.auth, args.runs_dir) == ("127.0.0.1", 7860, False, None, "runs")


def test_flags():
    args = lab_app.parse_args(["--host", "0.0.0.0", "--port", "8000", "--share", "--auth", "ann:pw:with:colons",
                               "--runs-dir", "/tmp/r"])
    assert (args.host, args.port, args.share, args.auth, args.runs_dir) == ("0.0.0.0", 8000, True,
                                                                              "ann:pw:with:colons", "/tmp/r")


@pytest.mark.parametrize("bad", ["nocolon", ":pw"])
def test_auth_must_be_user_colon_password(bad, capsys):
    with pytest.raises(SystemExit):
        lab_app.parse_args(["--auth", bad])
    assert f"--auth '{bad}' must be USER:PASSWORD" in capsys.readouterr().err


def test_build_app_has_the_panels_and_a_one_second_timer(tmp_path):
    demo, lab = build_app(JobQueue(tmp_path / "runs"))
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id in ("preset", "train", "stop", "accounting", "status", "loss-chart", "comparison", "outputs",
                    "generate", "runs", "override-inferred", "f-prefix-num_virtual_tokens", "cli-command"):
        assert elem_id in ids, elem_id
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    assert [t.value for t in timers] == [1.0]
    assert {f.key for f in lab.fields} <= {f"{b.elem_id[2:].replace('-', '.', 1)}" for b in demo.blocks.values()
                                          if (b.elem_id or "").startswith("f-")}


# --- wired by name --------------------------------------------------------------------------------


def _page(tmp_path):
    """build_page over an empty runs folder and a copy of the presets (Save as preset may write)."""
    presets = tmp_path / "presets"
    shutil.copytree(REPO_PRESETS, presets, ignore=shutil.ignore_patterns("data", "models"))
    return build_page(JobQueue(tmp_path / "runs"), presets)


def _fire(demo, event):
    """Run `event` as the page would on opening: Gradio preprocesses every input's first value,
    calls the event's function with {component: value} and maps its {component: update} onto the
    outputs. -> {id(output component): payload sent to the browser}, or None when the handler
    refused (gr.Error, as generate and download do without a run)."""
    block_fn = demo.fns[event.fn_id]
    try:
        result = asyncio.run(demo.process_api(block_fn, [block.value for block in block_fn.inputs]))
    except gr.Error:
        return None
    return dict(zip([id(b) for b in block_fn.outputs], result["data"]))


def _check_every_event(demo, registry):
    """Every wired event, called directly and through Gradio with the page's first values: it reads
    only the inputs it declares (any other key would be a KeyError), returns only outputs it
    declares, and Gradio leaves every other output as it is."""
    assert registry.events
    for event in registry.events:
        values = {i: registry[i].value for i in event.inputs}
        try:
            updates = event.handler(values)
        except gr.Error:
            updates = None
        if updates is not None:
            assert set(updates) <= set(event.outputs), (event.name, set(updates) - set(event.outputs))
        sent = _fire(demo, event)
        if sent is None or updates is None:
            continue
        for output in event.outputs:
            if registry[output].stateful:  # a gr.State: kept on the server, nothing is sent
                continue
            if output not in updates:  # an update without a value: the browser keeps what it shows
                payload = sent[id(registry[output])]
                assert payload["__type__"] == "update" and "value" not in payload, (event.name, output, payload)


def test_every_event_is_wired_by_id_and_returns_only_its_outputs(tmp_path):
    demo, lab, registry = _page(tmp_path)
    # Every trigger, input and output names a registered component.
    for event in registry.events:
        for name in (*event.inputs, *event.outputs):
            assert name in registry, (event.name, name)
        assert all(name.rpartition(".")[0] in registry for name in event.triggers), event.triggers
    # The page's controls keep their DOM ids under their registry ids.
    assert registry["run.status"].elem_id == "status" and registry["run.chart"].elem_id == "loss-chart"
    assert registry["form.prefix.num_virtual_tokens"].elem_id == "f-prefix-num_virtual_tokens"
    assert {registry.id_of(registry[f.id]) for f in lab.fields} == {f.id for f in lab.fields}
    _check_every_event(demo, registry)


def test_an_output_an_event_does_not_declare_is_refused_by_name():
    registry = Registry()
    with gr.Blocks() as demo:
        registry.add("p", {"a": gr.Textbox("x"), "b": gr.Textbox("y"), "c": gr.Textbox("z")})
        event = registry.on("p.a.change", lambda v: {"p.b": v["p.a"], "p.c": "!"}, ["p.a"], ["p.b"])
        with pytest.raises(WiringError, match="no component 'p.d'"):
            registry.on("p.a.change", lambda v: {}, ["p.d"], ["p.b"])
        with pytest.raises(WiringError, match="'p.a' has no event 'clicked'"):
            registry.on("p.a.clicked", lambda v: {}, ["p.a"], ["p.b"])
        with pytest.raises(WiringError, match="'p.a' is registered twice"):
            registry.add("p", {"a": gr.Textbox()})
    with pytest.raises(WiringError, match=r"returned \['p.c'\], which its event does not declare"):
        registry.event_function(event)({registry["p.a"]: "x"})
    with pytest.raises(WiringError):
        asyncio.run(demo.process_api(demo.fns[event.fn_id], ["x"]))


def test_a_component_added_to_a_panel_needs_no_count_changed_anywhere(tmp_path, monkeypatch):
    """One more component in a panel's dict is registered under its id and every event still works:
    no list of outputs or of skips counts the components (the timer's event, for one, returns only
    what changed, keyed by id)."""
    chart_panel = panels.build_chart_footer
    monkeypatch.setattr(panels, "build_chart_footer",
                        lambda: {**chart_panel(), "extra": gr.Markdown("a note", elem_id="chart-extra")})
    form_panel = panels.build_more
    monkeypatch.setattr(panels, "build_more", lambda *args: {**form_panel(*args), "hint": gr.Markdown("a hint")})
    demo, lab, registry = _page(tmp_path)
    assert registry["run.extra"].elem_id == "chart-extra" and "form.hint" in registry
    assert registry.ids("run.")[-1] == "run.extra"  # filed with its panel, in build order
    _check_every_event(demo, registry)
    # A handler that updates the new component is one more entry in its dict and its outputs.
    with demo:
        registry.on("run.select.change", lambda v: {"run.extra": f"run {v['run.select']}"}, ["run.select"],
                    ["run.extra"])
    assert _fire(demo, registry.events[-1]) == {id(registry["run.extra"]): "run None"}


def test_model_choices_put_real_models_first_only_where_the_hub_answers():
    from prefixlab.ui.app import model_choices
    from prefixlab.engine.zoo import MODEL_PRESETS

    offline_first = [name for _, name in model_choices(False)]
    online_first = [name for _, name in model_choices(True)]
    assert sorted(offline_first) == sorted(online_first) == sorted(MODEL_PRESETS)
    assert MODEL_PRESETS[offline_first[0]].offline and not MODEL_PRESETS[online_first[0]].offline
    label, name = model_choices(False)[0]
    assert label.startswith(f"{name}: ") and "no download" in label


APP = Path(__file__).resolve().parents[1] / "app.py"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(tmp_path, *flags):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "GRADIO_ANALYTICS_ENABLED": "False"}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(APP), *flags], cwd=APP.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_port_in_use_or_a_runs_folder_that_cannot_be_made_is_one_line_naming_the_flag(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _start_app(tmp_path, "--port", str(port), "--runs-dir", str(tmp_path / "runs"))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port} (")
    assert "Pass another --port" in err
    assert not any((tmp_path / "runs").glob("*/spec.json"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = _start_app(tmp_path, "--port", str(_free_port()), "--runs-dir", str(blocker / "runs"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip() == f"error: --runs-dir {blocker / 'runs'}: cannot create it (Not a directory); pass a " \
                          "folder you can write to"


def test_sigterm_stops_the_app_like_ctrl_c_and_removes_its_temporary_downloads(tmp_path):
    """The app's own temporary folder (Gradio's uploads, the page's downloads) goes with it."""
    import signal

    proc = _start_app(tmp_path, "--port", str(_free_port()), "--runs-dir", str(tmp_path / "runs"))
    try:
        line = proc.stdout.readline()
        assert line.startswith("prefixlab running at "), (line, proc.stderr.read() if proc.poll() else "")
        private, = (tmp_path / "tmp").glob("prefixlab-gradio-*")
        assert (private / "exports").is_dir() and private.stat().st_mode & 0o077 == 0  # its user's only
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert list((tmp_path / "tmp").glob("prefixlab-gradio-*")) == []


def test_a_smoothing_typed_out_of_range_never_stops_the_chart(tmp_path):
    """Typing 5 or -1 in the smoothing box: the timer's event still runs through Gradio (no error
    toast every second), with the value clamped into the slider's range."""
    demo, lab, registry = _page(tmp_path)
    tick = next(e for e in registry.events if e.name == "tick")
    block_fn = demo.fns[tick.fn_id]
    for typed in (5, -1):
        data = [typed if registry.id_of(b) == "run.smoothing" else b.value for b in block_fn.inputs]
        result = asyncio.run(demo.process_api(block_fn, data))
        assert result["data"], typed
    assert registry["run.smoothing"].preprocess(5) == 0.95 and registry["run.smoothing"].preprocess(-1) == 0.0
    assert registry["run.smoothing"].get_block_name() == "slider"
    assert not list(Path(panels.__file__).parent.glob("*.pyi"))  # no component class of our own


def test_the_form_opens_with_the_essentials_and_every_other_field_in_a_collapsed_section(tmp_path):
    from prefixlab.ui.layout import ESSENTIALS

    demo, lab, registry = _page(tmp_path)
    accordions = {i: registry[i] for i in registry.ids("form.more.")}
    assert set(accordions) == {f"form.more.{s}" for s in ("experiment", "prefix", "data", "training", "generation")}
    assert all(isinstance(a, gr.Accordion) and a.open is False for a in accordions.values())
    placed = {key for rows in lab.layout.more.values() for row in rows for key in row}
    essential = {key for row in lab.layout.essentials for key in row}
    assert essential == ESSENTIALS and placed | essential == {f.key for f in lab.fields} and not placed & essential
    # The essentials are what a researcher changes for every run.
    assert {"model.name", "data.source", "prefix.num_virtual_tokens", "prefix.encoder_hidden_size",
            "experiment.variants", "training.learning_rate", "training.max_steps"} <= ESSENTIALS
    # Each control sits inside its section's accordion (Gradio's parent chain).
    batch = registry["form.training.batch_size"]
    parents = []
    block = batch.parent
    while block is not None:
        parents.append(block)
        block = block.parent
    assert registry["form.more.training"] in parents
    # The page's layout: the run's charts as tabs, and a place for more views beside them.
    tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert [t.label for t in tabs] == ["Loss", "Task metrics", "Parameters", "Outputs", "Generate",
                                       "Download adapter", "All runs", "Sweep"]
