"""app.py's flags and build_app (the page builds over an empty runs directory)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gradio as gr
import pytest

from prefixlab.engine.runs import JobQueue
from prefixlab.ui import build_app

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
    import signal

    proc = _start_app(tmp_path, "--port", str(_free_port()), "--runs-dir", str(tmp_path / "runs"))
    try:
        line = proc.stdout.readline()
        assert line.startswith("prefixlab running at "), (line, proc.stderr.read() if proc.poll() else "")
        assert len(list((tmp_path / "tmp").glob("prefixlab-exports-*"))) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert list((tmp_path / "tmp").glob("prefixlab-exports-*")) == []
