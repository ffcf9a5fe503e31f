"""The lab in a real browser: Playwright driving Debian's Chromium against `python app.py`.

One test walks the issue's stages in order (each needs the previous one's state) and saves a
screenshot of each to test-artifacts/browser/. Set PREFIXLAB_UPDATE_SCREENSHOT=1 to also copy the
finished page to docs/screenshot.png (the README's picture).

Downloads (adapter zips, the spec JSON) go through the browser (`page.expect_download`) and are
checked here: the zips load in PEFT with prefixlab's logits, the spec loads as an ExperimentSpec.
The app writes saved presets into a temporary copy of presets/*.json, never into the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_worker_e2e import assert_loads_in_peft_with_our_logits

from prefixlab.engine.limits import MAX_PROMPT_CHARS
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.tiny import tiny_config

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
RUN_TIMEOUT_S = 150  # offline-tiny trains 60 steps of a tiny model: well under a minute on 2 cores
REPO_PRESET_FILES = sorted(p.name for p in (REPO / "presets").glob("*.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab_dirs(tmp_path_factory):
    """The app's runs directory (empty) and presets directory (a copy of presets/*.json: the
    models and data stay in the repository, found by name), so Save as preset writes there."""
    presets = tmp_path_factory.mktemp("presets")
    for name in REPO_PRESET_FILES:
        shutil.copyfile(REPO / "presets" / name, presets / name)
    return SimpleNamespace(runs=tmp_path_factory.mktemp("runs"), presets=presets)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, lab_dirs):
    """`python app.py` on a free localhost port with an empty runs directory."""
    runs = lab_dirs.runs
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs),
                             "--presets-dir", str(lab_dirs.presets)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while "running at" not in log_path.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"app.py did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    assert f"http://127.0.0.1:{port}" in log_path.read_text()  # prints the URL, localhost by default
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    shutil.copyfile(log_path, ARTIFACTS / "app.log") if ARTIFACTS.is_dir() else None


@pytest.fixture(scope="module")
def page():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not on PATH: install Debian's browser with `apt-get install chromium` "
                    "(the tests never download one)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


# --- page helpers ----------------------------------------------------------------------------------


def table(page, elem_id: str) -> list[list[str]]:
    """A Gradio Dataframe's body cells, row by row (its cells carry data-row / data-col)."""
    cells = page.eval_on_selector_all(
        f"#{elem_id} [role=gridcell]",
        "els => els.map(e => [+e.dataset.row, +e.dataset.col, e.innerText.trim()])")
    rows: dict[int, dict[int, str]] = {}
    for r, c, text in cells:
        rows.setdefault(r, {})[c] = text
    out = [[cols[c] for c in sorted(cols)] for _, cols in sorted(rows.items())]
    return [row for row in out if any(row)]


