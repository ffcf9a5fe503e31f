"""app.py's flags and build_app (the page builds over an empty runs directory)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gradio as gr
import pytest

from prefixlab.runs import JobQueue
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
    from prefixlab.zoo import MODEL_PRESETS

    offline_first = [name for _, name in model_choices(False)]
    online_first = [name for _, name in model_choices(True)]
    assert sorted(offline_first) == sorted(online_first) == sorted(MODEL_PRESETS)
    assert MODEL_PRESETS[offline_first[0]].offline and not MODEL_PRESETS[online_first[0]].offline
    label, name = model_choices(False)[0]
    assert label.startswith(f"{name}: ") and "no download" in label
