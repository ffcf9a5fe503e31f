"""The GPU check on a machine without a GPU: its refusal, its pure parts, and its sections run on CPU.

The real check needs CUDA (docs/gpu.md). Here: the no-CUDA exit; throughput arithmetic, medians,
ratios and results.md rendered from a results dict; and every section's code path at tiny sizes on
CPU via the test-only `--device cpu`, including checks that the parity and run-directory checks can
fail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prefixlab.tools import gpucheck
from prefixlab.tools.gpucheck import (
    median,
    overall_status,
    ratio,
    render_markdown,
    throughput_ratios,
    timing_summary,
    tokens_per_second,
)

REPO = Path(__file__).resolve().parent.parent


def cpu_context(tmp_path: Path, seconds: float = 120.0, **kwargs) -> gpucheck.CheckContext:
    return gpucheck.CheckContext(device="cpu", sizes=gpucheck.tiny_sizes("cpu"), out_dir=tmp_path,
                                 deadline=time.monotonic() + seconds, **kwargs)


# ---------------------------------------------------------------------------------------------
# Runs in a fresh interpreter: gpucheck without CUDA, the prepared script twice, section 2's worker.
# Each spends seconds importing torch on one core, so the runs the selected tests need all start
# when the first of those tests asks, and each test waits for its own.


def prepared_script(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """.ci/gpucheck OUT ARGS with these environment variables, run from OUT's parent folder."""
    # The script runs `python3`: the interpreter running these tests, also from an unactivated venv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run([str(REPO / ".ci" / "gpucheck"), str(out), *args], cwd=out.parent,
                          env={**os.environ, "PATH": path, **env}, capture_output=True, text=True, timeout=300)