def html_table(page, elem_id: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of an HTML table (the output grids)."""
    headers = [h.strip() for h in page.locator(f"#{elem_id} table th").all_inner_texts()]
    rows = page.eval_on_selector_all(
        f"#{elem_id} table tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.innerText.trim()))")
    return headers, rows


def wait_for(predicate, timeout: float, what: str, poll: float = 0.3, page=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    seen = ""
    if page is not None:  # what the page showed instead, for the failure message and artifacts
        page.screenshot(path=str(ARTIFACTS / "timeout.png"), full_page=True)
        seen = f"; the status line read {status(page)!r}, the chart {loss_points(page)} training points"
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


def choose(page, elem_id: str, option: str) -> None:
    """Pick `option` in a Gradio dropdown, and wait for its list to close (on a loaded machine the
    list could still be open when the next dropdown opened, and an option then matched twice)."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_for(lambda: page.get_by_role("option").count() == 0, 10, f"the {elem_id} list to close")


def set_variants(page, *names: str) -> None:
    """Tick exactly `names` in the variants checkbox group."""
    for box in page.locator("#f-experiment-variants input[type=checkbox]").all():
        if box.is_checked() != (box.get_attribute("name") in names):
            box.click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")


def set_text(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} textarea")
    box.fill(str(value))
    box.press("Tab")


def status(page) -> str:
    return page.locator("#status").inner_text()


def loss_points(page) -> int:
    match = re.search(r"(\d+) training points", page.locator("#loss-points").inner_text())
    return int(match.group(1)) if match else 0


def shot(page, name: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} stage {name}", flush=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def expected_counts(n: int, h: int) -> dict[str, int]:
    """Prefix parameters of tiny-gpt2 from first principles: every layer gets n keys and n values."""
    cfg = tiny_config("gpt2")
    d, out = cfg.n_embd, cfg.n_layer * 2 * cfg.n_embd
    return {"no_projection": n * out, "projection": n * d + d * h + h + h * out + out, "stored": n * out}


def accounting(page) -> dict[str, list[str]]:
    return {row[0]: row for row in table(page, "accounting")}


def form_errors(page) -> str:
    return page.locator("#form-errors").inner_text()


def dropdown_options(page, elem_id: str) -> list[str]:
    """The options a Gradio dropdown offers (opened, read, closed again)."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    page.get_by_role("option").first.wait_for()
    options = [o.strip().lstrip("✓").strip() for o in page.get_by_role("option").all_inner_texts()]
    box.blur()
    wait_for(lambda: page.get_by_role("option").count() == 0, 10, f"the {elem_id} list to close")
    return options


def download(page, link_selector: str, folder: Path) -> Path:
    """Click a gr.File's download link in the browser and save what the browser received."""
    with page.expect_download() as event:
        page.locator(link_selector).click()
    target = folder / event.value.suggested_filename
    event.value.save_as(target)
    return target


# --- the stages ------------------------------------------------------------------------------------


def test_the_lab_end_to_end(app_url, lab_dirs, page, tmp_path):
    # 1. The page loads on the offline preset, with its parameter table already computed.
    started = time.time()
    page.goto(app_url)
    page.wait_for_selector("#accounting [role=gridcell]")
    (ARTIFACTS / "load_seconds.txt").write_text(f"{time.time() - started:.2f}\n")
    assert page.locator("#preset input").input_value() == "offline-tiny"
    assert page.locator("#f-model-name input").input_value().startswith("tiny-gpt2: ")
    # Inferred sizes show the model's values, read-only until "override" is ticked.
    layers = page.locator("#f-prefix-num_layers textarea")
    assert layers.input_value() == str(tiny_config("gpt2").n_layer) and layers.is_disabled()
    wait_for(lambda: set(accounting(page)) == {"no_projection", "projection"}, 10, "the parameter table")
    # Overriding, then unticking: the read-only fields show the model's sizes again, not the typed 7.
    page.locator("#override-inferred input").check()
    wait_for(lambda: not layers.is_disabled(), 10, "num_layers to be editable")
    set_text(page, "f-prefix-num_layers", 7)
    wait_for(lambda: "num_layers" in form_errors(page), 10, "the message on num_layers=7")
    page.locator("#override-inferred input").uncheck()
    wait_for(lambda: layers.input_value() == str(tiny_config("gpt2").n_layer) and layers.is_disabled(), 10,
             "num_layers to show the model's value again")
    wait_for(lambda: form_errors(page) == "", 10, "no form messages")
    shot(page, "01-loaded")

    # 2. A Hub preset offline gives the clear message beside model.name; the offline preset comes back.
    choose(page, "preset", "gpt2-e2e")
    errors = wait_for(lambda: "model.name" in page.locator("#form-errors").inner_text()
                      and page.locator("#form-errors").inner_text(), 30, "the offline message")
    assert "gpt2" in errors
    shot(page, "02-hub-preset-offline")
    choose(page, "preset", "offline-tiny")
    wait_for(lambda: page.locator("#form-errors").inner_text() == "", 20, "the message to clear")
    wait_for(lambda: page.locator("#f-model-name input").input_value().startswith("tiny-gpt2"), 10, "tiny-gpt2")

    # 3. num_virtual_tokens and prefix_projection change the table to the right numbers.
    set_number(page, "f-prefix-num_virtual_tokens", 5)
    want = expected_counts(5, h=64)  # offline-tiny sets encoder_hidden_size 64
    wait_for(lambda: accounting(page).get("no_projection", [None, ""])[1] == str(want["no_projection"]), 10,
             f"no_projection trainable = {want['no_projection']}")
    rows = accounting(page)
    assert rows["projection"][1] == str(want["projection"])
    assert rows["projection"][4] == rows["no_projection"][4] == str(want["stored"])
    base = int(rows["no_projection"][2]) - want["no_projection"]
    assert int(rows["projection"][2]) == base + want["projection"]
    set_variants(page, "no_projection")
    wait_for(lambda: set(accounting(page)) == {"no_projection"}, 10, "a single no_projection row")
    assert page.locator("#f-prefix-encoder_hidden_size textarea").is_disabled()
    shot(page, "03-no-projection-only")
    set_variants(page, "no_projection", "projection")
    wait_for(lambda: set(accounting(page)) == {"no_projection", "projection"}, 10, "both rows again")
    assert not page.locator("#f-prefix-encoder_hidden_size textarea").is_disabled()

    # Shorter sequences than the preset's keep the test to a couple of minutes; enough steps (about
    # 20 s on two idle cores) that the page is seen while the run trains, and Stop lands mid-run,
    # even when the machine is busy. 16 steps once finished between two looks of a loaded test.
    # A value that is HTML is quoted in its message as text, never built into the page.
    set_text(page, "f-training-max_steps", "<img src=x onerror=window.pwned=1>")
    wait_for(lambda: "<img src=x onerror=window.pwned=1>" in form_errors(page), 10, "the message quoting the value")
    assert page.locator("#form-errors img").count() == 0 and page.evaluate("window.pwned") is None
    set_text(page, "f-training-max_steps", 80)
    set_number(page, "f-training-eval_interval", 20)
    set_number(page, "f-training-log_interval", 2)
    set_number(page, "f-training-max_length", 96)
    page.locator("#section-generation").get_by_text("Generation", exact=True).click()  # a closed accordion
    set_number(page, "f-generation-max_new_tokens", 12)
    wait_for(lambda: page.locator("#form-errors").inner_text() == "", 10, "no form messages")

    # 4. Train returns at once; the chart gains points while the run is going.
    page.locator("#train").click()
    wait_for(lambda: re.search(r"\*?\*?(queued|running)", status(page)), 10, "the run to be queued")
    wait_for(lambda: "running" in status(page) and loss_points(page) > 0, RUN_TIMEOUT_S, "first loss points",
             page=page)
    first = loss_points(page)
    shot(page, "04-training")
    wait_for(lambda: loss_points(page) > first, RUN_TIMEOUT_S, "more loss points while training",
             page=page)

    # 5. When it ends: the comparison table and the output grid are filled.
    wait_for(lambda: "done" in status(page), RUN_TIMEOUT_S, "the run to finish", page=page)
    comparison = wait_for(lambda: len(table(page, "comparison")) == 2 and table(page, "comparison"), 15,
                          "the comparison table")
    by_variant = {row[0]: row for row in comparison}
    assert by_variant["no_projection"][1] == str(want["no_projection"])
    assert by_variant["projection"][1] == str(want["projection"])
    for row in comparison:
        assert float(row[5]) > 0 and float(row[6]) > 0  # final train and validation loss
    headers, grid = wait_for(lambda: html_table(page, "outputs")[1] and html_table(page, "outputs"), 15,
                             "the output grid")
    assert headers == ["prompt", "reference", "base", "no_projection", "projection"]
    # offline-tiny generates for 3 test prompts, each with its reference and every model's output.
    assert len(grid) == 3 and all(len(row) == 5 and row[0] and row[1] for row in grid)
    shot(page, "05-done")

    # 6. A typed prompt is generated by the base and every trained variant (a queued event); one over
    # the limit is refused at once, in the outputs' place, not echoed back.
    page.locator("#prompt textarea").fill("x" * (MAX_PROMPT_CHARS + 1))
    page.locator("#generate").click()
    refusal = wait_for(lambda: page.locator("#generated .generate-message").count() == 1
                       and page.locator("#generated").inner_text(), 30, "the long prompt's refusal")
    assert f"{MAX_PROMPT_CHARS + 1:,} characters long" in refusal and len(refusal) < 500
    page.locator("#prompt textarea").fill("name[The Eagle] | food[French]")
    page.locator("#generate").click()
    headers, generated = wait_for(lambda: html_table(page, "generated")[1] and html_table(page, "generated"), 60,
                                  "generations for the typed prompt")
    assert headers == ["prompt", "base", "no_projection", "projection"]
    assert generated[0][0] == "name[The Eagle] | food[French]" and len(generated[0]) == 4
    first_run = page.locator("#run-select input").input_value()
    assert first_run in status(page)
    if os.environ.get("PREFIXLAB_UPDATE_SCREENSHOT"):
        # The README's picture: the form's top, parameters, chart, comparison and outputs.
        (REPO / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO / "docs" / "screenshot.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1500, "height": 2250})
    shot(page, "06-generated")

    # 7. Each variant's adapter downloads as a zip of its PEFT folder: the browser's file loads in
    # PEFT on the same tiny base (offline tiny-gpt2 = tiny_model("gpt2"), seed 0) with prefixlab's logits.
    downloaded_logits = {}
    for variant in ("no_projection", "projection"):
        choose(page, "adapter-select", variant)
        page.locator("#zip-adapter").click()
        link = f"#adapter-file a[download='{first_run}-{variant}.zip']"
        wait_for(lambda: page.locator(link).count() == 1, 30, f"the {variant} adapter zip link")
        zipped = download(page, link, tmp_path)
        folder = tmp_path / f"adapter-{variant}"
        with zipfile.ZipFile(zipped) as archive:
            assert sorted(archive.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
            archive.extractall(folder)
        saved = lab_dirs.runs / first_run / "adapters" / variant
        for name in ("README.md", "adapter_config.json", "adapter_model.safetensors"):
            assert (folder / name).read_bytes() == (saved / name).read_bytes(), name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == 5
        assert config["prefix_projection"] == (variant == "projection")
        downloaded_logits[variant] = assert_loads_in_peft_with_our_logits(folder)
    assert not torch.allclose(downloaded_logits["no_projection"], downloaded_logits["projection"], atol=1e-3)
    shot(page, "07-adapters-downloaded")

    # 8. Save / export: the spec JSON the browser downloads is the form as set above; the command
    # names the CLI; Save as preset writes presets/<slug>.json and the Preset dropdown offers it.
    page.locator("#section-export").get_by_text("Save / export", exact=True).click()  # a closed accordion
    page.locator("#export-spec").click()
    wait_for(lambda: page.locator("#spec-file a[download='offline-tiny.json']").count() == 1, 20,
             "the exported spec's download link")
    exported_path = download(page, "#spec-file a[download='offline-tiny.json']", tmp_path)
    exported = json.loads(exported_path.read_text())
    spec = ExperimentSpec.load(exported_path)
    assert exported["name"] == spec.name == "offline-tiny"
    assert (spec.training.max_steps, spec.training.eval_interval, spec.training.log_interval,
            spec.training.max_length, spec.generation.max_new_tokens) == (80, 20, 2, 96, 12)
    assert spec.variant_names == ["no_projection", "projection"]
    assert [v.prefix.num_virtual_tokens for v in spec.variants] == [5, 5]
    assert spec.model.name == "tiny-gpt2" and spec.data.source == "e2e-synth"
    command = wait_for(lambda: page.locator("#cli-command .cm-content").inner_text().strip(), 10, "the command")
    assert command == "python -m prefixlab train offline-tiny.json"
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_url.rstrip("/"))
    page.locator("#cli-command button[aria-label=Copy]").click()
    wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == command, 10, "the command on the clipboard")

    assert "browser-recipe" not in dropdown_options(page, "preset")
    set_text(page, "preset-name", "Browser recipe")
    page.locator("#save-preset").click()
    wait_for(lambda: "Saved preset browser-recipe." in form_errors(page), 20, "the saved-preset message")
    saved_preset = lab_dirs.presets / "browser-recipe.json"
    assert ExperimentSpec.load(saved_preset).to_dict() == spec.to_dict()
    assert page.locator("#preset input").input_value() == "browser-recipe"
    assert page.locator("#spec-file a[download='browser-recipe.json']").count() == 1
    saved_command = page.locator("#cli-command .cm-content").inner_text().strip()
    # The app runs in the repo and its presets folder is elsewhere: the command names the real file.
    assert saved_command == f"python -m prefixlab train {saved_preset.resolve()}"
    assert json.loads(saved_preset.read_text())["_command"] == saved_command
    time.sleep(1.5)  # the confirmation stays (the form is not reloaded over it)
    assert "Saved preset browser-recipe." in form_errors(page)
    presets_now = sorted(p.name for p in lab_dirs.presets.glob("*.json"))
    assert presets_now == sorted(REPO_PRESET_FILES + ["browser-recipe.json"])
    assert not (REPO / "presets" / "browser-recipe.json").exists()
    assert "browser-recipe" in dropdown_options(page, "preset")
    # Picking it fills the form: offline-tiny's 40 steps first, then the saved preset's 80 again.
    choose(page, "preset", "offline-tiny")
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "40", 10, "offline-tiny's steps")
    choose(page, "preset", "browser-recipe")
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "80", 10, "the saved 80 steps")
    wait_for(lambda: page.locator("#f-prefix-num_virtual_tokens input").input_value() == "5", 10,
             "the saved prefix length")
    wait_for(lambda: form_errors(page) == "", 10, "no form messages")
    shot(page, "08-exported-and-saved")

    # 9. A second run, stopped while it trains, ends cancelled.
    page.locator("#train").click()
    wait_for(lambda: page.locator("#run-select input").input_value() != first_run, 10,
             "the second run to be selected")
    second_run = page.locator("#run-select input").input_value()
    # The first run's generations and adapter zip do not stay on show under the second run's status.
    wait_for(lambda: not html_table(page, "generated")[1], 10, "the first run's generations to be cleared")
    assert page.locator("#adapter-file a[download]").count() == 0
    wait_for(lambda: "running" in status(page), RUN_TIMEOUT_S, "the second run to start", page=page)
    page.locator("#stop").click()
    wait_for(lambda: "cancelled" in status(page), 60, "the second run to be cancelled")
    shot(page, "09-cancelled")

    # 10. A reload finds both runs, from the run directory, and the preset saved in stage 8.
    page.reload()
    runs = wait_for(lambda: len(table(page, "runs")) >= 2 and table(page, "runs"), 20, "the runs table")
    assert "browser-recipe" in dropdown_options(page, "preset")
    states = {row[0]: row[3] for row in runs}
    assert states == {first_run: "done", second_run: "cancelled"}
    wait_for(lambda: second_run in status(page), 10, "the newest run to be selected again")
    own = loss_points(page)
    # The finished run overlaid on the chart adds its points.
    choose(page, "overlay-select", first_run)
    wait_for(lambda: loss_points(page) > own, 15, "the overlaid run's points")
    shot(page, "10-reloaded-overlay")

    # 11. An uploaded task file: a line that is not JSON is named (file and line) above the form, no
    # traceback, and the task stays what it was; while the file is shown, Train refuses with its message.
    bad = tmp_path / "bad-task.jsonl"
    bad.write_text('{"table": "name[A]", "text": "A."}\n{"table": "name[B]", "text": "B."}\nnot json at all\n')
    page.locator("#upload-task input[type=file]").set_input_files(str(bad))
    message = wait_for(lambda: "bad-task.jsonl" in form_errors(page) and form_errors(page), 20,
                       "the bad file's message")
    assert "data.source" in message and "bad-task.jsonl, line 3: bad JSON" in message
    assert "Traceback" not in message and page.locator(".toast-body").count() == 0
    time.sleep(1.5)  # it stays: nothing the upload changed clears it
    assert "bad-task.jsonl, line 3" in form_errors(page)
    assert page.locator("#f-data-source input").input_value() == "e2e-synth"
    runs_before = sorted(p.name for p in lab_dirs.runs.iterdir())
    page.locator("#train").click()
    time.sleep(1.5)
    assert "bad-task.jsonl, line 3" in form_errors(page) and "clear the upload" in form_errors(page)
    assert sorted(p.name for p in lab_dirs.runs.iterdir()) == runs_before  # nothing queued, nothing stored
    shot(page, "11-upload-bad-line")

    # 12. A good JSONL (columns id, table, text): its columns become the pickers' choices, picking
    # table -> text leaves the form without messages, and a short run trains on exactly those columns.
    rows = [{"id": i, "table": f"name[Upload {i}] | area[riverside]", "text": f"Upload {i} is by the river."}
            for i in range(40)]
    good = tmp_path / "my-task.jsonl"
    good.write_text("".join(json.dumps(row) + "\n" for row in rows))
    page.locator("#upload-task button[aria-label=Clear]").click()
    wait_for(lambda: form_errors(page) == "", 10, "the cleared upload's message to go")
    page.locator("#upload-task input[type=file]").set_input_files(str(good))
    wait_for(lambda: page.locator("#f-data-source input").input_value().endswith(".jsonl"), 20,
             "data.source to be the uploaded file")
    # Stored under its own name: the file's name and its content's hash.
    stored = Path(page.locator("#f-data-source input").input_value())
    assert stored.parent == lab_dirs.runs / "uploads" and re.fullmatch(r"my-task-[0-9a-f]{12}\.jsonl", stored.name)
    assert stored.read_bytes() == good.read_bytes()
    assert dropdown_options(page, "f-data-source_column") == ["id", "table", "text"]
    assert dropdown_options(page, "f-data-target_column") == ["id", "table", "text"]
    choose(page, "f-data-source_column", "table")
    choose(page, "f-data-target_column", "text")
    wait_for(lambda: form_errors(page) == "", 10, "no form messages for the uploaded task")
    wait_for(lambda: set(accounting(page)) == {"no_projection", "projection"}, 10, "the parameter table")
    # Cheap: one variant, 4 steps, 8 new tokens (the worker's start-up is most of it).
    set_variants(page, "no_projection")
    set_text(page, "f-training-max_steps", 4)
    set_number(page, "f-training-eval_interval", 2)
    set_number(page, "f-training-log_interval", 1)
    page.locator("#section-generation").get_by_text("Generation", exact=True).click()
    set_number(page, "f-generation-max_new_tokens", 8)
    wait_for(lambda: set(accounting(page)) == {"no_projection"} and form_errors(page) == "", 10,
             "one variant, no messages")
    page.locator("#train").click()
    wait_for(lambda: page.locator("#run-select input").input_value() not in (first_run, second_run), 10,
             "the upload run to be selected")
    wait_for(lambda: "done" in status(page), RUN_TIMEOUT_S, "the upload run to finish", page=page)
    one_variant = ["prompt", "reference", "base", "no_projection"]
    _, grid = wait_for(lambda: html_table(page, "outputs")[0] == one_variant and html_table(page, "outputs"), 15,
                       "the upload run's output grid")
    # Prompts and references are held-out rows of the file (every 10th), read from the picked columns.
    pairs = {(row["table"], row["text"]) for row in rows}
    assert len(grid) == 3 and all((row[0], row[1]) in pairs for row in grid), grid
    shot(page, "12-upload-trained")
