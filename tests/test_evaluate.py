"""Scoring a finished run (prefixlab.engine.evaluate) on a tiny run trained in-process: the table it
writes, batched generation equal to the worker's one prompt at a time, and its refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from prefixlab.engine import evaluate
from prefixlab.engine.generation import generate_outputs
from prefixlab.engine.metrics import score
from prefixlab.engine.runs import DONE, RunDir
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.worker import run_worker

VARIANTS = ["no_projection", "projection"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    """A finished 2-step run on e2e-synth, both variants, of the shipped pretrained tiny-gpt2-e2e (the
    random tiny-gpt2 writes only spaces, which would make equal outputs prove little)."""
    spec = ExperimentSpec.from_dict({
        "name": "eval", "model": {"name": "tiny-gpt2-e2e"},
        "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
        "data": {"source": "e2e-synth", "max_train_examples": 8, "max_eval_examples": 2},
        "training": {"learning_rate": 0.05, "max_steps": 2, "batch_size": 4, "max_length": 256,
                     "eval_interval": 2, "log_interval": 1, "seed": 7},
        "generation": {"num_prompts": 1, "max_new_tokens": 12},
    })
    run = RunDir(tmp_path_factory.mktemp("eval") / "run")
    run.write_spec(spec)
    assert run_worker(run.path, progress=False) == DONE
    return run


@pytest.fixture(scope="module")
def result(run) -> dict:
    return evaluate.evaluate_run(run.path, split="test", limit=6, batch_size=4)


def test_writes_the_table_for_base_and_every_variant(run, result):
    written = json.loads(evaluate.evaluation_path(run.path, "test").read_text(encoding="utf-8"))
    assert written == result
    assert (result["split"], result["examples"], result["limit"], result["step"]) == ("test", 6, 6, 2)
    assert list(result["metrics"]) == ["base", *VARIANTS]
    assert all(set(values) == {"bleu", "chrf", "rouge_l", "slot_accuracy"} for values in result["metrics"].values())
    assert result["generation"] == {"strategy": "greedy", "max_new_tokens": 12}
    sources = [o["source"] for o in result["outputs"]]
    assert len(sources) == 6 and all(set(o["outputs"]) == {"base", *VARIANTS} for o in result["outputs"])
    for name, values in result["metrics"].items():  # the table is metrics.score of the written outputs
        predictions = [o["outputs"][name] for o in result["outputs"]]
        assert values == pytest.approx(dict(score(predictions, [o["reference"] for o in result["outputs"]], sources)))
        assert set(result["slot_accuracy_by_key"][name]) >= {"name"}
    assert "base" in evaluate.format_table(result) and "slot_accuracy" in evaluate.format_table(result)


def test_the_split_is_read_whole_not_capped_by_the_spec(run):
    spec = run.read_spec()
    assert spec.data.max_eval_examples == 2
    assert len(evaluate.split_examples(spec, "test")) == 200
    assert len(evaluate.split_examples(spec, "validation", limit=7)) == 7


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_outputs_equal_the_workers_one_prompt_at_a_time(run, strategy):
    """Prompts of different lengths, left-padded in batches of 2 (a short last batch): every text equals
    what generation.generate_outputs, the worker's and the page's function, gives for that prompt alone."""
    spec = run.read_spec()
    spec = dataclasses.replace(spec, generation=dataclasses.replace(spec.generation, strategy=strategy,
                                                                    num_beams=2, max_new_tokens=12))
    examples = evaluate.split_examples(spec, "test", limit=5)
    sources = [e["source"] for e in examples]
    assert len({len(s) for s in sources}) > 3
    model, tokenizer, task_type, _ = evaluate.load_run_models(run, VARIANTS, "cpu")
    batched = evaluate.generate_split(model, tokenizer, task_type, spec, sources, VARIANTS, torch.device("cpu"),
                                      batch_size=2)
    alone = [generate_outputs(model, tokenizer, task_type, spec, s, VARIANTS, torch.device("cpu")) for s in sources]
    assert batched == {name: [texts[name] for texts in alone] for name in ["base", *VARIANTS]}
    assert all(len(set(texts)) > 1 and all(text.strip() for text in texts) for texts in batched.values())


def test_refusals(run, tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'meteor'"):
        evaluate.evaluate_run(run.path, metrics=["meteor"])
    with pytest.raises(ValueError, match="split must be one of train, validation, test, got 'dev'"):
        evaluate.evaluate_run(run.path, split="dev")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        evaluate.evaluate_run(run.path, limit=0)
    with pytest.raises(ValueError, match="no spec.json here"):
        evaluate.evaluate_run(tmp_path)
    untrained = RunDir(tmp_path / "untrained")
    untrained.write_spec(run.read_spec())
    with pytest.raises(ValueError, match="run untrained has no saved adapter to evaluate"):
        evaluate.evaluate_run(untrained.path)
    assert not evaluate.evaluation_path(untrained.path, "test").exists()


# --- the worker's task metrics at every evaluation (training.metric_examples, training.metrics) ---------


def test_the_worker_scores_every_variant_at_every_evaluation_and_the_base_at_step_0(run):
    """metrics.jsonl: base at step 0 only; each variant at steps 0 and 2 on the run's 2 validation
    examples; summary.json keeps the last values and the time they took."""
    lines = [m for m in run.read_metrics() if "bleu" in m]
    assert sorted((m["variant"], m["step"]) for m in lines) == sorted(
        [("base", 0)] + [(v, s) for v in VARIANTS for s in (0, 2)])
    assert all(m["metric_examples"] == 2 and set(m) >= {"bleu", "chrf", "rouge_l", "slot_accuracy"} for m in lines)
    summary = run.read_summary()
    last = {m["variant"]: {k: m[k] for k in ("bleu", "chrf", "rouge_l", "slot_accuracy")} for m in lines if m["step"] == 2}
    assert {v: summary["variants"][v]["metrics"] for v in VARIANTS} == last
    assert all(summary["variants"][v]["metrics_step"] == 2 for v in VARIANTS)
    assert summary["base_metrics"] == {k: v for k, v in lines[0].items() if k in last["projection"]}
    assert summary["metric_examples"] == 2 and 0 < summary["metric_seconds"] < summary["wall_time_s"]
    assert summary["metric_share"] == pytest.approx(summary["metric_seconds"] / summary["wall_time_s"], abs=1e-3)


def test_the_workers_last_metrics_equal_evaluate_on_the_same_examples(run):
    """The same adapters (step 2), the same first 2 validation examples, the same generation: the
    worker's final numbers are `evaluate`'s, so the live chart and the evaluation table agree."""
    result = evaluate.evaluate_run(run.path, split="validation", limit=2)
    summary = run.read_summary()
    assert {v: result["metrics"][v] for v in VARIANTS} == {v: summary["variants"][v]["metrics"] for v in VARIANTS}
    assert result["metrics"]["base"] == summary["base_metrics"]
    assert max(result["metrics"]["projection"].values()) > 0  # not all zeros: a comparison that could fail


def test_the_comparison_table_has_the_metrics_and_a_base_row(run):
    from prefixlab.views import tables

    rows = tables.comparison_table(run.path)
    assert [r["variant"] for r in rows] == ["base", *VARIANTS]
    summary = run.read_summary()
    for row in rows[1:]:
        assert row["bleu"] == round(summary["variants"][row["variant"]]["metrics"]["bleu"], 1)
    assert rows[0]["trainable"] is None and rows[0]["slot_accuracy"] == round(summary["base_metrics"]["slot_accuracy"], 1)


def _tiny_spec(name: str, **training) -> ExperimentSpec:
    return ExperimentSpec.from_dict({
        "name": name, "model": {"name": "tiny-gpt2"},
        "prefix": {"num_virtual_tokens": 3, "encoder_hidden_size": 8},
        "data": {"source": "e2e-synth", "max_train_examples": 12, "max_eval_examples": 3},
        "training": {"learning_rate": 0.05, "max_steps": 3, "batch_size": 4, "max_length": 64,
                     "eval_interval": 1, "log_interval": 1, "seed": 3, **training},
        "generation": {"num_prompts": 1, "max_new_tokens": 4},
    })


def test_scoring_leaves_training_as_it_was(tmp_path):
    """Generation draws nothing from the training's random state: tiny-gpt2 trains with dropout, and
    a run that scores at every step has the losses and adapters of one that scores nothing."""
    import safetensors.torch

    runs = {}
    for n in (0, 3):
        run = RunDir(tmp_path / f"m{n}")
        run.write_spec(_tiny_spec(f"m{n}", metric_examples=n))
        assert run_worker(run.path, progress=False) == DONE
        runs[n] = run
    assert run.read_spec().model.name == "tiny-gpt2"
    losses = {n: [(m["variant"], m["step"], m.get("loss"), m.get("eval_loss")) for m in r.read_metrics()
                  if "loss" in m or "eval_loss" in m] for n, r in runs.items()}
    assert losses[0] == losses[3]
    assert not any("bleu" in m for m in runs[0].read_metrics()) and runs[0].read_summary()["base_metrics"] is None
    for variant in VARIANTS:
        a, b = (safetensors.torch.load_file(str(r.adapter_path(variant) / "adapter_model.safetensors"))
                for r in runs.values())
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_without_validation_examples_says_so(tmp_path):
    """Fewer than 10 examples in a file: no validation split is held out, so no validation loss and no
    task metrics, and the log says why instead of leaving the charts silently empty."""
    data = tmp_path / "few.jsonl"
    data.write_text("".join(json.dumps({"source": f"name[A{i}]", "target": f"A{i} is here."}) + "\n"
                            for i in range(6)), encoding="utf-8")
    spec = dataclasses.replace(_tiny_spec("noval"), data=dataclasses.replace(_tiny_spec("x").data, source=str(data)))
    run = RunDir(tmp_path / "run")
    run.write_spec(spec)
    assert run_worker(run.path, progress=False) == DONE
    assert "has no validation examples: no validation loss and no task metrics" in run.log_path.read_text()
    assert not any("eval_loss" in m or "bleu" in m for m in run.read_metrics())


def test_train_prints_the_metrics_table_and_evaluate_writes_its_own(run, tmp_path, capsys):
    from prefixlab.cli import main, print_metrics

    print_metrics(run)
    out = capsys.readouterr().out
    assert "task metrics on the first 2 validation examples" in out
    assert all(name in out for name in ("base (step 0)", "no_projection (step 2)", "projection (step 2)", "slot_accuracy"))
    assert main(["evaluate", str(run.path), "--split", "validation", "--limit", "3", "--metrics", "bleu,chrf"]) == 0
    out = capsys.readouterr()
    assert "validation split, 3 examples, step 2:" in out.out and "rouge_l" not in out.out
    assert "evaluation-validation.json" in out.err
    assert json.loads(evaluate.evaluation_path(run.path, "validation").read_text())["examples"] == 3
    assert main(["evaluate", str(run.path), "--metrics", ""]) == 2
    assert "unknown metric ''" in capsys.readouterr().err


def test_evaluate_scores_the_fine_tuned_model_of_a_run_that_has_one(tmp_path):
    """A run trained with the fine_tune baseline: evaluate loads its whole model (runs/<id>/models)
    beside the adapters, and scores what it generates like the others."""
    spec = _tiny_spec("ft", metric_examples=0, fine_tune_learning_rate=0.05)
    spec = ExperimentSpec.from_dict({**spec.to_dict(), "variants": ["projection", "fine_tune"]})
    run = RunDir(tmp_path / "run")
    run.write_spec(spec)
    assert run_worker(run.path, progress=False) == DONE
    assert run.trained_models() == ["fine_tune"]
    result = evaluate.evaluate_run(run.path, split="validation", limit=3, batch_size=2)
    assert list(result["metrics"]) == ["base", "projection", "fine_tune"]
    tuned = evaluate.load_fine_tuned(run.model_path("fine_tune"), "CAUSAL_LM")
    model, tokenizer, task_type, _ = evaluate.load_run_models(run, ["projection"], "cpu")
    alone = generate_outputs(model, tokenizer, task_type, spec, result["outputs"][0]["source"], ["projection"],
                             torch.device("cpu"), models={"fine_tune": tuned})
    assert result["outputs"][0]["outputs"] == alone
