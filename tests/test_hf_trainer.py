"""prefixlab.Trainer: transformers.Trainer with a PrefixTuningModel's checkpoints as adapters, exact
resume and best-model reload for both variants; plain transformers.Trainer cannot checkpoint it."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

import prefixlab
from core_helpers import ours_config
from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.engine.tiny import tiny_model
from prefixlab.core.hf_trainer import ENCODER_STATE_NAME


def examples(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (n, 6), generator=gen)
    return [{"input_ids": row, "attention_mask": torch.ones(6, dtype=torch.long), "labels": row} for row in ids]


def args(out, **extra):
    settings = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=2, save_steps=2,
                    learning_rate=5e-2, use_cpu=True, report_to=[], seed=0, logging_steps=1, disable_tqdm=True)
    return transformers.TrainingArguments(**{**settings, **extra})


def fresh(projection=True):
    torch.manual_seed(0)
    return get_peft_model(tiny_model("gpt2"), ours_config("gpt2", projection))


def encoder_state(model):
    return {k: v.detach().clone() for k, v in model.prompt_encoder.state_dict().items()}


def test_plain_transformers_trainer_cannot_checkpoint_a_tied_model(tmp_path):
    """Why the subclass exists: Trainer knows only PEFT's classes and saves our whole state dict."""
    trainer = transformers.Trainer(model=fresh(), args=args(tmp_path, max_steps=2), train_dataset=examples())
    with pytest.raises(RuntimeError, match="share memory"):
        trainer.train()


@pytest.mark.parametrize("projection", [False, True])
def test_checkpoints_are_adapters_that_load_in_peft(tmp_path, projection):
    model = fresh(projection)
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    prefix_before = encoder_state(model)
    prefixlab.Trainer(model=model, args=args(tmp_path), train_dataset=examples()).train()
    assert all(torch.equal(v, model.get_base_model().state_dict()[k]) for k, v in base_before.items())
    assert not all(torch.equal(v, model.prompt_encoder.state_dict()[k]) for k, v in prefix_before.items())
    checkpoint = tmp_path / "checkpoint-4"
    assert {"adapter_config.json", "adapter_model.safetensors", ENCODER_STATE_NAME} <= {p.name for p in
                                                                                      checkpoint.iterdir()}
    assert not (checkpoint / "model.safetensors").exists()
    batch = {"input_ids": torch.stack([e["input_ids"] for e in examples(2, seed=1)])}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.PeftModel.from_pretrained(tiny_model("gpt2"), str(checkpoint)).eval()
        torch.testing.assert_close(ref(**batch).logits, model.eval()(**batch).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("projection", [False, True])
def test_resuming_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path, projection):
    straight = fresh(projection)
    prefixlab.Trainer(model=straight, args=args(tmp_path / "a"), train_dataset=examples()).train()
    resumed = fresh(projection)
    start = encoder_state(resumed)
    trainer = prefixlab.Trainer(model=resumed, args=args(tmp_path / "b"), train_dataset=examples())
    resume = str(tmp_path / "a" / "checkpoint-2")
    if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        # transformers refuses to torch.load any checkpoint's optimizer state before torch 2.6
        # (CVE-2025-32434), whatever the model: resuming needs torch 2.6 or newer.
        with pytest.raises(ValueError, match="upgrade torch to at least v2.6"):
            trainer.train(resume_from_checkpoint=resume)
        return
    trainer.train(resume_from_checkpoint=resume)
    for name, value in encoder_state(straight).items():
        assert not torch.equal(value, start[name])
        torch.testing.assert_close(encoder_state(resumed)[name], value, rtol=1e-6, atol=1e-7)


def test_resuming_from_an_adapter_folder_alone_says_what_is_missing(tmp_path):
    model = fresh()
    model.save_pretrained(tmp_path / "adapter")
    trainer = prefixlab.Trainer(model=fresh(), args=args(tmp_path / "out"), train_dataset=examples())
    with pytest.raises(prefixlab.core.config.AdapterFileError, match="resuming needs a checkpoint written by prefixlab"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "adapter"))


def test_load_best_model_at_end_restores_the_best_checkpoint_s_prefix(tmp_path):
    model = fresh()
    # "Best" = the highest eval loss, so that the best checkpoint is an early one (the loss falls as
    # the prefix trains): the reload must then visibly move the prefix back.
    trainer = prefixlab.Trainer(
        model=model, train_dataset=examples(), eval_dataset=examples(4, seed=2),
        args=args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                  metric_for_best_model="loss", greater_is_better=True))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-6")
    saved = load_file(f"{best}/{ENCODER_STATE_NAME}")
    last = load_file(f"{tmp_path}/checkpoint-6/{ENCODER_STATE_NAME}")
    assert not all(torch.equal(last[k], saved[k]) for k in saved)
    assert encoder_state(model).keys() == saved.keys()
    for name, value in saved.items():
        torch.testing.assert_close(model.prompt_encoder.state_dict()[name].cpu(), value, rtol=0, atol=0)


def test_seq2seq_columns_the_base_model_takes_are_kept(tmp_path):
    import datasets

    torch.manual_seed(0)
    model = get_peft_model(tiny_model("t5"), ours_config("t5", False))
    gen = torch.Generator().manual_seed(0)
    rows = {"input_ids": torch.randint(3, 300, (4, 6), generator=gen).tolist(),
            "labels": torch.randint(3, 300, (4, 3), generator=gen).tolist(),
            "decoder_attention_mask": [[1, 1, 0]] * 4, "unused": ["x"] * 4}
    trainer = prefixlab.Trainer(model=model, args=args(tmp_path, max_steps=1), train_dataset=datasets.Dataset.from_dict(rows))
    kept = trainer._remove_unused_columns(trainer.train_dataset).column_names
    assert sorted(kept) == ["decoder_attention_mask", "input_ids", "labels"]
    trainer.train()


def test_label_smoothing_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"label_smoothing_factor=0.1 is not supported .* set it to 0"):
        prefixlab.Trainer(model=fresh(), args=args(tmp_path, label_smoothing_factor=0.1), train_dataset=examples())


def test_other_models_go_through_transformers_trainer_unchanged(tmp_path):
    model = tiny_model("llama")
    prefixlab.Trainer(model=model, args=args(tmp_path, max_steps=2), train_dataset=examples()).train()
    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    assert PrefixTuningModel is not type(model)
