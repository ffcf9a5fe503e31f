"""`python -m prefixlab ...` through `main(argv)` in-process, and the engine benchmark's pieces."""

from __future__ import annotations

import json
import re

import pytest

from prefixlab import get_peft_model
from prefixlab.__main__ import CliError, _import, main
from prefixlab.bench_engine import bench_spec, compare, measure_one
from prefixlab.experiment import ExperimentSpec
from prefixlab.runs import RunDir
from prefixlab.tiny import tiny_model
from prefixlab.train import run_worker


def tiny_spec_dict(**data) -> dict:
    return {
        "name": "cli", "model": {"name": "tiny-gpt2"},
        "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
        "data": {"source": "e2e-synth", "max_train_examples": 8, "max_eval_examples": 4, **data},
        "training": {"learning_rate": 0.2, "max_steps": 2, "batch_size": 4, "max_length": 64,
                     "eval_interval": 2, "log_interval": 1},
        "generation": {"num_prompts": 1, "max_new_tokens": 6},
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("cli") / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict()))
    assert run_worker(run.path, progress=False) == "done"
    return run


def test_inspect_counts_match_the_real_model(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["inspect", str(spec_path)]) == 0
    out = capsys.readouterr().out
    spec = ExperimentSpec.from_dict(tiny_spec_dict())
    for variant in spec.variants:
        prefix = variant.prefix.to_json_dict() | {"task_type": "CAUSAL_LM"}
        model = get_peft_model(tiny_model("gpt2"), type(variant.prefix).from_dict(prefix))
        trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
        assert re.search(rf"^{variant.name}: {trainable:,} trainable", out, re.M), out
    base = sum(p.numel() for p in tiny_model("gpt2").parameters())
    assert f"{base:,} base parameters" in out


def test_inspect_a_model_without_a_spec(capsys):
    assert main(["inspect", "--model", "tiny-llama", "--prefix-length", "5"]) == 0
    out = capsys.readouterr().out
    # Grouped-query attention: the prefix holds 2 key/value heads x head_dim 16 = 32 per layer.
    assert "no_projection: 640 trainable" in out and "prefix 5 x 2 layers x 2 x 32" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train"], "train needs SPEC.json, --run-dir DIR"),
        (["train", "--run-dir", "{tmp}/empty"], "spec.json does not exist; pass SPEC.json"),
        (["train", "{tmp}/bad.json"], "not valid JSON"),
        (["train", "{tmp}/missing.json"], "cannot read spec file"),
        (["inspect"], "inspect needs SPEC.json or --model NAME"),
        (["inspect", "--model", "tiny-gpt2", "--prefix-length", "0"], "num_virtual_tokens=0"),
        (["generate", "--run-dir", "{tmp}/empty", "--prompt", "x"], "spec.json does not exist"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "empty").mkdir()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_train_run_dir_with_failing_data_exits_1(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict(source=str(tmp_path / "missing.jsonl"))))
    assert main(["train", "--run-dir", str(run.path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "failed: " in err and "missing.jsonl" in err
    assert run.read_status()["state"] == "failed"


def test_train_refuses_to_overwrite_a_finished_run(finished_run, tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["train", str(spec_path), "--run-dir", str(finished_run.path)]) == 2
    assert "already holds a run (done)" in capsys.readouterr().err


def test_generate_from_saved_adapters_matches_the_workers_samples(finished_run, capsys):
    sample = finished_run.read_samples()[0]
    assert main(["generate", "--run-dir", str(finished_run.path), "--prompt", sample["prompt"]]) == 0
    out = capsys.readouterr().out
    # Adapters reloaded from disk (PEFT format) generate what the worker's in-memory ones did.
    for name, text in sample["outputs"].items():
        assert f"{name:>16}: {text}\n" in out, (name, text, out)


def test_page_generation_matches_the_workers_samples(finished_run):
    from prefixlab.ui.generate import generate_all

    sample = finished_run.read_samples()[0]
    seen = []
    rows = generate_all(finished_run.path, sample["prompt"], on_progress=lambda f, t: seen.append(t))
    # The page's "generate with every variant" box shows what the worker wrote for the same prompt.
    assert dict(rows) == sample["outputs"]
    assert [name for name, _ in rows][0] == "base" and len(seen) == 2


def test_generate_before_any_checkpoint_says_so(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict()))
    assert main(["generate", "--run-dir", str(run.path), "--prompt", "x"]) == 2
    assert "holds no adapters yet" in capsys.readouterr().err


def test_missing_optional_module_is_a_clear_error():
    with pytest.raises(CliError, match="the GPU check is not available .*prefixlab.no_such_module is missing"):
        _import("prefixlab.no_such_module", "main", "the GPU check")
    with pytest.raises(CliError, match="prefixlab.runs has no main"):
        _import("prefixlab.runs", "main", "x")


def test_engine_bench_pieces():
    assert bench_spec("tiny-gpt2", 3, 2, 64, "paired").variant_names == ["no_projection", "projection"]
    single = bench_spec("tiny-gpt2", 3, 2, 64, "projection")
    assert single.variant_names == ["projection"] and single.variants[0].prefix.prefix_projection
    result = measure_one(bench_spec("tiny-gpt2", 2, 2, 64, "paired"))
    assert result["steps"] == 2 and result["variants"] == 2 and result["tokens"] > 0 and result["peak_mb"] > 0
    one = {"tokens": 100, "setup_s": 1.0, "train_s": 1.0, "tokens_per_s": 100.0, "train_cpu_s": 2.0,
           "tokens_per_cpu_s": 50.0, "peak_mb": 10.0}
    both = {"tokens": 200, "setup_s": 1.0, "train_s": 2.0, "tokens_per_s": 100.0, "train_cpu_s": 2.0,
            "tokens_per_cpu_s": 100.0, "peak_mb": 12.0}
    ratios = compare({"paired": both, "no_projection": one, "projection": one})
    assert ratios == {"throughput_ratio": 1.0, "cpu_throughput_ratio": 2.0, "wall_time_ratio": 0.75,
                      "memory_ratio_vs_both": 0.6, "memory_ratio_vs_larger": 1.2}


def test_gpucheck_arguments_pass_through(monkeypatch):
    import prefixlab.gpucheck

    seen = []
    monkeypatch.setattr(prefixlab.gpucheck, "main", lambda argv: seen.append(argv) or 7)
    assert main(["gpucheck", "--out", "results", "--sections", "parity"]) == 7
    assert main(["gpucheck", "--", "--help"]) == 7
    assert seen == [["--out", "results", "--sections", "parity"], ["--help"]]


def test_core_bench_without_peft_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # import peft now fails
    assert main(["bench", "core", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the core benchmark times prefixlab against PEFT, which is not installed")
    assert "pip install -r tests/requirements.txt" in err
