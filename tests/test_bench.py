"""The benchmarks' machinery (prefixlab/tools/bench.py): the startup table and the engine report.
Timings are what the benchmarks report, never what these tests assert. The core benchmark's
output: tests/test_bench_core.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import time

import pytest

from conftest import leftover_processes
from prefixlab import cli
from prefixlab.tools import bench
from prefixlab.tools.bench import STARTUP_COMMANDS, StartupCommand, format_startup_table, run_startup_bench

# A stand-in for the page: starts a child of its own, prints the line the page prints, then waits.
SERVER = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
          "sys.argv[1]]); print('prefixlab running at http://127.0.0.1:' + sys.argv[2], flush=True); time.sleep(60)")


def test_the_startup_commands_and_their_budgets():
    assert [(c.name, bench.shown(c), c.budget_s, c.ready) for c in STARTUP_COMMANDS] == [
        ("runs", "python -m prefixlab runs --runs-dir RUNS", 1.5, None),
        ("inspect", "python -m prefixlab inspect presets/offline-tiny.json", 1.5, None),
        ("generate", "python -m prefixlab generate --run-dir RUNS/startup --prompt 'name[Aromi] | food[Thai]' "
                     "--max-new-tokens 20", 5.0, None),
        ("app", "python app.py --port PORT --runs-dir EMPTY", 10.0, "prefixlab running at"),
    ]
    spec = bench.startup_spec()  # presets/offline-pretrained.json, cut short
    assert spec["model"] == {"name": "tiny-gpt2-e2e"} and "_command" not in spec
    assert {k: spec["training"][k] for k in ("max_steps", "eval_interval", "warmup_steps")} == {
        "max_steps": 4, "eval_interval": 4, "warmup_steps": 0}
    assert (spec["generation"]["num_prompts"], spec["generation"]["max_new_tokens"]) == (1, 20)


def test_startup_bench_prints_the_table_and_writes_json_for_a_real_command(tmp_path, capsys):
    path = tmp_path / "startup.json"
    assert bench.main(["startup", "--quick", "--only", "inspect", "--json", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("startup: cold start of each command as a subprocess, median of 1 run(s) (python ")
    assert lines[1].split() == ["command", "median", "s", "budget", "s", "ratio"]
    assert len(lines) == 4 and lines[2].startswith("python -m prefixlab inspect presets/offline-tiny.json  ")
    assert lines[3].startswith("RUNS: a runs folder holding one finished 4-step run of tiny-gpt2-e2e")
    assert re.fullmatch(r"\d+\.\d\d +1\.50 +\d+\.\d\dx", lines[2].split("offline-tiny.json")[1].strip())
    row, = json.loads(path.read_text())["startup"]["rows"]
    assert (row["name"], row["budget_s"], len(row["seconds"]), row["until"]) == ("inspect", 1.5, 1, None)
    assert row["ratio"] == pytest.approx(row["median_s"] / row["budget_s"])


def test_startup_machinery_times_each_round_and_ends_a_server_with_its_children(tmp_path):
    commands = (StartupCommand("quick", ("-c", "print('done')"), 2.0),
                StartupCommand("server", ("-c", SERVER, str(tmp_path), "{port}"), 4.0, ready="prefixlab running at"))
    result = run_startup_bench(repeats=2, commands=commands)
    assert [(r["name"], len(r["seconds"]), r["budget_s"]) for r in result["rows"]] == [("quick", 2, 2.0),
                                                                                    ("server", 2, 4.0)]
    deadline = time.monotonic() + 5
    while leftover_processes(os.getpid(), str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILLed: gone in a moment
    assert leftover_processes(os.getpid(), str(tmp_path)) == {}  # the server and the child it started
    lines = format_startup_table(result).splitlines()
    assert lines[0].startswith("startup: cold start of each command as a subprocess, median of 2 run(s)")
    assert lines[2].startswith(shlex.join(["python", "-c", "print('done')"]) + "  ")
    assert lines[3].startswith("python -c ") and "(until it prints its URL)" in lines[3]
    assert len({len(line) for line in lines[1:4]}) == 1  # aligned columns


def test_a_failing_command_or_a_server_that_never_comes_up_is_an_error_with_its_output():
    with pytest.raises(RuntimeError, match=r"exited with status 3 \(limit 300 s\):\noops"):
        run_startup_bench(1, commands=(StartupCommand("bad", ("-c", "print('oops'); raise SystemExit(3)"), 1.0),))
    server = StartupCommand("app", ("-c", "print('starting')"), 1.0, ready="prefixlab running at")
    with pytest.raises(RuntimeError, match=r"never printed 'prefixlab running at' \(limit 300 s\):\nstarting"):
        run_startup_bench(1, commands=(server,))
    with pytest.raises(ValueError, match=r"unknown command\(s\) \['web'\]; choose from runs, inspect, generate, app"):
        run_startup_bench(1, only=["web"])


def test_the_cli_passes_the_benchmark_and_its_options_on(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench"]) == 0
    assert cli.main(["bench", "startup", "--quick", "--json", "out.json"]) == 0
    assert seen == [["all"], ["startup", "--quick", "--json", "out.json"]]


def test_engine_report_from_its_numbers():
    one = {"tokens": 100, "setup_s": 1.0, "train_s": 1.0, "tokens_per_s": 100.0, "train_cpu_s": 2.0,
           "tokens_per_cpu_s": 50.0, "peak_mb": 10.0, "device": "cpu"}
    both = {**one, "tokens": 200, "train_s": 2.0, "tokens_per_cpu_s": 100.0, "peak_mb": 12.0}
    results = {"paired": both, "no_projection": one, "projection": one}
    report = bench.format_engine_report({"settings": {"model": "tiny-gpt2", "steps": 10, "batch_size": 8,
                                                      "max_length": 128, "repeats": 1},
                                         "results": results, "ratios": bench.compare(results)})
    lines = report.splitlines()
    assert lines[0] == "engine bench: tiny-gpt2, 10 steps, batch 8, max_length 128, device cpu, best of 1 round(s)"
    assert lines[2].split() == ["paired", "(both,", "lockstep)", "100", "100", "1.00", "2.00", "12.0"]
    assert "wall time paired / two runs in turn:     0.75x" in lines
    assert "peak memory paired / two runs at once:   0.60x (peak RSS incl. runtime)" in lines



def test_page_bench_times_ticks_of_many_viewers_against_a_real_page_and_stops_it(tmp_path, monkeypatch):
    """A short run of `bench page` (2 viewers, 3 s): the page on a free port over a fake finished run
    and a running one, ticks through the queue API, the numbers, and nothing left running."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the bench's runs folder and the page's own folder
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    result = bench.run_page_bench(viewers=2, seconds=3.0)
    assert result["errors"] == [] and result["calls"] >= 4 and result["viewers"] == 2
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"]
    lines = bench.format_page_report(result).splitlines()
    assert lines[0].startswith("page: 2 viewers of one running run, each ticking every 1 s for 3 s through the queue API")
    assert re.fullmatch(r"tick latency: p50 \d+\.\d{3} s, p95 \d+\.\d{3} s, max \d+\.\d{3} s over \d+ calls", lines[1])
    deadline = time.monotonic() + 5
    while leftover_processes(os.getpid(), str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover_processes(os.getpid(), str(tmp_path)) == {}
    assert list(tmp_path.iterdir()) == []  # its folder and the page's are gone


def test_the_page_bench_s_fake_runs_read_as_one_finished_and_one_running(tmp_path):
    from prefixlab.engine.runs import JobQueue

    finished, running = bench.write_fake_runs(tmp_path, logged=30)
    states = {info.run_id: info.state for info in JobQueue(tmp_path).list_runs()}
    assert states == {finished: "done", running: "running"}


def test_the_cli_offers_the_page_bench(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "page", "--quick"]) == 0 and seen == [["page", "--quick"]]
    ns = bench.build_parser().parse_args(["page", "--viewers", "5", "--seconds", "2"])
    assert (ns.which, ns.viewers, ns.seconds) == ("page", 5, 2.0)


