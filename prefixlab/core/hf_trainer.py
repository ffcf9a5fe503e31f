"""prefixlab.Trainer: transformers.Trainer that checkpoints, resumes and reloads a PrefixTuningModel.

transformers' Trainer recognises PEFT's own classes only. Given a PrefixTuningModel it writes the
whole model's state dict at each checkpoint, which fails outright for models with tied embeddings
(GPT-2: "Some tensors share memory"), and it cannot resume from or reload the best of those
checkpoints as adapters. This subclass, used exactly like transformers.Trainer, makes each checkpoint
what `save_pretrained` writes (loads in PEFT) plus prompt_encoder.safetensors, the full trainable
state (the projection MLP included, which the adapter file does not hold), so that
`train(resume_from_checkpoint=...)` and `load_best_model_at_end` restore the prefix exactly, for
both variants. Any other model goes through transformers.Trainer unchanged.
"""

from __future__ import annotations

import inspect
import os

import torch
import transformers
from safetensors.torch import load_file, save_file

from .config import AdapterFileError
from .model import PrefixTuningModel

ENCODER_STATE_NAME = "prompt_encoder.safetensors"
TRAINING_ARGS_NAME = "training_args.bin"  # transformers.trainer's name for it


class Trainer(transformers.Trainer):
    """transformers.Trainer, with a PrefixTuningModel's checkpoints saved and loaded as adapters."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._prefix_model() is not None and self.args.label_smoothing_factor:
            # Trainer's label smoother decides whether to shift the labels from the model's class name,
            # which it reads through PEFT's classes only: a causal LM's loss would be computed unshifted.
            raise ValueError(f"label_smoothing_factor={self.args.label_smoothing_factor} is not supported with a "
                             "prefix-tuned model; set it to 0")

    def _prefix_model(self, model=None) -> PrefixTuningModel | None:
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        return unwrapped if isinstance(unwrapped, PrefixTuningModel) else None

    def _set_signature_columns_if_needed(self) -> None:
        model = self._prefix_model()
        if model is not None and self._signature_columns is None:
            # Our forward takes **kwargs: keep the columns the base model's forward takes (as Trainer
            # does for PEFT models), e.g. decoder_input_ids, not only input_ids/attention_mask/labels.
            columns = inspect.signature(model.get_base_model().forward).parameters
            self._signature_columns = list(columns) + list({"label", "label_ids", *self.label_names})
        super()._set_signature_columns_if_needed()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._prefix_model()
        if model is None:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        encoder_state = {k: v.detach().cpu().contiguous() for k, v in model.prompt_encoder.state_dict().items()}
        save_file(encoder_state, os.path.join(output_dir, ENCODER_STATE_NAME), metadata={"format": "pt"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        prefix_model = self._prefix_model(model)
        if prefix_model is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, ENCODER_STATE_NAME)
        if not os.path.isfile(path):
            raise AdapterFileError(f"{path}: file not found; resuming needs a checkpoint written by prefixlab.Trainer "
                                   "(an adapter folder alone lacks the projection MLP and the optimizer state)")
        state = load_file(path)
        expected = set(prefix_model.prompt_encoder.state_dict())
        if set(state) != expected:
            raise AdapterFileError(f"{path}: holds {sorted(state)} but the model's adapters need {sorted(expected)}; "
                                   "resume with the same adapters and prefix_projection the checkpoint was trained with")
        try:
            prefix_model.prompt_encoder.load_state_dict(state)
        except RuntimeError as err:  # shapes
            raise AdapterFileError(f"{path}: does not fit this model's prefix ({err}); the checkpoint was "
                                   "trained with other sizes") from err
        return None

    def _load_best_model(self) -> None:
        if self._prefix_model() is None:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)
        return None
