"""The worker in-process on the tiny GPT-2: lockstep batches, determinism, metrics layout, failures.

Subprocess behaviour (signals, the queue, PEFT loading) is in tests/test_worker_e2e.py.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.engine.spec import ExperimentSpec, SpecError, TrainingSpec
from prefixlab.engine.runs import CANCELLED, DONE, FAILED, RunDir
from prefixlab.engine.tiny import tiny_model
from prefixlab.engine.devices import mixed_precision_for, training_device_type
from prefixlab.engine.generation import generation_kwargs
from prefixlab.engine.worker import Job, describe_error, run_worker, total_steps


def tiny_spec(**training) -> ExperimentSpec:
    return ExperimentSpec.from_dict({
        "name": "unit", "model": {"name": "tiny-gpt2"},
        "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
        "data": {"source": "e2e-synth", "max_train_examples": 24, "max_eval_examples": 4},
        "training": {"learning_rate": 0.2, "max_steps": 4, "batch_size": 4, "max_length": 64,
                     "eval_interval": 2, "log_interval": 1, "seed": 7, **training},
        "generation": {"num_prompts": 2, "max_new_tokens": 3},
    })


def start(tmp_path, spec, name="run") -> RunDir:
    run = RunDir(tmp_path / name)
    run.write_spec(spec)
    return run


def train_lines(run: RunDir) -> list[dict]:
    return [m for m in run.read_metrics() if "loss" in m]


def test_paired_run_writes_the_run_directory(tmp_path):
    run = start(tmp_path, tiny_spec())
    assert run_worker(run.path, progress=False) == DONE
    status = run.read_status()
    assert status["state"] == DONE and status["step"] == status["total_steps"] == 4 and status["error"] is None
    lines = train_lines(run)
    assert [(m["variant"], m["step"]) for m in lines] == [
        (v, s) for s in (1, 2, 3, 4) for v in ("no_projection", "projection")]  # lockstep
    assert set(lines[0]) == {"variant", "step", "epoch", "loss", "lr", "tokens_per_s", "time"}
    assert all(math.isfinite(m["loss"]) and m["tokens_per_s"] > 0 for m in lines)
    evals = [(m["variant"], m["step"]) for m in run.read_metrics() if "eval_loss" in m]
    assert evals == [(v, s) for s in (0, 2, 4) for v in ("no_projection", "projection")]
    samples = run.read_samples()
    assert len(samples) == 2 and all(set(s["outputs"]) == {"base", "no_projection", "projection"} for s in samples)
    assert all(s["reference"] for s in samples)  # test examples carry their target
    summary = run.read_summary()
    assert summary["variants"]["projection"]["trainable"] > summary["variants"]["no_projection"]["trainable"]
    assert summary["variants"]["projection"]["stored"] == summary["variants"]["no_projection"]["stored"] == 4 * 2 * 2 * 64
    # The device is named so the page and the GPU check can tell; a GPU peak is reported on CUDA only.
    device = training_device_type()
    assert summary["device"].startswith(device) and summary["mixed_precision"] == mixed_precision_for("auto")
    if device == "cuda":
        assert summary["peak_gpu_memory_bytes"] > 0
    else:
        assert summary["peak_gpu_memory_bytes"] is None
    for name in ("no_projection", "projection"):
        assert (run.adapter_path(name) / "adapter_model.safetensors").exists()


def test_variants_see_the_same_batches_in_the_same_order(tmp_path, monkeypatch):
    seen: dict[str, list] = {}
    original = Job._train_variant

    def spy(self, variant, batch):
        seen.setdefault(variant.name, []).append(batch["input_ids"].clone())
        return original(self, variant, batch)

    monkeypatch.setattr(Job, "_train_variant", spy)
    run = start(tmp_path, tiny_spec(max_steps=3, eval_interval=3, fused=False))  # one pass per variant
    assert run_worker(run.path, progress=False) == DONE
    assert len(seen["no_projection"]) == len(seen["projection"]) == 3
    for a, b in zip(seen["no_projection"], seen["projection"]):
        assert torch.equal(a, b)


def test_a_fused_run_trains_exactly_as_one_pass_per_variant(tmp_path):
    """training.fused (the default): one pass of the base for both variants gives the losses and
    adapters of one pass each. On the shipped tiny-gpt2-e2e, which has no dropout (with dropout the
    two ways draw different masks, as two seeds would)."""
    import json

    from safetensors.torch import load_file

    def run_with(fused: bool) -> RunDir:
        spec = ExperimentSpec.from_dict({**json.loads(tiny_spec().to_json()), "model": {"name": "tiny-gpt2-e2e"},
                                         "training": {**tiny_spec().to_dict()["training"], "max_steps": 3,
                                                      "eval_interval": 3, "fused": fused}})
        run = start(tmp_path, spec, f"fused-{fused}")
        assert run_worker(run.path, progress=False) == DONE
        return run

    fused, separate = run_with(True), run_with(False)
    assert "share one pass of the base" in fused.log_path.read_text()
    assert "one pass of the base per variant: training.fused is off" in separate.log_path.read_text()
    lines = [[(m["variant"], m["step"], m.get("loss"), m.get("eval_loss")) for m in r.read_metrics()]
             for r in (fused, separate)]
    assert [m[:2] for m in lines[0]] == [m[:2] for m in lines[1]]
    assert [x for m in lines[0] for x in m[2:] if x is not None] == pytest.approx(
        [x for m in lines[1] for x in m[2:] if x is not None], rel=1e-5)
    for name in ("no_projection", "projection"):
        a, b = (load_file(r.adapter_path(name) / "adapter_model.safetensors")["prompt_embeddings"]
                for r in (fused, separate))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_same_spec_and_seed_give_the_same_losses(tmp_path):
    def losses(name):
        run = start(tmp_path, tiny_spec(max_steps=3, eval_interval=3), name)
        assert run_worker(run.path, progress=False) == DONE
        return [(m["variant"], m["step"], m.get("loss"), m.get("eval_loss")) for m in run.read_metrics()]

    first, second = losses("a"), losses("b")
    if training_device_type() == "cpu":
        assert first == second
    else:  # GPU attention kernels may sum in a different order from run to run
        assert [m[:2] for m in first] == [m[:2] for m in second]
        assert [x for m in first for x in m[2:] if x is not None] == pytest.approx(
            [x for m in second for x in m[2:] if x is not None], rel=1e-3)
    other = start(tmp_path, tiny_spec(max_steps=3, eval_interval=3, seed=8), "c")
    run_worker(other.path, progress=False)
    assert [m["loss"] for m in train_lines(other)] != [loss for _, _, loss, _ in first if loss is not None]


def test_gradient_accumulation_steps_the_optimizer_every_n_batches(tmp_path, monkeypatch):
    calls = []
    original, fused = Job._train_variant, Job._train_fused
    monkeypatch.setattr(Job, "_train_variant", lambda self, v, b: (calls.append(v.name), original(self, v, b)))
    monkeypatch.setattr(Job, "_train_fused", lambda self, g, b: (calls.extend(v.name for v in g), fused(self, g, b)))
    run = start(tmp_path, tiny_spec(max_steps=2, gradient_accumulation_steps=2, eval_interval=2))
    assert run_worker(run.path, progress=False) == DONE
    assert len(calls) == 2 * 2 * 2  # steps x accumulation x variants
    assert [m["step"] for m in train_lines(run)] == [1, 1, 2, 2]


def test_exploding_loss_fails_naming_variant_and_step(tmp_path, monkeypatch):
    # On the CPU even where CUDA exists: where the loss first turns non-finite depends on device and precision.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    run = start(tmp_path, tiny_spec(learning_rate=1e30, max_steps=4))
    assert run_worker(run.path, progress=False) == FAILED
    error = run.read_status()["error"]
    assert error.startswith("TrainingDiverged: variant no_projection: loss is nan at step 2")
    assert "lower training.learning_rate (now 1e+30)" in error


def test_crash_keeps_last_checkpoint_and_logs_traceback(tmp_path, monkeypatch):
    original = Job._train_variant

    def crash_at_step_3(self, variant, batch):
        if self.step == 2:  # after the step-2 checkpoint
            raise RuntimeError("boom")
        return original(self, variant, batch)

    monkeypatch.setattr(Job, "_train_variant", crash_at_step_3)
    run = start(tmp_path, tiny_spec(max_steps=4, eval_interval=2, fused=False))
    assert run_worker(run.path, progress=False) == FAILED
    status = run.read_status()
    assert status["error"] == "RuntimeError: boom" and status["step"] == 2
    assert "Traceback (most recent call last)" in run.log_tail(100) and "boom" in run.log_tail(100)
    for name in ("no_projection", "projection"):  # the step-2 checkpoint loads
        loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(run.adapter_path(name)))
        assert loaded.peft_config["default"].prefix_projection is (name == "projection")


def test_cuda_out_of_memory_is_reported_with_a_fix(tmp_path, monkeypatch):
    def oom(self, variant, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Job, "_train_variant", oom)
    monkeypatch.setattr(Job, "_train_fused", oom)
    run = start(tmp_path, tiny_spec())
    assert run_worker(run.path, progress=False) == FAILED
    error = run.read_status()["error"]
    assert error.startswith("CUDA out of memory: use a smaller training.batch_size or training.max_length")
    spec = tiny_spec()
    assert error.endswith("or a smaller prefix (now batch_size=4, max_length=64, num_virtual_tokens=4, "
                          "encoder_hidden_size=16); raise training.gradient_accumulation_steps to keep the "
                          "effective batch")
    mps = RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)")
    assert describe_error(mps, None).startswith("MPS out of memory: use a smaller training.batch_size")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert describe_error(cpu, spec).startswith("CPU out of memory: use a smaller training.batch_size")


def test_bad_data_fails_the_run_with_the_data_message(tmp_path):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"source": "c", target}\n')
    spec = tiny_spec()
    spec.data.source = str(bad)
    run = start(tmp_path, spec)
    assert run_worker(run.path, progress=False) == FAILED
    error = run.read_status()["error"]
    assert error.startswith("DataError: ") and "data.jsonl" in error and "line 2" in error


def test_unknown_model_fails_the_run_clearly(tmp_path):
    spec = tiny_spec()
    spec.model.name = str(tmp_path / "no-such-model-folder")
    run = start(tmp_path, spec)
    assert run_worker(run.path, progress=False) == FAILED
    assert run.read_status()["error"].startswith("ModelLoadError: ")


def test_stop_flag_before_training_cancels_and_still_saves(tmp_path):
    run = start(tmp_path, tiny_spec())
    run.cancel_path.touch()  # a Stop that arrived before the worker listened for SIGTERM
    assert run_worker(run.path, progress=False) == CANCELLED
    assert run.read_status()["step"] == 0 and train_lines(run) == []
    assert (run.adapter_path("projection") / "adapter_config.json").exists()
    assert len(run.read_samples()) == 2


def test_helpers():
    assert mixed_precision_for("fp32") == "no" and mixed_precision_for("bf16") == "bf16"
    if not torch.cuda.is_available():
        assert mixed_precision_for("auto") == "no"
        with pytest.raises(ValueError, match="training.precision: fp16 needs a CUDA or Apple MPS GPU"):
            mixed_precision_for("fp16")
    assert total_steps(TrainingSpec(num_epochs=2, gradient_accumulation_steps=3), batches_per_epoch=10) == 8
    assert total_steps(TrainingSpec(max_steps=5, eval_interval=5), batches_per_epoch=10) == 5
    spec = tiny_spec()
    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    spec.generation.strategy, spec.generation.num_beams = "beam", 3
    assert generation_kwargs(spec.generation, tok) == {
        "max_new_tokens": 3, "pad_token_id": 0, "eos_token_id": 1, "do_sample": False, "num_beams": 3}
    assert describe_error(KeyError("x"), None) == "KeyError: 'x'"


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-llama"])
def test_seq2seq_and_grouped_query_bases_train_in_lockstep(tmp_path, model):
    spec = tiny_spec(max_steps=2, eval_interval=2)
    spec.model.name = model
    run = start(tmp_path, spec)
    assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
    assert [(m["variant"], m["step"]) for m in train_lines(run)] == [
        ("no_projection", 1), ("projection", 1), ("no_projection", 2), ("projection", 2)]
    arch = model.removeprefix("tiny-")
    for name in ("no_projection", "projection"):
        loaded = PrefixTuningModel.from_pretrained(tiny_model(arch), str(run.adapter_path(name)))
        assert loaded.peft_config["default"].task_type.value == ("SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM")
    assert set(run.read_samples()[0]["outputs"]) == {"base", "no_projection", "projection"}


def test_the_position_limit_is_where_gpt2_stops_working():
    """zoo.position_limit is real: with the prefix in the cache, tiny-gpt2 takes exactly
    limit - num_virtual_tokens tokens, and one more fails inside the model."""
    from prefixlab import PrefixTuningConfig
    from prefixlab.engine.zoo import load_model_config, position_limit

    limit = position_limit(load_model_config("tiny-gpt2"))
    assert limit == 512 and position_limit(load_model_config("tiny-llama")) is None  # rotary: no table
    model = get_peft_model(tiny_model("gpt2"), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=12))
    with torch.no_grad():
        assert model(input_ids=torch.zeros(1, limit - 12, dtype=torch.long)).logits.shape[1] == limit - 12
        with pytest.raises(IndexError):
            model(input_ids=torch.zeros(1, limit - 11, dtype=torch.long))


def test_the_position_limit_holds_for_opt_and_bart_too():
    """OPT's learned positions shift by the prefix like GPT-2's; BART's decoder's do too (its encoder's
    do not), so a target of limit - num_virtual_tokens tokens fits and one more fails."""
    from transformers import BartConfig, BartForConditionalGeneration, OPTConfig, OPTForCausalLM

    from prefixlab import PrefixTuningConfig
    from prefixlab.engine.zoo import position_limit

    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   ffn_dim=32, max_position_embeddings=64, word_embed_proj_dim=16))
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64))
    assert position_limit(opt.config) == position_limit(bart.config) == 64
    ids = lambda n: torch.ones(1, n, dtype=torch.long)  # noqa: E731
    opt = get_peft_model(opt, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10))
    bart = get_peft_model(bart, PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=10))
    with torch.no_grad():
        opt(input_ids=ids(54))
        bart(input_ids=ids(64), labels=ids(54))
        with pytest.raises(IndexError):
            opt(input_ids=ids(55))
        with pytest.raises(IndexError):
            bart(input_ids=ids(10), labels=ids(55))


def test_lengths_past_the_model_s_positions_fail_before_any_training(tmp_path):
    """max_length + prefix over tiny-gpt2's 512 positions, and a max_new_tokens that leaves the real
    prompts no room, fail at setup with the field and the largest value that fits; nothing trains."""
    run = start(tmp_path, tiny_spec(max_length=600), "long")
    assert run_worker(run.path, progress=False) == FAILED
    assert run.read_status()["error"] == ("training.max_length: 600 tokens after the 4-token prefix run past "
                                          "tiny-gpt2's 512 positions; set it to at most 508")
    assert train_lines(run) == []

    spec = tiny_spec()
    spec.generation.max_new_tokens = 480  # fits 4 + 480, not the e2e sources (over 40 bytes each)
    run = start(tmp_path, spec, "gen")
    assert run_worker(run.path, progress=False) == FAILED
    error = run.read_status()["error"]
    assert error.startswith("generation.max_new_tokens: 480 new tokens after a ") and error.endswith(
        "-token prompt and the 4-token prefix run past tiny-gpt2's 512 positions; "
        f"set it to at most {512 - 4 - int(error.split('after a ')[1].split('-token')[0]) + 1} or use a shorter prompt")
    assert train_lines(run) == []


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_generate_outputs_fills_exactly_the_room_left_and_refuses_one_more_token(arch, monkeypatch):
    """The CLI's and the page's generation path on 64-position models: exactly the room left generates
    (the last new token is never fed back), one more is refused by name, and without the check the
    model itself fails there."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    import prefixlab.engine.generation as train_module
    from prefixlab.engine.data import encode_prompts
    from prefixlab.engine.spec import SpecError
    from prefixlab.engine.generation import generate_outputs
    from prefixlab.engine.zoo import load_base

    spec = tiny_spec()
    tokenizer = load_base("tiny-gpt2")[1]  # ByT5's: 384 ids, pad 0, eos 1
    torch.manual_seed(0)
    if arch == "gpt2":
        task_type, base = "CAUSAL_LM", GPT2LMHeadModel(GPT2Config(
            n_embd=16, n_layer=1, n_head=2, n_positions=64, vocab_size=384, pad_token_id=0, eos_token_id=1,
            bos_token_id=1))
    else:
        task_type, base = "SEQ_2_SEQ_LM", BartForConditionalGeneration(BartConfig(
            vocab_size=384, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
            pad_token_id=0, eos_token_id=1, bos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=None))
    model = get_peft_model(base, dataclasses.replace(spec.variants[0].prefix, task_type=task_type), adapter_name="v")
    source = "name[Aromi] | food[Thai]"
    prompt_len = encode_prompts([source], tokenizer, task_type, spec.data.separator, max_length=64)["input_ids"].shape[1]
    room = 64 - 4 - (prompt_len - 1 if arch == "gpt2" else 0)
    steps = []

    def never_stop(module, args, logits):  # no EOS: every generation runs to max_new_tokens
        steps.append(1)
        return logits.index_fill(-1, torch.tensor([1]), -math.inf)

    base.lm_head.register_forward_hook(never_stop)
    spec.generation.max_new_tokens = room
    outputs = generate_outputs(model, tokenizer, task_type, spec, source, ["v"], "cpu")
    assert set(outputs) == {"base", "v"} and len(steps) == 2 * room  # one step per new token, both models
    spec.generation.max_new_tokens = room + 1
    prompt = f"{prompt_len}-token prompt and " if arch == "gpt2" else ""
    with pytest.raises(SpecError, match=rf"^generation.max_new_tokens: {room + 1} new tokens after (a )?{prompt}"
                                        rf"the 4-token prefix .* set it to at most {room}\b"):
        generate_outputs(model, tokenizer, task_type, spec, source, ["v"], "cpu")
    monkeypatch.setattr(train_module, "check_generation_room", lambda *args: None)
    with pytest.raises(IndexError):
        generate_outputs(model, tokenizer, task_type, spec, source, ["v"], "cpu")

