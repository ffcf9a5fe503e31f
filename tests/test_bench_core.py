"""The core benchmark's output structure (--quick); timings are reported by the bench, never asserted."""

from __future__ import annotations

import json
import math

import pytest

from prefixlab.tools.bench import BenchArgs, build_parser, core_args, format_core_report, main, probe_peak_memory

CONTENDERS = {"floor", "prefixlab/no_projection", "peft/no_projection", "prefixlab/projection", "peft/projection"}


def test_quick_run_reports_every_contender_ratio_and_memory(capsys, tmp_path):
    assert main(["core", "--quick", "--no-peak-memory", "--repeats", "2", "--json", str(tmp_path / "bench.json")]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())["core"]
    clocks = ("wall", "cpu") if result["device"] == "cpu" else ("wall",)
    assert tuple(result["median_s"]) == clocks
    for clock in clocks:
        assert set(result["median_s"][clock]) == set(result["min_s"][clock]) == CONTENDERS
        assert set(result["ratios_of_min"][clock]) == set(result["ratios"][clock])
        assert set(result["ratios"][clock]) == {
            "prefixlab/peft no_projection", "prefixlab/floor no_projection",
            "prefixlab/peft projection", "prefixlab/floor projection",
        }
        assert all(math.isfinite(r) and r > 0 for r in result["ratios"][clock].values())
    assert all(len(t["wall"]) == len(t["cpu"]) == 2 for t in result["times_s"].values())
    assert set(result["prefix_path_min_s"]) == CONTENDERS - {"floor"}
    held = result["memory"]["weights_held_mib"]
    # one base plus two adapters holds less than two bases with one adapter each
    assert held["prefixlab_two_adapters_one_base"] < held["peft_two_models"]
    printed = capsys.readouterr().out
    for name in CONTENDERS:
        assert name in printed
    assert "ratio prefixlab/peft projection" in printed and "target <= 1.10" in printed
    assert "the prefix's share alone" in printed


def test_peak_memory_probe_and_report_line():
    args = BenchArgs.quick()
    for setup in ("prefixlab_two_adapters_one_base", "peft_two_models"):
        probe = probe_peak_memory(setup, args)
        assert probe["measure"] in ("cpu_peak_rss_above_baseline", "cuda_max_allocated")
        # in-process (here) the peak is the test process's; only its type is checked. The bench runs
        # each probe in a fresh process, where it is the setup's peak.
        assert math.isfinite(probe["peak_mib"])
    with pytest.raises(ValueError, match="setup='both'"):
        probe_peak_memory("both", args)
    result = {"args": vars(args), "device": "cpu", "median_s": {"wall": {"floor": 0.001}}, "ratios": {"wall": {}},
              "memory": {"weights_held_mib": {"prefixlab_two_adapters_one_base": 1.0, "peft_two_models": 2.0},
                         "peak": {"prefixlab_two_adapters_one_base": probe, "peft_two_models": probe},
                         "peak_ratio_prefixlab/peft": 1.0}}
    assert "peak (" in format_core_report(result)


def test_default_arguments_are_the_issue_s_configuration():
    def parse(*argv):
        return core_args(build_parser().parse_args(["core", *argv]))

    args = parse()
    assert (args.n_layer, args.n_embd, args.n_head, args.vocab_size) == (12, 768, 12, 50257)  # GPT-2 small
    assert (args.batch_size, args.seq_len, args.num_virtual_tokens) == (8, 128, 10)
    assert parse("--quick").n_embd < 768 and parse("--quick", "--repeats", "5").repeats == 5