def test_the_paired_benchmark_times_every_contender_and_probes_checkpointing(monkeypatch):
    """The machinery only (tiny sizes, one repeat): fused, sequential and two PEFT models are timed
    in one interleaved run, the ratios come from the same run, and the checkpointing probe reports a
    peak for each mode. No timing is asserted."""
    from prefixlab.tools import bench

    calls = []
    monkeypatch.setattr(bench, "_in_child", lambda function, mode, args: calls.append((mode, args["seq_len"]))
                        or {"peak_mib": 10.0 if mode == "plain" else 4.0, "measure": "test"})
    result = bench.run_paired_bench(bench.BenchArgs.quick(repeats=1, warmup=0))
    assert set(result["min_s"]) == {"fused", "sequential", "base_stacked", "base_separate", "peft_two_models"}
    assert result["ratios"]["fused/sequential"] == result["min_s"]["fused"] / result["min_s"]["sequential"]
    bound = result["min_s"]["base_stacked"] / result["min_s"]["base_separate"]
    assert result["ratios"]["base_stacked/base_separate"] == bound
    # both variants' step fused and one pass each at the bench's length, one variant's at 4x it
    assert calls == [("fused", 16), ("sequential", 16), ("plain", 64), ("checkpointing", 64)]
    assert result["checkpointing"]["ratio"] == 0.4 and result["paired_memory"]["ratio"] == 1.0
    report = bench.format_paired_report(result)
    assert "ratio fused/sequential" in report and "checkpointing 4.0 MiB" in report
    assert "ratio base_stacked/base_separate" in report and "fused 4.0 MiB, sequential 4.0 MiB" in report
    # The probe itself, in this process: every mode runs and reports a peak; a wrong mode is named.
    for mode in ("checkpointing", "fused"):
        probe = bench._step_memory_probe(mode, bench.BenchArgs.quick())
        assert probe["peak_mib"] >= 0 and probe["measure"].endswith("above_the_model")
    with pytest.raises(ValueError, match="mode='fast'"):
        bench._step_memory_probe("fast", bench.BenchArgs.quick())


def test_step_memory_probes_in_a_fresh_process_on_a_cpu_and_in_this_one_on_cuda(monkeypatch):
    """A CPU's peak resident memory is the process's, so each probe needs its own process; CUDA's
    allocator counts the step alone, and spawning would pay CUDA's start-up per probe."""
    import torch

    from prefixlab.tools import bench

    where = []
    monkeypatch.setattr(bench, "_in_child", lambda function, mode, args: where.append(("child", mode)) or {})
    monkeypatch.setattr(bench, "_step_memory_probe", lambda mode, args: where.append(("here", mode)) or {})
    bench._step_memory("fused", bench.BenchArgs.quick(device="cpu"))
    monkeypatch.setattr(bench.BenchArgs, "resolved_device", lambda self: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: where.append(("released", None)))
    bench._step_memory("plain", bench.BenchArgs.quick())
    assert where == [("child", "fused"), ("here", "plain"), ("released", None)]
