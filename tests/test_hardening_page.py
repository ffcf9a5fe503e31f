"""The page as a hostile user meets it: it reads no server file it was not meant to, takes as an
upload only what Gradio received from a browser (each app in its own temporary folder), says what
an unauthenticated listener exposes and slows down password guessing, escapes everything quoted in
its Markdown, and keeps every input and every update bounded (engine/limits.py).

The handler tests call Lab as the page does (values by id); the live ones start `python app.py`
on free ports, talk to it as a client would (Gradio's queue API, plain GETs) and stop it."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_compare import write_run

from prefixlab.engine import limits
from prefixlab.engine.runs import JobQueue, RunDir, append_jsonl, atomic_write_json
from prefixlab.ui import handlers as page_handlers
from prefixlab.ui import run_handlers, values
from prefixlab.ui.app import REPO_PRESETS
from prefixlab.ui.fields import page_fields
from prefixlab.ui.handlers import MESSAGES, Lab

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2"
IMG = "<img src=x onerror=alert(1)>"


def _secrets_file(folder: Path) -> Path:
    """The probe's file: 30 rows of user names and passwords, a valid two-column task."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "passwords.csv"
    path.write_text("user,password\n" + "".join(f"user{i},password-{i}-{SECRET}\n" for i in range(30)))
    return path


def _lab(tmp_path, **options) -> Lab:
    return Lab(JobQueue(tmp_path / "runs"), page_fields(), REPO_PRESETS, **options)


def _everything(out: dict) -> str:
    return json.dumps({k: str(v) for k, v in out.items()})


# --- 1. the page reads only what it is meant to ------------------------------------------------


@pytest.mark.parametrize("how", ["path", "dotdot", "symlink-in-uploads"])
def test_a_server_file_named_as_the_task_is_refused_beside_the_field_and_never_read(tmp_path, how):
    lab = _lab(tmp_path)
    secret = _secrets_file(tmp_path / "elsewhere")
    uploads = tmp_path / "runs" / "uploads"
    uploads.mkdir(parents=True)
    source = {"path": str(secret), "dotdot": f"{uploads}/../../elsewhere/passwords.csv",
              "symlink-in-uploads": str(uploads / "looks-uploaded.csv")}[how]
    if how == "symlink-in-uploads":
        os.symlink(secret, uploads / "looks-uploaded.csv")
    form = lab.initial_state("offline-tiny") | {"form.data.source": source, "form.data.source_column": "user",
                                               "form.data.target_column": "password"}
    shown = lab.form_changed(form)[MESSAGES]  # live, as the form is edited
    assert shown.startswith("⚠️ **data.source**: ") and values.md_text(source) in shown
    assert "Upload the file" in shown and "--allow-path" in shown and SECRET not in shown
    for out in (lab.train(form), lab.export_spec(form), lab.save_preset({**form, "export.preset_name": "leak"})):
        assert out[MESSAGES] == shown and SECRET not in _everything(out)
    assert lab.queue.list_runs() == [] and not (lab.presets_dir / "leak.json").exists()


def test_a_folder_named_with_allow_path_is_read_as_before(tmp_path):
    secret = _secrets_file(tmp_path / "shared-data")
    lab = _lab(tmp_path, allow_paths=[tmp_path / "shared-data"])
    form = lab.initial_state("offline-tiny") | {"form.data.source": str(secret), "form.data.source_column": "user",
                                               "form.data.target_column": "password"}
    assert lab.form_changed(form)[MESSAGES] == "" and lab.train(form)[MESSAGES] == ""
    assert len(lab.queue.list_runs()) == 1


def test_a_local_model_folder_is_refused_unless_allowed_and_presets_and_hub_ids_stay(tmp_path):
    folder = REPO / "presets" / "models" / "tiny-gpt2-e2e"  # a real model folder on the server
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny") | {"form.model.name": str(folder)}
    out = lab.form_changed(form)
    assert out[MESSAGES].startswith("⚠️ **model.name**: ") and "--allow-path" in out[MESSAGES]
    assert out["accounting.table"] == "" and "model.name" in out["accounting.note"]  # its config.json is not read
    assert set(lab.model_changed(form).values()) == {""}  # nor its sizes
    assert lab.train(form)[MESSAGES] == out[MESSAGES] and lab.queue.list_runs() == []
    allowed = _lab(tmp_path, allow_paths=[folder.parent])
    assert allowed.form_changed(form)[MESSAGES] == "" and allowed.model_changed(form)["form.prefix.num_layers"]
    for name in ("tiny-gpt2-e2e", "gpt2", "facebook/opt-125m"):  # a preset, Hub ids: no path is read
        assert lab.access.model_error(name) is None
    assert lab.access.data_source_error("e2e-synth") is None and lab.access.data_source_error("GEM/web_nlg") is None


