"""views/tables.py: run directory -> comparison table and output grid; engine.checks' parameter accounting vs
real models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from prefixlab.views import tables as compare
from prefixlab.core.config import PrefixTuningConfig
from prefixlab.engine import checks
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.runs import RunDir, append_jsonl, atomic_write_json


def _spec(model="tiny-gpt2", n=4):
    return ExperimentSpec.from_dict({"name": "fixture", "model": {"name": model},
                                     "prefix": {"num_virtual_tokens": n, "encoder_hidden_size": 16}})


def write_run(path, *, finished: bool, samples=None):
    run = RunDir(path)
    run.write_spec(_spec())
    atomic_write_json(run.status_path, {"state": "done" if finished else "running", "step": 4, "total_steps": 4})
    for variant, losses in (("no_projection", [5.0, 4.0]), ("projection", [6.0, 3.0])):
        for step, (loss, speed) in enumerate(zip(losses, [100.0, 300.0]), start=1):
            append_jsonl(run.metrics_path, {"variant": variant, "step": step, "epoch": 0.5 * step, "loss": loss,
                                            "lr": 1e-3, "tokens_per_s": speed, "time": 1000.0 + 2 * step})
        append_jsonl(run.metrics_path, {"variant": variant, "step": 2, "eval_loss": losses[-1] + 0.5, "time": 1005.0})
    for sample in samples or []:
        append_jsonl(run.samples_path, sample)
    if finished:
        atomic_write_json(run.summary_path, {
            "variants": {
                "no_projection": {"trainable": 2048, "stored": 2048, "total": 12048, "formula": "n*out",
                                  "final_train_loss": 3.9, "final_eval_loss": 4.4, "tokens_per_s": 150.0},
                "projection": {"trainable": 5000, "stored": 2048, "total": 15000, "formula": "...",
                               "final_train_loss": 2.9, "final_eval_loss": 3.4, "tokens_per_s": 120.0},
            },
            "steps": 4, "total_steps": 4, "wall_time_s": 12.345,
        })
    return run


def test_finished_run_table_comes_from_summary(tmp_path):
    write_run(tmp_path / "run", finished=True)
    rows = compare.comparison_table(tmp_path / "run")
    assert [r["variant"] for r in rows] == ["no_projection", "projection"]
    assert rows[1] == {"variant": "projection", "trainable": 5000, "total": 15000, "trainable %": 33.3333,
                       "stored": 2048, "train loss": 2.9, "val loss": 3.4, "tokens/s": 120.0,
                       "wall time (s)": 12.3}
    assert list(rows[0]) == list(compare.COMPARISON_COLUMNS)


def test_running_run_table_comes_from_metrics_and_accounting(tmp_path):
    write_run(tmp_path / "run", finished=False)
    rows = {r["variant"]: r for r in compare.comparison_table(tmp_path / "run")}
    live = rows["projection"]
    assert (live["train loss"], live["val loss"], live["tokens/s"], live["wall time (s)"]) == (3.0, 3.5, 200.0, 3.0)
    expected = checks.check(_spec()).rows()
    for row in expected:
        assert rows[row["variant"]]["trainable"] == row["trainable"]
        assert rows[row["variant"]]["stored"] == row["stored"]
        assert rows[row["variant"]]["total"] == row["total"]


def test_comparison_rows_without_anything_logged_are_empty_not_errors():
    rows = compare.comparison_rows(["a"], [], None)
    assert rows == [dict.fromkeys(compare.COMPARISON_COLUMNS) | {"variant": "a"}]


def test_output_grid_columns_prompt_reference_base_then_variants(tmp_path):
    samples = [
        {"prompt": "name[A]", "reference": "A is a pub.", "outputs": {"base": "xx", "no_projection": "A pub",
                                                                     "projection": "A is a pub"}},
        {"prompt": "name[B]", "reference": None, "outputs": {"base": "yy", "no_projection": "B",
                                                             "projection": "B is"}},
    ]
    write_run(tmp_path / "run", finished=True, samples=samples)
    headers, rows = compare.output_grid(tmp_path / "run")
    assert headers == ["prompt", "reference", "base", "no_projection", "projection"]
    assert rows == [["name[A]", "A is a pub.", "xx", "A pub", "A is a pub"], ["name[B]", "", "yy", "B", "B is"]]
    # Typed prompts have no reference: no reference column at all.
    headers, rows = compare.output_grid_rows([{"prompt": "p", "reference": None, "outputs": {"base": "b", "v": "o"}}],
                                             ["v"])
    assert headers == ["prompt", "base", "v"] and rows == [["p", "b", "o"]]


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
@pytest.mark.parametrize("projection", [False, True])
def test_accounting_without_weights_equals_the_built_model(model_name, projection, tmp_path, seed):
    """First principles: counts from config arithmetic == counting the real model's tensors."""
    from prefixlab import get_peft_model
    from prefixlab.engine.zoo import load_base

    spec = ExperimentSpec.from_dict({"model": {"name": model_name},
                                     "prefix": {"num_virtual_tokens": 3, "encoder_hidden_size": 24},
                                     "variants": ["projection" if projection else "no_projection"]})
    [counts] = checks.check(spec).rows()
    base, _, task_type = load_base(model_name)
    model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=projection,
                                                    encoder_hidden_size=24, task_type=task_type))
    trainable, total = model.get_nb_trainable_parameters()
    assert (counts["trainable"], counts["total"]) == (trainable, total)
    assert counts["trainable %"] == pytest.approx(100 * trainable / total, abs=1e-4)
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert counts["stored"] == sum(t.numel() for t in saved.values())
    assert counts["stored"] == sum(t.numel() for t in saved.values() if t.dtype == torch.float32)


def test_the_base_model_s_task_metric_lines_add_no_variant_row(tmp_path):
    """metrics.jsonl's task-metric lines name the untuned model "base": it is not a variant (no counts,
    no losses), only a first row of task metrics to compare the variants with."""
    run = write_run(tmp_path / "run", finished=False)
    assert [r["variant"] for r in compare.comparison_table(run.path)] == ["no_projection", "projection"]
    assert "bleu" not in compare.comparison_table(run.path)[0]  # no metrics logged: no metric columns
    append_jsonl(run.metrics_path, {"variant": "base", "step": 0, "bleu": 1.0, "time": 1005.0})
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 2, "bleu": 9.04, "time": 1005.0})
    rows = compare.comparison_table(run.path)
    assert [r["variant"] for r in rows] == ["base", "no_projection", "projection"]
    assert [r["bleu"] for r in rows] == [1.0, None, 9.0]
    assert rows[0]["trainable"] is None and rows[0]["train loss"] is None
    assert compare.run_variants(None, run.read_metrics(), None) == ["no_projection", "projection"]


def test_variant_colours_are_fixed_for_the_standard_variants():
    assert compare.variant_colours(["projection", "no_projection"]) == {"projection": "#ff7f0e",
                                                                      "no_projection": "#1f77b4"}
    assert compare.variant_colours(["base"])["base"] == "#7f7f7f"