def run_module_without_cuda(tmp: Path) -> tuple[subprocess.CompletedProcess, Path]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA even where this suite runs on a GPU machine
    proc = subprocess.run([sys.executable, "-m", "prefixlab.tools.gpucheck", "--out", str(tmp / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    return proc, tmp / "out"


def run_script_without_cuda(tmp: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    out, batch_out = tmp / "results", tmp / "OUT"
    batch_out.mkdir()
    return prepared_script(out, CUDA_VISIBLE_DEVICES="", OUT=str(batch_out)), out, batch_out


def run_script_without_pytest(tmp: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """On CPU, the check's cheapest section only; pytest blocked by an import hook, not a shadowing
    module: the script puts .whl's packages (which may hold pytest, on a GPU machine) ahead of PYTHONPATH."""
    out, batch_out, blocked = tmp / "results", tmp / "OUT", tmp / "blocked"
    batch_out.mkdir(), blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(
        "import sys\n\n\nclass NoPytest:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pytest':\n"
        "            raise ImportError('No module named pytest (blocked by the test)')\n\n\n"
        "sys.meta_path.insert(0, NoPytest())\n")
    proc = prepared_script(out, "--", "--device", "cpu", "--sections", "generation", OUT=str(batch_out),
                           PYTHONPATH=str(blocked))
    return proc, out, batch_out


def run_e2e_section(tmp: Path) -> tuple[dict, Path]:
    """Section 2 on CPU with a shortened offline preset (8 steps): a real worker run."""
    spec = json.loads((REPO / "presets" / "offline-tiny.json").read_text())
    spec["data"].update(max_train_examples=64, max_eval_examples=8)
    spec["training"].update(max_steps=8, log_interval=2, eval_interval=8, max_length=64)
    spec["generation"].update(max_new_tokens=2, num_prompts=1)
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return gpucheck.run_e2e(cpu_context(tmp, seconds=240, spec_path=spec_path)), tmp / "e2e-run"


# fixture name -> the run it waits for
FRESH_RUNS = {"module_without_cuda": run_module_without_cuda, "script_without_cuda": run_script_without_cuda,
              "script_without_pytest": run_script_without_pytest, "e2e_result": run_e2e_section}


@pytest.fixture(scope="module")
def fresh_runs(request, tmp_path_factory):
    """fresh_runs(name) -> that run's result; the selected tests' runs start together, on first use."""
    pool = ThreadPoolExecutor(max_workers=len(FRESH_RUNS))  # each thread waits on its subprocess
    futures = {}

    def start(name: str) -> Future:
        if name not in futures:
            futures[name] = pool.submit(FRESH_RUNS[name], tmp_path_factory.mktemp(name))
        return futures[name]

    for name in FRESH_RUNS:
        if any(name in item.fixturenames for item in request.session.items if item.module is request.module):
            start(name)
    try:
        yield lambda name: start(name).result()
    finally:
        pool.shutdown(wait=True)  # no run outlives the module


@pytest.fixture(scope="module")
def module_without_cuda(fresh_runs):
    return fresh_runs("module_without_cuda")


@pytest.fixture(scope="module")
def script_without_cuda(fresh_runs):
    return fresh_runs("script_without_cuda")


@pytest.fixture(scope="module")
def script_without_pytest(fresh_runs):
    return fresh_runs("script_without_pytest")


@pytest.fixture(scope="module")
def e2e_result(fresh_runs):
    return fresh_runs("e2e_result")


# ---------------------------------------------------------------------------------------------
# Without CUDA


def assert_no_cuda_message(text: str) -> None:
    assert "no CUDA device:" in text
    assert "torch.cuda.is_available() == False" in text
    assert "docs/gpu.md" in text and "python -m pytest" in text


def test_without_cuda_it_exits_2_with_a_clear_message_and_writes_nothing(module_without_cuda):
    """`python -m prefixlab.tools.gpucheck`; `python -m prefixlab gpucheck` is the prepared script's
    command, checked the same way at the end of this file."""
    proc, out = module_without_cuda
    assert proc.returncode == 2, proc.stderr
    assert_no_cuda_message(proc.stderr)
    assert not out.exists()  # no results file that claims anything


# ---------------------------------------------------------------------------------------------
# Arithmetic


def test_tokens_per_second_is_tokens_over_seconds_and_rejects_nonsense():
    assert tokens_per_second(8 * 128, 0.05) == pytest.approx(20480.0)
    assert tokens_per_second(32 * 128, 2.0) == pytest.approx(2048.0)
    with pytest.raises(ValueError, match=r"seconds=0: a timed step must take a positive time"):
        tokens_per_second(1024, 0)
    with pytest.raises(ValueError, match=r"seconds=-1.0"):
        tokens_per_second(1024, -1.0)
    with pytest.raises(ValueError, match=r"tokens=0: a training step processes at least one token"):
        tokens_per_second(0, 1.0)


def test_median_and_ratio():
    assert median([0.3, 0.1, 0.2]) == 0.2
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError, match="median of no values: the timing loop recorded nothing"):
        median([])
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


def test_timing_summary_uses_the_median_step():
    summary = timing_summary([0.2, 0.1, 0.4, 0.25, 0.5], tokens_per_step=1000, peak_bytes=123)
    assert summary == {"steps": 5, "median_step_s": 0.25, "tokens_per_s": 4000.0, "step_peak_bytes": 123}


def test_throughput_ratios_are_prefixlab_over_peft():
    row = {"prefixlab": {"tokens_per_s": 3000.0, "step_peak_bytes": 100},
           "peft": {"tokens_per_s": 2000.0, "step_peak_bytes": 400}}
    assert throughput_ratios(row) == {"speedup": 1.5, "memory_ratio": 0.25}
    row["peft"]["step_peak_bytes"] = None  # off CUDA there is no memory figure
    assert throughput_ratios(row)["memory_ratio"] is None


# ---------------------------------------------------------------------------------------------
# results.md from a results dict


def fixture_results() -> dict:
    """A results dict shaped like gpucheck's, with numbers chosen so the rendered values are known."""
    mib = 2**20
    return {
        "date": "2026-11-26 15:00 UTC",
        "device": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "memory_gib": 79.1, "bf16": True},
        "versions": {"torch": "2.13.0", "peft": "0.21.2"},
        "budget_s": 330.0, "wall_s": 212.4, "test_run": False,
        "sections": {
            "parity": {"status": "failed", "seconds": 12.5, "problems": ["llama projection=True bf16 weights: logits "
                                                                          "outside tolerance"],
                       "tolerance": {"fp32_atol": 1e-4, "bf16_factor": 1.5, "bf16_eps": 1e-3},
                       "rows": [{"arch": "gpt2", "prefix_projection": False, "mode": "fp32", "err_prefixlab": None,
                                 "err_peft": 3e-7, "ok": True},
                                {"arch": "llama", "prefix_projection": True, "mode": "bf16 weights",
                                 "err_prefixlab": 0.125, "err_peft": 0.0625, "ok": False}],
                       "generation": [{"arch": "gpt2", "prefix_projection": False, "equal": True},
                                      {"arch": "t5", "prefix_projection": True, "equal": False}]},
            "e2e": {"status": "error", "seconds": 3.0, "error": "RuntimeError: the worker wrote no run directory"},
            "throughput": {
                "status": "ok", "seconds": 40.0, "autocast_dtype": "bf16", "resident_model_bytes": 1354 * mib,
                "shape": {"n_embd": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 50257, "seq_len": 128,
                          "num_virtual_tokens": 10, "repeats": 15},
                "rows": [{"prefix_projection": False, "batch_size": 8, "speedup": 99.0,  # stale: must be recomputed
                          "prefixlab": timing_summary([0.025, 0.025, 0.03], 8 * 128, 512 * mib),
                          "peft": timing_summary([0.05, 0.04, 0.05], 8 * 128, 1024 * mib)},
                         {"prefix_projection": True, "batch_size": 32,
                          "prefixlab": timing_summary([0.1], 32 * 128, 3 * mib),
                          "peft": timing_summary([0.2], 32 * 128, 2 * mib)}]},
            "generation": {"status": "ok", "seconds": 9.0, "new_tokens": 32, "prompt_len": 32,
                           "autocast_dtype": "bf16",
                           "rows": [{"batch_size": 1, "base_ms": 200.0, "prefix_ms": 250.0}]},
        },
    }


def test_results_md_renders_each_section_from_the_numbers():
    md = render_markdown(fixture_results())
    lines = md.splitlines()
    assert lines[0] == "# prefixlab GPU check, 2026-11-26 15:00 UTC, NVIDIA H100 80GB HBM3"
    assert "- status: failed (wall 212 s, budget 330 s)" in lines
    assert "- device: capability 9.0, memory_gib 79.1, bf16 True" in lines
    # parity
    assert "| gpt2 | False | fp32 | n/a | 3.00e-07 | yes |" in lines
    assert "| llama | True | bf16 weights | 1.25e-01 | 6.25e-02 | **NO** |" in lines
    assert "Greedy generation (fp32) equal to decoding with PEFT's forward: 1/2; differs: t5 projection=True" in lines
    assert "- problem: llama projection=True bf16 weights: logits outside tolerance" in lines
    # an errored section shows its error, not a table
    assert "## 2. Offline preset end to end: error (3.0 s)" in lines
    assert "error: RuntimeError: the worker wrote no run directory" in lines
    # throughput: 1024 tokens / 0.025 s = 40,960 tok/s; 1024 / 0.05 = 20,480; speedup recomputed (not the stale 99)
    assert "| False | 8 | 40,960 | 20,480 | 2.00x | 512 MiB | 1,024 MiB | 0.50x |" in lines
    assert "| True | 32 | 40,960 | 20,480 | 2.00x | 3 MiB | 2 MiB | 1.50x |" in lines
    assert "99" not in md.split("## 3.")[1].split("## 4.")[0]
    assert "the shared base model is 1,354 MiB" in md
    # generation: 250 / 200 = 1.25x
    assert "| 1 | 200.0 | 250.0 | 1.25x |" in lines


def test_results_md_renders_a_finished_e2e_run():
    results = fixture_results()
    results["sections"] = {"e2e": {
        "status": "failed", "seconds": 41.0, "state": "done", "device": "cuda:0", "mixed_precision": "bf16",
        "wall_time_s": 30.25, "worker_peak_gpu_bytes": None, "device_peak_above_baseline_bytes": 900 * 2**20,
        "memory_released": False, "problems": ["device memory did not return to its baseline after the worker exited"],
        "variants": {"projection": {"first_loss": 5.9, "last_loss": 5.25, "tokens_per_s": 12345.6,
                                    "adapter_dtype": "float32"}}}}
    lines = render_markdown(results).splitlines()
    assert "- run: state done, device cuda:0, mixed precision bf16, wall 30.2 s" in lines
    assert ("- peak GPU memory: worker n/a, device-wide while it ran 900 MiB above the idle baseline; released "
            "after exit: **NO**") in lines
    assert "| projection | 5.900 | 5.250 | 12,346 | float32 |" in lines
    assert "- problem: device memory did not return to its baseline after the worker exited" in lines


def test_results_md_marks_a_test_run_and_a_skipped_section():
    results = fixture_results()
    results["test_run"] = True
    results["sections"] = {"generation": {"status": "skipped", "reason": "the time budget was used up"}}
    md = render_markdown(results)
    assert "these numbers are not a GPU result" in md
    assert "skipped: the time budget was used up" in md


def test_overall_status_is_ok_only_when_every_section_is():
    results = fixture_results()
    assert overall_status(results) == "failed"
    for section in results["sections"].values():
        section["status"] = "ok"
    assert overall_status(results) == "ok"
    assert overall_status({"sections": {}}) == "failed"


def test_write_results_writes_json_and_the_markdown_it_returns(tmp_path):
    results = fixture_results()
    md = gpucheck.write_results(tmp_path / "out", results)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    assert (tmp_path / "out" / "results.md").read_text() == md == render_markdown(results)


# ---------------------------------------------------------------------------------------------
# Arguments and the section runner


def test_sections_run_in_the_checks_order_and_unknown_ones_are_named():
    args = gpucheck.parse_args(["--out", "x", "--sections", "generation,parity"])
    assert args.sections == ["parity", "generation"]
    assert gpucheck.parse_args([]).sections == ["parity", "e2e", "throughput", "generation", "paired"]
    assert gpucheck.parse_args([]).out == Path("gpucheck-results")
    with pytest.raises(argparse.ArgumentTypeError) as err:
        gpucheck.parse_sections("parity,speed")
    assert "unknown section(s) ['speed']; choose from parity, e2e, throughput, generation, paired" in str(err.value)
    assert gpucheck.parse_args(["--budget-s", "120"]).budget_s == 120.0
    for bad in ("0", "-5", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"--budget-s '{bad}': give a positive number"):
            gpucheck.positive_seconds(bad)


def test_a_failing_section_is_recorded_and_a_late_one_skipped(tmp_path, monkeypatch):
    def broken(ctx):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(gpucheck.SECTIONS, "parity", (broken, 0.2))
    ctx = cpu_context(tmp_path)
    result = gpucheck.run_section("parity", ctx, 10.0, time.monotonic() + 10)
    assert result["status"] == "error" and result["error"] == "ZeroDivisionError: division by zero"
    assert any("broken" in line for line in result["traceback"])
    skipped = gpucheck.run_section("parity", ctx, 10.0, time.monotonic() - 1)
    assert skipped["status"] == "skipped" and "time budget" in skipped["reason"]


def test_memory_probes_report_nothing_off_cuda():
    assert gpucheck.step_peak_bytes(lambda: None, "cpu") is None
    with gpucheck.DeviceMemoryPoller("cpu") as poller:
        pass
    assert poller.peak_above_baseline is None and poller.released() is None
    assert gpucheck.autocast_dtype("cpu") == torch.bfloat16


def test_device_memory_poller_arithmetic_with_a_fake_device(monkeypatch):
    """The CUDA-only logic, with cudaMemGetInfo replaced by a script of readings (bytes used)."""
    readings = iter([1000, 1000, 5000, 3000] + [1000] * 1000)
    monkeypatch.setattr(gpucheck, "device_used_bytes", lambda device: next(readings))
    with gpucheck.DeviceMemoryPoller("cuda", interval_s=0.001) as poller:
        while poller.peak < 5000:
            time.sleep(0.001)
    assert poller.baseline == 1000 and poller.peak_above_baseline == 4000
    assert poller.released(wait_s=1.0) is True
    monkeypatch.setattr(gpucheck, "device_used_bytes", lambda device: 1000 + poller.SLACK_BYTES + 1)
    assert poller.released(wait_s=0.3) is False


def test_step_peak_bytes_is_the_peak_above_the_start(monkeypatch):
    monkeypatch.setattr(gpucheck, "synchronize", lambda device: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 100)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 350)
    calls = []
    assert gpucheck.step_peak_bytes(lambda: calls.append(1), "cuda") == 250
    assert calls == [1]


def test_environment_describes_a_cuda_device(monkeypatch):
    from types import SimpleNamespace

    props = SimpleNamespace(name="Fake GPU 80GB", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    device, versions = gpucheck.environment("cuda")
    assert device == {"name": "Fake GPU 80GB", "capability": "9.0", "memory_gib": 80.0, "bf16": True}
    assert versions["torch"] == torch.__version__ and versions["peft"] is not None
    assert gpucheck.autocast_dtype("cuda") == torch.bfloat16
    # A T4 or V100: bf16 only emulated (is_bf16_supported() alone says True); fp16, as the worker picks.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert gpucheck.autocast_dtype("cuda") == torch.float16
    assert gpucheck.environment("cuda")[0]["bf16"] is False


# ---------------------------------------------------------------------------------------------
# The sections' code on CPU at tiny sizes


@pytest.mark.parametrize("arch, projection", [("llama", True), ("t5", False)])
def test_parity_case_passes_for_prefixlab(tmp_path, arch, projection):
    rows, generation = gpucheck.parity_case(arch, projection, cpu_context(tmp_path))
    assert [r["mode"] for r in rows] == ["fp32", "bf16 autocast", "bf16 weights"]
    assert all(r["ok"] for r in rows), rows
    assert rows[0]["err_peft"] <= gpucheck.FP32_ATOL and rows[0]["encoder_device"] == "cpu"
    assert rows[0]["prefix_effect"] > 0.01  # the random prefix moves the logits, so a lost prefix would show
    assert 0 < rows[1]["err_prefixlab"] < 1 and 0 < rows[2]["err_peft"] < 1  # bf16 differs from fp32, a little
    assert generation == {"arch": arch, "prefix_projection": projection, "equal": True}


def test_parity_case_catches_a_wrong_prefix_layout(tmp_path, monkeypatch):
    import prefixlab.core.model

    original = prefixlab.core.model.prefix_key_values

    def keys_and_values_swapped(states, config):  # a plausible bug that shapes and dtypes cannot reveal
        kv = original(states, config)  # (2L, heads, n, head_dim), rows key, value, key, value, ...
        return kv.view(config.num_layers, 2, *kv.shape[1:]).flip(1).reshape(kv.shape)

    monkeypatch.setattr(prefixlab.core.model, "prefix_key_values", keys_and_values_swapped)
    rows, generation = gpucheck.parity_case("gpt2", False, cpu_context(tmp_path))
    assert not rows[0]["ok"] and rows[0]["err_peft"] > 100 * gpucheck.FP32_ATOL


def test_parity_stops_at_its_deadline(tmp_path):
    result = gpucheck.run_parity(cpu_context(tmp_path, seconds=-1))
    assert result["status"] == "failed" and result["rows"] == []
    assert result["problems"][0] == "time budget ran out before gpt2 projection=False"


def test_main_on_cpu_runs_throughput_and_generation_and_writes_both_files(tmp_path, capsys):
    out = tmp_path / "out"
    code = gpucheck.main(["--out", str(out), "--device", "cpu", "--sections", "throughput,generation"])
    results = json.loads((out / "results.json").read_text())
    assert code == 0, results
    assert results["test_run"] is True and list(results["sections"]) == ["throughput", "generation"]
    rows = results["sections"]["throughput"]["rows"]
    assert [(r["prefix_projection"], r["batch_size"]) for r in rows] == [(False, 2), (False, 4), (True, 2), (True, 4)]
    for r in rows:
        for impl in ("prefixlab", "peft"):
            assert r[impl]["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r[impl]["median_step_s"])
            assert r[impl]["steps"] == gpucheck.tiny_sizes("cpu").model.repeats
        assert r["tokens_per_step"] == r["batch_size"] * gpucheck.tiny_sizes("cpu").model.seq_len
        assert r["speedup"] == pytest.approx(r["prefixlab"]["tokens_per_s"] / r["peft"]["tokens_per_s"])
    gen_rows = results["sections"]["generation"]["rows"]
    assert [r["batch_size"] for r in gen_rows] == [1, 2] and all(r["prefix_ms"] > 0 for r in gen_rows)
    printed = capsys.readouterr().out
    assert printed == (out / "results.md").read_text() + "\n"
    assert "these numbers are not a GPU result" in printed


# ---------------------------------------------------------------------------------------------
# Section 2 on CPU: the worker in a subprocess (a fresh run, above), then the run-directory checks


@pytest.mark.slow
def test_e2e_section_trains_both_variants_and_checks_the_run(e2e_result):
    result, run_dir = e2e_result
    assert result["status"] == "ok", result["problems"]
    assert result["state"] == "done" and result["returncode"] == 0
    assert result["device"] == "cpu" and result["mixed_precision"] == "no"  # what precision auto picks on CPU
    assert set(result["variants"]) == {"no_projection", "projection"}
    for v in result["variants"].values():
        assert v["adapter_dtype"] == "float32" and v["last_loss"] < v["first_loss"]
    assert result["memory_released"] is None  # device memory is a CUDA-only measurement


@pytest.mark.slow
def test_run_dir_checks_fail_on_a_half_precision_adapter_and_a_rising_loss(e2e_result, tmp_path):
    _, run_dir = e2e_result
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    weights = copy / "adapters" / "projection" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, weights)
    metrics = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if m.get("variant") == "no_projection" and "loss" in m]
    losses[-1]["loss"] = losses[0]["loss"] + 1.0
    (copy / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    result = gpucheck.check_run_dir(copy, "cpu")
    assert "projection: adapter saved as bfloat16, expected float32 (PEFT's format)" in result["problems"]
    assert any(p.startswith("no_projection: training loss did not fall") for p in result["problems"])
    # The CPU run checked as a GPU one: wrong device, and not the half precision auto picks on CUDA.
    problems = gpucheck.check_run_dir(run_dir, "cuda")["problems"]
    assert problems[1:] == ["trained on 'cpu', expected cuda"]
    assert problems[0] in ("mixed precision 'no', expected 'bf16'", "mixed precision 'no', expected 'fp16'")


# ---------------------------------------------------------------------------------------------
# The prepared script, .ci/gpucheck


def test_the_prepared_script_reports_versions_and_copies_them_to_out_without_cuda(script_without_cuda):
    """.ci/gpucheck, the one command for a GPU machine: without CUDA it stops with the status and the
    message of `python -m prefixlab gpucheck` (running no tests), having written the versions it saw,
    and copies what exists to $OUT."""
    proc, out, batch_out = script_without_cuda
    assert proc.returncode == 2, proc.stdout + proc.stderr
    versions = (out / "versions.txt").read_text()
    assert f"torch {torch.__version__}" in versions and "| cuda " in versions
    for package in ("transformers", "accelerate", "peft"):
        assert f"{package} {metadata.version(package)}" in versions
    assert re.search(r"^pytest \d+\.\d+", versions, flags=re.M)  # this one, or .whl's where it has one
    assert_no_cuda_message((out / "gpucheck.log").read_text())
    assert not (out / "pytest.log").exists() and not (out / "results.json").exists()
    assert sorted(p.name for p in batch_out.iterdir()) == ["gpucheck.log", "versions.txt"]


def test_the_prepared_script_without_pytest_says_how_to_get_it(script_without_pytest):
    """A GPU image may lack pytest: the check still runs (here its cheapest section, on CPU), and the
    tests' log says what to install (status 3: the check passed, the tests did not run)."""
    proc, out, batch_out = script_without_pytest
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "## 4. Generation latency (greedy): ok" in (out / "results.md").read_text()
    log = (batch_out / "pytest.log").read_text()
    assert log.startswith("pytest is not installed, so the tests did not run") and "pip download --no-deps pytest" in log
    assert "No module named pytest" in (out / "versions.txt").read_text()
    assert sorted(p.name for p in batch_out.iterdir()) == ["gpucheck.log", "pytest.log", "results.json", "results.md",
                                                           "versions.txt"]


def test_the_paired_section_runs_bench_paired_per_batch_size_and_renders_its_table(tmp_path, monkeypatch):
    from prefixlab.tools import bench

    calls = []

    def fake(args):
        calls.append((args.batch_size, args.device))
        return {"min_s": {"fused": 0.1, "sequential": 0.2, "peft_two_models": 0.25},
                "ratios": {"fused/sequential": 0.5, "fused/peft_two_models": 0.4, "base_stacked/base_separate": 0.45},
                "paired_memory": {"ratio": 1.5}, "checkpointing": {"ratio": 0.3}}

    monkeypatch.setattr(bench, "run_paired_bench", fake)
    ctx = gpucheck.CheckContext(device="cpu", sizes=gpucheck.tiny_sizes("cpu"), out_dir=tmp_path,
                                deadline=time.monotonic() + 60)
    section = gpucheck.run_paired(ctx)
    assert section["status"] == "ok" and [c[0] for c in calls] == list(ctx.sizes.batch_sizes)
    lines = gpucheck._paired_md(section)
    assert any("| 0.500 | 0.400 | 0.450 | 1.500 | 0.300 |" in line for line in lines)
