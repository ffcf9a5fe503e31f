"""The lab in a real browser: Playwright driving Debian's Chromium against `python app.py`.

One app and one browser page for the whole module; one test walks the page's stages in order
(each needs the previous one's state) and saves a screenshot of each to test-artifacts/browser/.
The layout is checked at 1280x800 and 1920x1080: the run's status, loss chart and comparison are
in the first screen, and the page's height at 1280x800 is written to
test-artifacts/browser/page_height.txt. Set PREFIXLAB_UPDATE_SCREENSHOT=1 to also copy the screens
to docs/ (screenshot-1280x800.png, screenshot-1920x1080.png and the README's screenshot.png).

Downloads (adapter zips, the spec JSON, the charts and metrics) go through the browser
(`page.expect_download`) and are checked here: the zips load with prefixlab and in PEFT with
prefixlab's logits, the spec loads as an ExperimentSpec, the CSV holds the run's metrics. The app
saves presets with its runs (runs/presets), never into the repository's presets/.
"""

from __future__ import annotations

import csv
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
from test_worker_e2e import assert_loads_in_peft_with_our_logits, logits_of

from prefixlab import PrefixTuningModel
from prefixlab.engine.limits import MAX_PROMPT_CHARS
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.tiny import tiny_config, tiny_model

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
RUN_TIMEOUT_S = 150  # offline-tiny trains 60 steps of a tiny model: well under a minute on 2 cores
REPO_PRESET_FILES = sorted(p.name for p in (REPO / "presets").glob("*.json"))
LAPTOP, DESKTOP = {"width": 1280, "height": 800}, {"width": 1920, "height": 1080}
# The page at 1280x800 with only the essentials open: at most about two screens.
MAX_PAGE_HEIGHT = 2 * LAPTOP["height"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab_dirs(tmp_path_factory):
    """The app's runs directory (empty; the user's presets are saved in it) and the shipped presets
    folder (a copy of presets/*.json: the models and data stay in the repository, found by name)."""
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
    text = log_path.read_text()
    shutil.copyfile(log_path, ARTIFACTS / "app.log") if ARTIFACTS.is_dir() else None
    assert "Traceback" not in text, text[-3000:]  # no handler failed, Generate's refusals included


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
        page = browser.new_page(viewport=LAPTOP)
        page.set_default_timeout(30_000)
        yield page
        browser.close()


# --- page helpers ----------------------------------------------------------------------------------


def table(page, elem_id: str) -> list[list[str]]:
    """The body rows of one of the page's HTML tables (parameters, comparison, runs), as the text of
    their cells; a variant's formula line is not a row of its own."""
    return page.eval_on_selector_all(
        f"#{elem_id} table tbody tr:not(.formula)", "trs => trs.map(tr => [...tr.cells].map(td => td.innerText.trim()))")


def html_table(page, elem_id: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of an HTML table (the output grids)."""
    headers = [h.strip() for h in page.locator(f"#{elem_id} table th").all_inner_texts()]
    rows = page.eval_on_selector_all(
        f"#{elem_id} table tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.innerText.trim()))")
    return headers, rows


def number(text: str) -> int:
    """A count as the page's tables write it ("21,440")."""
    return int(text.replace(",", ""))


def wait_for(predicate, timeout: float, what: str, poll: float = 0.3, page=None):
    """`predicate()`'s first true value within `timeout` s. With `page`: a run's failure on the status
    line ends the wait at once (no run recovers from it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if page is not None and " · failed · " in status(page):
            break
        time.sleep(poll)
    seen = ""
    if page is not None:  # what the page showed instead, for the failure message and artifacts
        page.screenshot(path=str(ARTIFACTS / "timeout.png"), full_page=True)
        seen = f"; the status line read {status(page)!r}, the chart {loss_points(page)} training points"
    pytest.fail(f"gave up after {timeout:.0f} s at most waiting for {what}{seen}")


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


def open_section(page, section: str) -> None:
    """Open the form's collapsed "more" accordion of `section` (its fields are not on the page until then)."""
    accordion = page.locator(f"#section-{section}")
    fields = accordion.locator("input:not([type=file]), textarea")

    def is_open():
        return fields.count() and fields.first.is_visible()

    # A freshly loaded page may still be applying the form's first update, which can open a section
    # itself (a field's message opens its section): a click then closes it again. Click until open.
    for _ in range(3):
        if is_open():
            return
        accordion.locator("button.label-wrap").first.click()
        deadline = time.time() + 5
        while time.time() < deadline and not is_open():
            time.sleep(0.2)
    wait_for(is_open, 5, f"the {section} section to open", page=page)


def open_tab(page, tab: str) -> None:
    """Select one of the page's tabs ("generate", "adapters", "runs", "metrics", ...)."""
    page.locator(f"#tab-{tab}-button").first.click()


def text(page, elem_id: str) -> str:
    """A Markdown panel's text (not its progress tracker's, which shows a timer while it updates)."""
    return page.locator(f"#{elem_id} [data-testid=markdown]").inner_text().strip()


def status(page) -> str:
    return text(page, "status")


def loss_points(page) -> int:
    """The selected run's first variant's training points on the loss chart."""
    match = re.search(r"(\d+) training", text(page, "loss-points"))
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
    return text(page, "form-errors")


def beside(page, elem_id: str) -> str:
    """What a form field shows under its label: its help, or its message while its value is wrong."""
    return page.locator(f"#{elem_id} .info-text").inner_text()


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


def page_height(page) -> int:
    return page.evaluate("document.documentElement.scrollHeight")


def assert_in_first_screen(page, *selectors: str) -> None:
    """Each element lies whole within the first screen (the page scrolled to its top)."""
    page.evaluate("window.scrollTo(0, 0)")
    height = page.viewport_size["height"]
    for selector in selectors:
        box = page.locator(selector).first.bounding_box()
        assert box is not None, f"{selector} is not on the page"
        assert 0 <= box["y"] and box["y"] + box["height"] <= height, (
            f"{selector} spans y={box['y']:.0f}..{box['y'] + box['height']:.0f}, beyond the first "
            f"{height} px of a {page.viewport_size['width']}x{height} screen")


def docs_screenshot(page, name: str, full_page: bool = False) -> None:
    """A screen for docs/ (only with PREFIXLAB_UPDATE_SCREENSHOT=1; always in test-artifacts)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)
    if os.environ.get("PREFIXLAB_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / name, REPO / "docs" / name)


# --- the stages ------------------------------------------------------------------------------------


def test_the_lab_end_to_end(app_url, lab_dirs, page, tmp_path):
    # 1. The page loads on the offline preset, with its parameter table already computed, in two
    # screens at 1280x800, and says what max_length does to the task's examples.
    started = time.time()
    page.goto(app_url)
    page.wait_for_selector("#accounting table")
    (ARTIFACTS / "load_seconds.txt").write_text(f"{time.time() - started:.2f}\n")
    assert page.locator("#preset input").input_value() == "offline-tiny"
    assert page.locator("#f-model-name input").input_value().startswith("tiny-gpt2: ")
    wait_for(lambda: set(accounting(page)) == {"no_projection", "projection"}, 10, "the parameter table")
    note = wait_for(lambda: "truncated" in text(page, "data-note")
                    and text(page, "data-note"), 60, "the data note")
    # offline-tiny: 320 train + 32 validation examples, 320 of them longer than 128 tokens.
    assert "352 examples (320 train + 32 validation) at max_length 128: 320 truncated" in note, note
    suggested = int(re.search(r"At (\d+) all fit", note).group(1))
    assert page.locator("#use-suggested").inner_text() == f"Use max_length {suggested}"
    height = page_height(page)
    (ARTIFACTS / "page_height.txt").write_text(f"{height}\n")
    print(f"page height at 1280x800, the essentials open: {height} px", flush=True)
    assert height <= MAX_PAGE_HEIGHT, f"the page is {height} px tall at 1280x800"
    # The suggested max_length, one click away; then back to the preset's.
    page.locator("#use-suggested").click()
    wait_for(lambda: "none truncated" in text(page, "data-note"), 20, "no truncation")
    assert page.locator("#f-training-max_length input").input_value() == str(suggested)
    set_number(page, "f-training-max_length", 128)
    # Inferred sizes show the model's values, read-only until "override" is ticked.
    open_section(page, "prefix")
    layers = page.locator("#f-prefix-num_layers textarea")
    assert layers.input_value() == str(tiny_config("gpt2").n_layer) and layers.is_disabled()
    # Overriding, then unticking: the read-only fields show the model's sizes again, not the typed 7.
    page.locator("#override-inferred input").check()
    wait_for(lambda: not layers.is_disabled(), 10, "num_layers to be editable")
    set_text(page, "f-prefix-num_layers", 7)
    wait_for(lambda: "num_layers=7" in beside(page, "f-prefix-num_layers"), 10, "the message beside num_layers")
    page.locator("#override-inferred input").uncheck()
    wait_for(lambda: layers.input_value() == str(tiny_config("gpt2").n_layer) and layers.is_disabled(), 10,
             "num_layers to show the model's value again")
    wait_for(lambda: form_errors(page) == "", 10, "no form messages")
    assert "num_layers=7" not in beside(page, "f-prefix-num_layers")
    shot(page, "01-loaded")

    # 2. Every problem at once, each beside its field, as it is typed: an essential, one in a
    # collapsed section (which opens), and the parameter table says which one stops it.
    page.locator("#section-prefix button.label-wrap").first.click()  # close it again
    set_number(page, "f-prefix-num_virtual_tokens", 0)
    set_number(page, "f-training-learning_rate", 0)
    wait_for(lambda: "must be > 0" in beside(page, "f-training-learning_rate")
             and "at least 1" in beside(page, "f-prefix-num_virtual_tokens"), 10, "both messages beside their fields")
    assert "field-error" in page.locator("#f-prefix-num_virtual_tokens").get_attribute("class")
    assert table(page, "accounting") == []
    assert "prefix.num_virtual_tokens" in text(page, "accounting-note")
    errors = form_errors(page)
    assert "training.learning_rate" in errors and "prefix.num_virtual_tokens" in errors
    set_number(page, "f-prefix-num_virtual_tokens", 10)
    set_number(page, "f-training-learning_rate", 0.1)
    wait_for(lambda: form_errors(page) == "" and len(accounting(page)) == 2, 10, "the messages to go")
    assert beside(page, "f-training-learning_rate") == "Peak AdamW learning rate."
    shot(page, "02-field-messages")

    # 3. A Hub preset offline gives the clear message beside model.name; the offline preset comes back.
    choose(page, "preset", "gpt2-e2e")
    wait_for(lambda: "gpt2" in beside(page, "f-model-name") and "⚠️" in beside(page, "f-model-name"), 30,
             "the offline message beside model.name")
    wait_for(lambda: "examples" not in text(page, "data-note"), 30, "the data note to say nothing of gpt2's tokens")
    shot(page, "03-hub-preset-offline")
    choose(page, "preset", "offline-tiny")
    wait_for(lambda: form_errors(page) == "", 20, "the message to clear")
    wait_for(lambda: page.locator("#f-model-name input").input_value().startswith("tiny-gpt2"), 10, "tiny-gpt2")

    # 4. num_virtual_tokens and the variants change the table to the right numbers.
    set_number(page, "f-prefix-num_virtual_tokens", 5)
    want = expected_counts(5, h=64)  # offline-tiny sets encoder_hidden_size 64
    wait_for(lambda: number(accounting(page).get("no_projection", [None, "0"])[1]) == want["no_projection"], 10,
             f"no_projection trainable = {want['no_projection']}")
    rows = accounting(page)
    assert number(rows["projection"][1]) == want["projection"]
    assert number(rows["projection"][4]) == number(rows["no_projection"][4]) == want["stored"]
    base = number(rows["no_projection"][2]) - want["no_projection"]
    assert number(rows["projection"][2]) == base + want["projection"]
    set_variants(page, "no_projection")
    wait_for(lambda: set(accounting(page)) == {"no_projection"}, 10, "a single no_projection row")
    assert page.locator("#f-prefix-encoder_hidden_size textarea").is_disabled()
    set_variants(page, "no_projection", "projection")
    wait_for(lambda: set(accounting(page)) == {"no_projection", "projection"}, 10, "both rows again")
    assert not page.locator("#f-prefix-encoder_hidden_size textarea").is_disabled()

    # Shorter sequences than the preset's keep the test to a couple of minutes; enough steps (about
    # 20 s on two idle cores) that the page is seen while the run trains, and Stop lands mid-run,
    # even when the machine is busy. A value that is HTML is quoted in its message as text.
    set_text(page, "f-training-max_steps", "<img src=x onerror=window.pwned=1>")
    wait_for(lambda: "<img src=x onerror=window.pwned=1>" in beside(page, "f-training-max_steps"), 10,
             "the message quoting the value")
    assert page.locator("#form-errors img, #f-training-max_steps img").count() == 0
    assert page.evaluate("window.pwned") is None
    set_text(page, "f-training-max_steps", 80)
    set_number(page, "f-training-max_length", 96)
    open_section(page, "training")
    set_number(page, "f-training-eval_interval", 20)
    set_number(page, "f-training-log_interval", 2)
    open_section(page, "generation")
    set_number(page, "f-generation-max_new_tokens", 12)
    wait_for(lambda: form_errors(page) == "", 10, "no form messages")

    # 5. Train returns at once; the chart gains points while the run is going, with its remaining
    # time measured from the steps. A smoothing typed out of range is clamped: no error, the chart
    # goes on.
    page.locator("#train").click()
    wait_for(lambda: re.search(r"(queued|running)", status(page)), 10, "the run to be queued")
    wait_for(lambda: "running" in status(page) and loss_points(page) > 0, RUN_TIMEOUT_S, "first loss points",
             page=page)
    first = loss_points(page)
    smoothing = page.locator("#smoothing input[type=number]")
    smoothing.fill("5")
    shot(page, "05-training")
    wait_for(lambda: loss_points(page) > first, RUN_TIMEOUT_S, "more loss points while training", page=page)
    assert page.locator(".toast-body").count() == 0
    smoothing.press("Tab")
    wait_for(lambda: smoothing.input_value() == "0.95", 10, "the smoothing clamped to 0.95")
    wait_for(lambda: re.search(r"remaining \d+:\d\d", status(page)) or "done" in status(page), 60,
             "a measured remaining time")
    smoothing.fill("0.6")
    smoothing.press("Tab")

    # 6. When it ends: the comparison table and the output grid are filled, and the status, the
    # loss chart and the comparison are in the first screen at 1280x800 and at 1920x1080.
    wait_for(lambda: "done" in status(page), RUN_TIMEOUT_S, "the run to finish", page=page)
    # A row per variant, under the base model's (the run scored its task metrics at step 0: it has
    # no parameters or losses of its own).
    comparison = wait_for(lambda: [row[0] for row in table(page, "comparison")] == ["base", "no_projection",
                                                                                   "projection"]
                          and table(page, "comparison"), 15, "the comparison table")
    by_variant = {row[0]: row for row in comparison}
    assert number(by_variant["no_projection"][1]) == want["no_projection"]
    assert number(by_variant["projection"][1]) == want["projection"]
    assert by_variant["base"][1] == by_variant["base"][5] == "–"
    for row in comparison[1:]:
        assert float(row[5]) > 0 and float(row[6]) > 0  # final train and validation loss
        assert re.fullmatch(r"\d+:\d\d", row[8])  # wall time
    headers, grid = wait_for(lambda: html_table(page, "outputs")[1] and html_table(page, "outputs"), 15,
                             "the output grid")
    assert headers == ["prompt", "reference", "base", "no_projection", "projection"]
    # offline-tiny generates for 3 test prompts, each with its reference and every model's output.
    assert len(grid) == 3 and all(len(row) == 5 and row[0] and row[1] for row in grid)
    first_run = page.locator("#run-select input").input_value()
    assert first_run in status(page) and "tiny-gpt2 · task e2e-synth · 5 virtual tokens" in status(page)
    assert "no_projection: 40 training" in text(page, "loss-points")  # per variant
    layout = ("#status", "#loss-chart", "#comparison table")
    assert_in_first_screen(page, *layout)
    docs_screenshot(page, "screenshot-1280x800.png")
    page.set_viewport_size(DESKTOP)
    time.sleep(1)
    assert_in_first_screen(page, *layout)
    docs_screenshot(page, "screenshot-1920x1080.png")
    shot(page, "06-done")

    # 7. The charts as PNG and SVG, the metrics as CSV; the task-metric tab says when a run has none.
    open_tab(page, "metrics")
    page.locator("#metric-chart").wait_for()
    open_tab(page, "loss")
    page.locator("#export-charts").click()
    csv_link = f"#chart-files a[download='{first_run}-metrics.csv']"
    wait_for(lambda: page.locator(csv_link).count() == 1, 30, "the charts' download links")
    names = set(page.locator("#chart-files a[download]").evaluate_all("els => els.map(e => e.download)"))
    assert names == {f"{first_run}-{name}.{fmt}" for name in ("loss", "task-metrics", "parameters")
                     for fmt in ("png", "svg")} | {f"{first_run}-metrics.csv"}
    with open(download(page, csv_link, tmp_path), newline="") as f:
        lines = list(csv.DictReader(f))
    metrics = [json.loads(line) for line in (lab_dirs.runs / first_run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(metrics) and {row["run"] for row in lines} == {first_run}
    assert [float(r["loss"]) for r in lines if r["loss"]] == [m["loss"] for m in metrics if "loss" in m]
    svg = download(page, f"#chart-files a[download='{first_run}-loss.svg']", tmp_path)
    assert b"<svg" in svg.read_bytes()[:1000]

    # 8. A typed prompt is generated by the base and every trained variant (a queued event); one over
    # the limit is refused at once, in the outputs' place, not echoed back.
    open_tab(page, "generate")
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
    docs_screenshot(page, "screenshot.png", full_page=True)  # the README's picture
    page.set_viewport_size(LAPTOP)
    shot(page, "08-generated")

    # 9. Each variant's adapter downloads as a zip of its PEFT folder: the browser's file loads with
    # prefixlab.PrefixTuningModel.from_pretrained on the same tiny base (offline tiny-gpt2 =
    # tiny_model("gpt2"), seed 0), as the run's own folder does, and in PEFT with prefixlab's logits.
    open_tab(page, "adapters")
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
        loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(folder)).eval()
        from_run = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(saved)).eval()
        torch.testing.assert_close(logits_of(loaded), logits_of(from_run), rtol=0, atol=0)
        downloaded_logits[variant] = assert_loads_in_peft_with_our_logits(folder)
    assert not torch.allclose(downloaded_logits["no_projection"], downloaded_logits["projection"], atol=1e-3)
    shot(page, "09-adapters-downloaded")

    # 10. Save / export: the spec JSON the browser downloads is the form as set above; the command
    # names the CLI; Save as preset writes <runs>/presets/<slug>.json (never the shipped folder) and
    # the Preset dropdown offers it after the shipped ones.
    open_section(page, "export")
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
    saved_preset = lab_dirs.runs / "presets" / "browser-recipe.json"
    assert ExperimentSpec.load(saved_preset).to_dict() == spec.to_dict()
    assert page.locator("#preset input").input_value() == "browser-recipe"
    assert page.locator("#spec-file a[download='browser-recipe.json']").count() == 1
    saved_command = page.locator("#cli-command .cm-content").inner_text().strip()
    # The app runs in the repo and the runs folder is elsewhere: the command names the real file.
    assert saved_command == f"python -m prefixlab train {saved_preset.resolve()}"
    assert json.loads(saved_preset.read_text())["_command"] == saved_command
    time.sleep(1.5)  # the confirmation stays (the form is not reloaded over it)
    assert "Saved preset browser-recipe." in form_errors(page)
    assert sorted(p.name for p in lab_dirs.presets.glob("*.json")) == REPO_PRESET_FILES  # the shipped folder: untouched
    assert sorted(p.name for p in (REPO / "presets").glob("*.json")) == REPO_PRESET_FILES
    options = dropdown_options(page, "preset")
    assert options == [Path(name).stem for name in REPO_PRESET_FILES] + ["browser-recipe"]
    # Picking it fills the form: offline-tiny's 40 steps first, then the saved preset's 80 again.
    choose(page, "preset", "offline-tiny")
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "40", 10, "offline-tiny's steps")
    choose(page, "preset", "browser-recipe")
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "80", 10, "the saved 80 steps")
    wait_for(lambda: page.locator("#f-prefix-num_virtual_tokens input").input_value() == "5", 10,
             "the saved prefix length")
    wait_for(lambda: form_errors(page) == "", 10, "no form messages")
    shot(page, "10-exported-and-saved")

    # 11. "Edit in form": offline-tiny's 40 steps in the form, then the run's experiment back.
    choose(page, "preset", "offline-tiny")
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "40", 10, "offline-tiny's steps")
    page.locator("#edit-run").click()
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "80", 10, "the run's 80 steps")
    assert page.locator("#f-prefix-num_virtual_tokens input").input_value() == "5"
    assert first_run in text(page, "run-note")

    # 12. A second run, stopped while it trains, ends cancelled; the overlay menu never offers the
    # selected run itself.
    page.locator("#train").click()
    wait_for(lambda: page.locator("#run-select input").input_value() != first_run, 10,
             "the second run to be selected")
    second_run = page.locator("#run-select input").input_value()
    # The first run's generations and adapter zip do not stay on show under the second run's status.
    open_tab(page, "generate")
    wait_for(lambda: not html_table(page, "generated")[1], 10, "the first run's generations to be cleared")
    open_tab(page, "adapters")
    assert page.locator("#adapter-file a[download]").count() == 0
    wait_for(lambda: "running" in status(page), RUN_TIMEOUT_S, "the second run to start", page=page)
    page.locator("#stop").click()
    wait_for(lambda: "cancelled" in status(page), 60, "the second run to be cancelled")
    assert dropdown_options(page, "overlay-select") == ["no overlay", first_run]
    shot(page, "12-cancelled")

    # 13. A reload finds both runs, from the run directory, and the preset saved in stage 10.
    page.reload()
    open_tab(page, "runs")
    runs = wait_for(lambda: len(table(page, "runs")) >= 2 and table(page, "runs"), 20, "the runs table")
    assert "browser-recipe" in dropdown_options(page, "preset")
    states = {row[0]: row[3] for row in runs}
    assert states == {first_run: "done", second_run: "cancelled"}
    wait_for(lambda: second_run in status(page), 10, "the newest run to be selected again")
    # The finished run overlaid on the chart: its points are counted under its own label.
    choose(page, "overlay-select", first_run)
    wait_for(lambda: "offline-tiny" in text(page, "loss-points")
             and text(page, "loss-points").count("training") == 4, 15, "the overlaid run's points")
    shot(page, "13-reloaded-overlay")

    # 14. Uploaded task files. A line that is not JSON is named (file and line) beside data.source, no
    # traceback, and the task stays what it was; while the file is shown, Train refuses with its message.
    open_section(page, "data")
    bad = tmp_path / "bad-task.jsonl"
    bad.write_text('{"table": "name[A]", "text": "A."}\n{"table": "name[B]", "text": "B."}\nnot json at all\n')
    page.locator("#upload-task input[type=file]").set_input_files(str(bad))
    message = wait_for(lambda: "bad-task.jsonl" in beside(page, "f-data-source") and beside(page, "f-data-source"), 20,
                       "the bad file's message beside data.source")
    assert "bad-task.jsonl, line 3: bad JSON" in message and "data.source" in form_errors(page)
    assert "Traceback" not in message and page.locator(".toast-body").count() == 0
    time.sleep(1.5)  # it stays: nothing the upload changed clears it
    assert "bad-task.jsonl, line 3" in beside(page, "f-data-source")
    assert page.locator("#f-data-source input").input_value() == "e2e-synth"
    runs_before = sorted(p.name for p in lab_dirs.runs.iterdir())
    page.locator("#train").click()
    time.sleep(1.5)
    assert "bad-task.jsonl, line 3" in form_errors(page) and "clear the upload" in form_errors(page)
    assert sorted(p.name for p in lab_dirs.runs.iterdir()) == runs_before  # nothing queued, nothing stored
    shot(page, "14-upload-bad-line")
    # A .txt file is not ignored: it is refused, saying which files are accepted.
    page.locator("#upload-task button[aria-label=Clear]").click()
    wait_for(lambda: form_errors(page) == "", 10, "the cleared upload's message to go")
    notes = tmp_path / "notes.txt"
    notes.write_text("source,target\na,b\n")
    page.locator("#upload-task input[type=file]").set_input_files(str(notes))
    wait_for(lambda: "unsupported file type '.txt'; use .jsonl, .json or .csv" in beside(page, "f-data-source"), 20,
             "the .txt file's message")
    page.locator("#upload-task button[aria-label=Clear]").click()
    wait_for(lambda: form_errors(page) == "", 10, "the cleared upload's message to go")

    # 15. A good JSONL (columns id, table, text): its columns become the pickers' choices; the same
    # column as source and target is named live beside the target column; picking table -> text
    # leaves the form without messages, and a short run trains on exactly those columns.
    rows = [{"id": i, "table": f"name[Upload {i}] | area[riverside]", "text": f"Upload {i} is by the river."}
            for i in range(40)]
    good = tmp_path / "my-task.jsonl"
    good.write_text("".join(json.dumps(row) + "\n" for row in rows))
    page.locator("#upload-task input[type=file]").set_input_files(str(good))
    wait_for(lambda: page.locator("#f-data-source input").input_value().endswith(".jsonl"), 20,
             "data.source to be the uploaded file")
    # Stored under its own name: the file's name and its content's hash.
    stored = Path(page.locator("#f-data-source input").input_value())
    assert stored.parent == lab_dirs.runs / "uploads" and re.fullmatch(r"my-task-[0-9a-f]{12}\.jsonl", stored.name)
    assert stored.read_bytes() == good.read_bytes()
    assert dropdown_options(page, "f-data-source_column") == ["id", "table", "text"]
    assert dropdown_options(page, "f-data-target_column") == ["id", "table", "text"]
    choose(page, "f-data-source_column", "text")
    choose(page, "f-data-target_column", "text")
    wait_for(lambda: "both 'text'" in beside(page, "f-data-target_column"), 10, "the same-column message, live")
    choose(page, "f-data-source_column", "table")
    wait_for(lambda: form_errors(page) == "", 10, "no form messages for the uploaded task")
    wait_for(lambda: set(accounting(page)) == {"no_projection", "projection"}, 10, "the parameter table")
    wait_for(lambda: "40 examples (36 train + 4 validation)" in text(page, "data-note"), 30,
             "the uploaded task's data note")
    # Cheap: one variant, 4 steps, 8 new tokens (the worker's start-up is most of it).
    set_variants(page, "no_projection")
    open_section(page, "training")
    set_number(page, "f-training-eval_interval", 2)
    set_number(page, "f-training-log_interval", 1)
    set_text(page, "f-training-max_steps", 4)
    open_section(page, "generation")
    set_number(page, "f-generation-max_new_tokens", 8)
    wait_for(lambda: set(accounting(page)) == {"no_projection"} and form_errors(page) == "", 10,
             "one variant, no messages")
    page.locator("#train").click()
    wait_for(lambda: page.locator("#run-select input").input_value() not in (first_run, second_run), 10,
             "the upload run to be selected")
    wait_for(lambda: "done" in status(page), RUN_TIMEOUT_S, "the upload run to finish", page=page)
    open_tab(page, "outputs")
    one_variant = ["prompt", "reference", "base", "no_projection"]
    _, grid = wait_for(lambda: html_table(page, "outputs")[0] == one_variant and html_table(page, "outputs"), 15,
                       "the upload run's output grid")
    # Prompts and references are held-out rows of the file (every 10th), read from the picked columns.
    pairs = {(row["table"], row["text"]) for row in rows}
    assert len(grid) == 3 and all((row[0], row[1]) in pairs for row in grid), grid
    shot(page, "15-upload-trained")


def test_a_sweep_from_the_page(app_url, lab_dirs, page):
    """A sweep from the page, after the end-to-end walk (the same app and runs folder, the page opened
    afresh): offline-tiny cut to 4 steps, once per prefix length. A value the field cannot take is
    named with its field and queues nothing; then 3 tiny runs train one after another, and the table
    fills in with 3 runs x 2 variants, all done, beside a chart whose data is one point per run and
    variant. A reload reads the sweep back from the run folders."""
    page.set_viewport_size(LAPTOP)
    page.goto(app_url)
    page.wait_for_selector("#accounting table")
    assert page.locator("#preset input").input_value() == "offline-tiny"
    wait_for(lambda: page.locator("#f-training-max_steps textarea").input_value() == "40", 10, "offline-tiny's steps")
    set_text(page, "f-training-max_steps", 4)
    open_section(page, "training")
    set_number(page, "f-training-eval_interval", 2)
    set_number(page, "f-training-log_interval", 1)
    set_number(page, "f-training-metric_examples", 2)
    open_section(page, "generation")
    set_number(page, "f-generation-max_new_tokens", 4)
    wait_for(lambda: form_errors(page) == "", 10, "no form messages")
    open_tab(page, "sweep")
    runs_before = sorted(p.name for p in lab_dirs.runs.iterdir())
    set_text(page, "sweep-vary", "prefix.num_virtual_tokens=1,0")
    page.locator("#start-sweep").click()
    refusal = wait_for(lambda: "Nothing was queued" in text(page, "sweep-note") and text(page, "sweep-note"), 30,
                       "the sweep's refusal")
    assert "prefix.num_virtual_tokens=0" in refusal and "must be at least 1" in refusal
    assert "prefix.num_virtual_tokens=0" in beside(page, "sweep-vary")
    assert sorted(p.name for p in lab_dirs.runs.iterdir()) == runs_before
    set_text(page, "sweep-vary", "prefix.num_virtual_tokens=1,2,3")
    page.locator("#start-sweep").click()
    wait_for(lambda: "Queued sweep" in text(page, "sweep-note"), 30, "the sweep to be queued")
    sweep_id = re.search(r"Queued sweep (\S+): 3 runs", text(page, "sweep-note")).group(1)
    assert "prefix.num_virtual_tokens=0" not in beside(page, "sweep-vary")
    assert page.locator("#sweep-select input").input_value().endswith(sweep_id)

    def sweep_rows():
        return table(page, "sweep-table")

    rows = wait_for(lambda: len(sweep_rows()) == 6 and all(row[2] == "done" for row in sweep_rows()) and sweep_rows(),
                    3 * RUN_TIMEOUT_S, "the sweep's 3 runs to finish", poll=1.0)
    assert sorted((row[0], row[1]) for row in rows) == [(n, v) for n in "123" for v in ("no_projection", "projection")]
    assert all(number(row[3]) > 0 and float(row[4]) > 0 for row in rows)  # trainable, final validation loss
    assert page.locator("#sweep-chart img").count() == 1
    # The chart's data: one point per run and variant (views.sweep.sweep_series, what the chart draws).
    from prefixlab.engine.sweep import list_sweeps, read_sweep
    from prefixlab.views.sweep import default_metric, sweep_series

    view = read_sweep(lab_dirs.runs, sweep_id)
    series = sweep_series(view, default_metric(view.points))
    assert sorted(s.variant for s in series) == ["no_projection", "projection"]
    assert all(s.values == [1, 2, 3] for s in series)
    assert [s.id for s in list_sweeps(lab_dirs.runs)] == [sweep_id]
    shot(page, "16-sweep")
    # Read back from the run folders: a reload lists the sweep and shows its table again.
    page.reload()
    open_tab(page, "sweep")
    wait_for(lambda: len(sweep_rows()) == 6, 20, "the sweep's table after a reload")
    assert page.locator("#sweep-select input").input_value().endswith(sweep_id)