def test_a_preset_or_run_named_by_a_path_is_not_opened(tmp_path):
    lab = _lab(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.json").write_text(json.dumps({"name": SECRET}))
    assert lab.load_preset({"preset.choice": str(tmp_path / "elsewhere" / "x")}) == {}
    outside = write_run(tmp_path / "other-runs" / "20260101-000000-theirs", finished=True)
    (outside.adapter_path("projection")).mkdir(parents=True)
    (outside.adapter_path("projection") / "adapter_config.json").write_text("{}")
    out = lab.zip_adapter({"run.select": "../other-runs/20260101-000000-theirs", "compare.adapter": "projection"})
    assert out["compare.adapter_file"] is None and "no longer exists" in out["compare.adapter_note"]


# --- 2. uploads: only what Gradio received, in this app's own folder -------------------------------


def test_an_upload_that_gradio_did_not_receive_is_refused_and_not_stored(tmp_path):
    lab = _lab(tmp_path)  # Gradio's folder: this process's private one (ui/access.py)
    secret = _secrets_file(tmp_path / "elsewhere")
    out = lab.upload_task({"form.upload": str(secret), "form.data.source": "e2e-synth"})
    assert "form.data.source" not in out and "not a file uploaded to this page" in out["form.upload_error"]
    assert SECRET not in _everything(out) and not (tmp_path / "runs" / "uploads").exists()
    # The page's own downloads are in that folder too, but are not uploads either.
    exported = lab.export_spec(lab.initial_state("offline-tiny"))["export.spec_file"]
    assert Path(exported).is_relative_to(lab.temp_dir)
    assert "not a file uploaded" in lab.upload_task({"form.upload": exported, "form.data.source": None})["form.upload_error"]


def test_an_upload_over_the_size_limit_is_refused_with_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(page_handlers, "MAX_UPLOAD_MB", 1)
    lab = _lab(tmp_path, temp_dir=tmp_path / "gradio")
    (tmp_path / "gradio" / "abc").mkdir(parents=True)
    big = tmp_path / "gradio" / "abc" / "big.csv"
    big.write_text("source,target\n" + "a,b\n" * 400_000)  # 1.6 MB
    rejection = lab.upload_task({"form.upload": str(big), "form.data.source": "e2e-synth"})["form.upload_error"]
    assert "big.csv is 2 MB, more than the 1 MB the page takes" in rejection and "python -m prefixlab train" in rejection


# --- 3. exposure -------------------------------------------------------------------------------------


def test_the_exposure_warning_names_what_anyone_can_do():
    from prefixlab.ui.exposure import exposure_warning

    for host, share in (("0.0.0.0", False), ("192.168.1.5", False), ("lab.example.org", False), ("127.0.0.1", True)):
        warning = exposure_warning(host, share, auth=False)
        assert warning.startswith("WARNING: the page is open without a password"), host
        for what in ("train on this machine", "read every run", "download the adapters", "--auth USER:PASSWORD"):
            assert what in warning
    assert "gradio.live" in exposure_warning("127.0.0.1", True, auth=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_warning(host, False, auth=False) is None
    assert exposure_warning("0.0.0.0", True, auth=True) is None


def test_failed_logins_are_slowed_down_after_three_and_forgotten_after_a_success_or_a_quiet_while():
    from prefixlab.ui import exposure

    now, slept = [1000.0], []

    async def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    guard = exposure.LoginGuard("ann", "s3cret", sleep=sleep, clock=lambda: now[0])

    async def attempts(*pairs):
        return [await guard.check(*pair) for pair in pairs]

    wrong = ("ann", "guess")
    assert asyncio.run(attempts(wrong, wrong, wrong)) == [False] * 3 and slept == []
    assert asyncio.run(attempts(*[wrong] * 7)) == [False] * 7
    assert slept == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # doubling, capped at MAX_DELAY_S
    slept.clear()
    assert asyncio.run(attempts(("ann", "s3cret"))) == [True] and slept == [30.0]  # the right one waits too
    assert asyncio.run(attempts(wrong, wrong, wrong, ("bob", "s3cret"), ("ann", "s3cre"))) == [False] * 5
    assert slept == [30.0, 1.0, 2.0]
    now[0] += exposure.FORGET_AFTER_S + 1  # a quiet quarter of an hour: the count starts again
    slept.clear()
    assert asyncio.run(attempts(wrong, ("ann", "s3cret"))) == [False, True] and slept == []


def test_parallel_guesses_wait_their_turn():
    from prefixlab.ui.exposure import LoginGuard

    slept = []

    async def sleep(seconds):
        slept.append(seconds)
        await asyncio.sleep(0)

    guard = LoginGuard("ann", "s3cret", sleep=sleep)

    async def burst():
        return await asyncio.gather(*[guard.check("ann", f"guess{i}") for i in range(6)])

    assert asyncio.run(burst()) == [False] * 6 and slept == [1.0, 2.0, 4.0]


# --- 4. Markdown panels: what they quote is escaped --------------------------------------------


def _no_raw_tag(markdown: str) -> None:
    assert "<img" not in markdown and "&lt;img" in markdown


def test_errors_escape_what_they_quote():
    shown = values.errors_markdown({"training.max_steps": f"must be a whole number, got '{IMG}'",
                                    "data.source": f"{IMG}.csv, line 3: bad JSON *x* [link](http://e) `code`"})
    _no_raw_tag(shown)
    assert "**training.max_steps**" in shown and r"\*x\* \[link\](http://e) \`code\`" in shown


def test_the_status_line_escapes_the_error_and_keeps_the_log_in_a_block_it_cannot_end():
    log = f"step 1\n```\n{IMG}\n</pre>\n```` and more\n**bold**"
    shown = values.status_markdown(f"run-{IMG}", {"state": "failed", "error": f"ValueError: {IMG}"}, log_tail=log)
    _no_raw_tag(shown)
    head, block = shown.split("\n\n<pre>\n", 1)
    assert block.endswith("\n</pre>") and block.count("</pre>") == 1  # one block, closed where it ends
    assert "```" in block and "&lt;/pre&gt;" in block and "**bold**" in block  # inert inside it
    assert "```" not in head and f"**Error:** ValueError: {html.escape(IMG, quote=False)}" in head


def test_preset_upload_and_generate_messages_escape_what_they_quote(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "broken.json").write_text(json.dumps({"name": "b", "training": {"max_steps": IMG}}))
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    _no_raw_tag(lab.load_preset({"preset.choice": "broken"})[MESSAGES])
    received = lab.temp_dir / secrets.token_hex(4)  # where Gradio puts an upload
    received.mkdir()
    named = received / f"{IMG}.csv"
    named.write_text("only\n1\n")
    _no_raw_tag(lab.upload_task({"form.upload": str(named), "form.data.source": None})[MESSAGES])
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    run.update_status(state="failed", error=f"ValueError: {IMG}")
    shown = lab.generate({"run.select": run.run_id, "compare.prompt": "a prompt"})["compare.generated"]
    assert "<img" not in shown and html.escape(IMG, quote=False) in shown


# --- 5. bounded inputs and updates -------------------------------------------------------------------


def test_a_prompt_over_the_limit_is_refused_at_once_without_generating(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_handlers, "generate_all", lambda *args, **kwargs: calls.append(args) or [])
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    prompt = "x" * (limits.MAX_PROMPT_CHARS + 1)
    started = time.perf_counter()
    shown = lab.generate({"run.select": run.run_id, "compare.prompt": prompt})["compare.generated"]
    assert time.perf_counter() - started < 0.5 and calls == []
    assert f"{len(prompt):,} characters long" in shown and f"up to {limits.MAX_PROMPT_CHARS:,}" in shown
    assert len(shown) < 1000  # not echoed back


@pytest.mark.parametrize("error", [ValueError("the prompt is 30,000 characters, over the limit"),
                                   RuntimeError("CUDA error: device-side assert")])
def test_generate_shows_the_engine_s_refusal_or_failure_inline(tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(run_handlers, "generate_all", fail)
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    shown = lab.generate({"run.select": run.run_id, "compare.prompt": "p"})["compare.generated"]
    assert str(error) in shown and "Traceback" not in shown and shown.startswith('<p class="generate-message">')


def test_the_tick_stays_small_whatever_the_run_holds(tmp_path):
    """Huge outputs in samples.jsonl and a huge error: the grid shows them clipped, the status line too."""
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True,
                    samples=[{"prompt": "p" * 1_000_000, "reference": "r" * 1_000_000,
                              "outputs": {"base": "b" * 1_000_000, "no_projection": "n", "projection": "q"}}])
    run.update_status(state="failed", error="E" * 1_000_000)
    (run.path / "log.txt").write_text(("L" * 100_000 + "\n") * 30)
    out = lab.tick({"run.select": run.run_id, "run.overlay": "", "run.smoothing": 0.6, "run.log_scale": False,
                    "run.seen": {}, "compare.adapter": None})
    texts = {k: v for k, v in out.items() if isinstance(v, str)}
    assert len(texts["compare.outputs"]) < 4 * limits.MAX_SAMPLE_CHARS + 2000 and "more characters" in texts["compare.outputs"]
    assert len(texts["run.status"]) < 10_000 and "more characters" in texts["run.status"]


def test_the_outputs_grid_clips_every_cell():
    grid = values.grid_html(["prompt", "base"], [["p" * 50_000, "b" * 50_000]])
    assert len(grid) < 3 * limits.MAX_SAMPLE_CHARS and grid.count("48,000 more characters") == 2


# --- live: two apps on one host, and one with --auth -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app.py FLAGS` on a free port, in its own process group; stopped by stop()."""

    def __init__(self, tmp: Path, name: str, *flags: str):
        self.port, self.log = _free_port(), tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
        env |= {"TMPDIR": str(tmp / "tmp"), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        (tmp / "tmp").mkdir(exist_ok=True)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(self.port), *flags],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "running at" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"app.py did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def _call(client, config: dict, api_name: str, values_by_elem_id: dict | None = None):
    """One of the page's events through Gradio's queue, as the browser calls it (by fn index, each
    input at the page's first value unless given by elem_id). -> the process_completed message."""
    components = {c["id"]: c for c in config["components"]}
    dep = next(d for d in config["dependencies"] if d["api_name"] == api_name)
    given = values_by_elem_id or {}
    data = [given.get(components[i]["props"].get("elem_id"), components[i]["props"].get("value"))
            for i in dep["inputs"]]
    session = secrets.token_hex(6)
    client.post("/gradio_api/queue/join", json={"data": data, "fn_index": dep["id"], "session_hash": session,
                                                "trigger_id": None, "event_data": None}).raise_for_status()
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                return json.loads(line[5:])
    raise AssertionError(f"{api_name}: no result")


def test_two_apps_on_one_host_share_no_files_and_take_only_real_uploads(tmp_path):
    """App A exports a spec; app B (another user's, listening on every interface without a
    password: it warns) must not serve it. A file planted in the host's shared Gradio folder is not
    an upload for either. Both apps use the same TMPDIR, as two apps of one host do."""
    import httpx

    planted = _secrets_file(tmp_path / "tmp" / "gradio" / "planted")
    a = App(tmp_path, "a", "--runs-dir", str(tmp_path / "runs-a"))
    b = App(tmp_path, "b", "--runs-dir", str(tmp_path / "runs-b"), "--host", "0.0.0.0")
    try:
        with httpx.Client(base_url=a.url, timeout=60) as client:
            config = client.get("/config").json()
            exported = _call(client, config, "export_spec")["output"]["data"][0]
            assert client.get(f"/gradio_api/file={exported['path']}").status_code == 200
        with httpx.Client(base_url=b.url, timeout=60) as client:
            assert client.get(f"/gradio_api/file={exported['path']}").status_code == 403
            assert client.get(f"/gradio_api/file={planted}").status_code == 403
        with httpx.Client(base_url=a.url, timeout=60) as client:
            forged = {"path": str(planted), "meta": {"_type": "gradio.FileData"}, "orig_name": "passwords.csv"}
            result = _call(client, config, "upload_task", {"upload-task": forged, "f-data-source": "e2e-synth"})
            assert SECRET not in json.dumps(result) and not (tmp_path / "runs-a" / "uploads").exists()
        assert exported["path"].endswith("/offline-tiny.json") and "/gradio/" not in exported["path"]
        assert config["max_file_size"] == limits.MAX_UPLOAD_MB * 1024**2
        assert "WARNING: the page is open without a password" in b.log.read_text()
        assert "WARNING" not in a.log.read_text()
    finally:
        a.stop()
        b.stop()
    assert list((tmp_path / "tmp").glob("prefixlab-gradio-*")) == []  # each app's folder went with it


def test_with_auth_an_unauthenticated_client_learns_nothing_about_the_api(tmp_path):
    import httpx

    app = App(tmp_path, "auth", "--runs-dir", str(tmp_path / "runs"), "--auth", "ann:s3cret")
    try:
        with httpx.Client(base_url=app.url, timeout=60) as client:
            for path in ("/", "/?all_endpoints=true", "/?page=", "/gradio_api/runs"):
                page = client.get(path)
                for name in ("upload_task", "form_changed", "zip_adapter", "tick", "train", "offline-tiny"):
                    assert not re.search(rf'"/?{name}\b', page.text), (path, name)
            for path in ("/config", "/gradio_api/info", "/gradio_api/openapi.json"):
                assert client.get(path).status_code == 401, path
            assert client.post("/login", data={"username": "ann", "password": "nope"}).status_code == 400
            assert client.post("/login", data={"username": "ann", "password": "s3cret"}).status_code == 200
            config = client.get("/config").json()  # logged in: the page is all there
            assert len(config["dependencies"]) > 10 and client.get("/gradio_api/info").json()["named_endpoints"] == {}
            # Events run only through the queue (whose concurrency limits hold), never by a direct POST.
            direct = client.post("/gradio_api/run/zip_adapter", json={"data": [None, None]})
            assert direct.status_code == 404 and "join the queue" in direct.text
    finally:
        app.stop()
    assert "WARNING" not in app.log.read_text()