def test_a_text_initialised_prefix_starts_from_the_text_in_the_worker(tmp_path):
    """prefix_tuning_init="TEXT": the worker sets each variant's prefix from the frozen model's
    activations of the text (the tokenizer is the run's), before the first evaluation."""
    def run_with(prefix: dict, name: str) -> RunDir:
        document = json.loads(tiny_spec(max_steps=2, eval_interval=2).to_json())
        document["prefix"].update(prefix)
        run = start(tmp_path, ExperimentSpec.from_dict(document), name)
        assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
        return run

    text = run_with({"prefix_tuning_init": "TEXT", "prefix_tuning_init_text": "table-to-text:"}, "text")
    log = text.log_path.read_text()
    for variant in ("no_projection", "projection"):
        assert f"variant {variant}: prefix from the activations of 'table-to-text:'" in log
    random = run_with({}, "random")
    first_eval = [[m["eval_loss"] for m in r.read_metrics() if "eval_loss" in m and m["step"] == 0]
                  for r in (text, random)]
    assert first_eval[0] != first_eval[1]  # a different starting prefix


def test_the_fine_tuning_baseline_trains_its_own_copy_beside_the_prefixes(tmp_path, monkeypatch):
    """variants [..., "fine_tune"]: full fine-tuning of the same base on the same batches, on its own
    copy of the weights and its own learning rate; the prefix variants' frozen base stays
    bit-identical while the copy changes; its counts are every parameter; its outputs are sampled."""
    from transformers import AutoModelForCausalLM

    jobs = []
    original_train = Job.train
    monkeypatch.setattr(Job, "train", lambda self: (jobs.append(self), original_train(self))[1])
    document = json.loads(tiny_spec(max_steps=3, eval_interval=3, fine_tune_learning_rate=1e-3).to_json())
    document["variants"] = ["no_projection", "projection", "fine_tune"]
    run = start(tmp_path, ExperimentSpec.from_dict(document))
    before = {n: p.detach().clone() for n, p in tiny_model("gpt2").named_parameters()}
    assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
    job = jobs[0]
    frozen = dict(job.peft.base_model.named_parameters())
    assert all(torch.equal(frozen[n], before[n]) for n in before)  # the prefixes' base: untouched
    tuned = dict(job.accelerator.unwrap_model(job.variants[2].model).named_parameters())
    assert any(not torch.equal(tuned[n], before[n]) for n in before)  # the copy trained
    assert job.variants[2].optimizer.param_groups[0]["initial_lr"] == 1e-3
    summary = run.read_summary()["variants"]
    total = sum(p.numel() for p in before.values())
    assert (summary["fine_tune"]["trainable"], summary["fine_tune"]["stored"], summary["fine_tune"]["total"]) == (
        total, total, total)
    # Its own weights plus AdamW's two moments, fp32: 3 x 4 bytes a parameter (tied embeddings once),
    # and AdamW's 4-byte step count per parameter tensor.
    assert summary["fine_tune"]["train_state_bytes"] == 3 * 4 * total + 4 * len(before)
    assert summary["no_projection"]["train_state_bytes"] == 3 * 4 * summary["no_projection"]["trainable"] + 4
    assert {m["variant"] for m in run.read_metrics() if "eval_loss" in m} == {"no_projection", "projection",
                                                                              "fine_tune"}
    assert all("fine_tune" in s["outputs"] for s in run.read_samples())
    assert run.trained_models() == ["fine_tune"] and run.trained_variants() == ["no_projection", "projection"]
    saved = AutoModelForCausalLM.from_pretrained(run.model_path("fine_tune"))
    assert all(torch.equal(p, tuned[n]) for n, p in saved.named_parameters())


def test_the_baseline_is_beside_prefix_variants_not_alone():
    with pytest.raises(SpecError, match="choose at least one prefix variant"):
        ExperimentSpec.from_dict({"variants": ["fine_tune"]})
    with pytest.raises(SpecError, match="fine_tune_learning_rate: must be > 0"):
        ExperimentSpec.from_dict({"training": {"fine_tune_learning_rate": 0}})
