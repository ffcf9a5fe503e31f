"""Generation as the lab does it everywhere (the worker's samples, the page's Generate, the CLI's
`generate`): prompts built and truncated exactly as in training, one prompt at a time so an output
never depends on the other prompts of its batch, the base model first, then every adapter, and the
new tokens checked against the model's positions first (engine.checks).
"""

from __future__ import annotations

import torch

from prefixlab.core.config import TaskType
from prefixlab.engine import limits
from prefixlab.engine.spec import ExperimentSpec, GenerationSpec, SpecError


def generation_kwargs(gen: GenerationSpec, tokenizer) -> dict:
    kwargs = {"max_new_tokens": gen.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": tokenizer.eos_token_id}
    if gen.strategy == "sampling":
        return {**kwargs, "do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p}
    if gen.strategy == "beam":
        return {**kwargs, "do_sample": False, "num_beams": gen.num_beams}
    return {**kwargs, "do_sample": False, "num_beams": 1}


def prompts_for(spec: ExperimentSpec, examples: list[dict]) -> list[tuple[str, str | None]]:
    """(source, reference) pairs: the spec's prompts, else the first test (or validation) examples."""
    if spec.generation.prompts:
        return [(p, None) for p in spec.generation.prompts]
    return [(e["source"], e["target"]) for e in examples[: spec.generation.num_prompts]]


def check_generation_room(peft_model, task_type, spec: ExperimentSpec, adapter_names: list[str],
                          prompt_len: int) -> None:
    """Raise SpecError on generation.max_new_tokens when a prompt of `prompt_len` tokens, the longest
    of the adapters' prefixes and the new tokens do not fit the model's position table
    (checks.generation_room_error)."""
    from prefixlab.engine.checks import generation_room_error
    from prefixlab.engine.zoo import position_limit

    prefix = max(peft_model.peft_config[name].num_virtual_tokens for name in adapter_names)
    causal = TaskType(task_type) == TaskType.CAUSAL_LM
    message = generation_room_error(spec, position_limit(peft_model.base_model.config), prefix, prompt_len, causal)
    if message:
        raise SpecError("generation.max_new_tokens", message)


def check_prompt(prompt: str) -> None:
    """ValueError, naming the limit, for a typed prompt (the page's Generate box, `generate --prompt`)
    longer than limits.MAX_PROMPT_CHARS: tokenizing it whole would hold the process for minutes, and
    only its first training.max_length tokens would be used anyway."""
    if len(prompt) > limits.MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt):,} characters, over the limit of {limits.MAX_PROMPT_CHARS:,} "
                         "(MAX_PROMPT_CHARS in prefixlab/engine/limits.py); shorten it (only its first "
                         "training.max_length tokens reach the model)")


@torch.no_grad()
def generate_outputs(peft_model, tokenizer, task_type, spec: ExperimentSpec, source: str,
                     adapter_names: list[str], device, *, limit_prompt: bool = True,
                     models: dict | None = None, base: bool = True) -> dict[str, str]:
    """{"base": text, <adapter>: text, ..., <model>: text} for one source, the base model without any
    prefix first (unless `base` is False), then each adapter, then each of `models` (name -> a
    transformers model: the fine-tuning baseline's own copy of the base).

    One prompt at a time, so an output never depends on which other prompts share its batch; the
    prompt is built and truncated exactly as in training (data.encode_prompts). A source over
    limits.MAX_PROMPT_CHARS is refused (check_prompt) unless `limit_prompt` is False (the worker's
    task-file examples, each within limits.MAX_LINE_CHARS).
    """
    from prefixlab.engine.data import encode_prompts

    if limit_prompt:
        check_prompt(source)

    encoded = encode_prompts([source], tokenizer, task_type, spec.data.separator,
                             max_length=spec.training.max_length)
    if adapter_names:
        check_generation_room(peft_model, task_type, spec, adapter_names, encoded["input_ids"].shape[1])
    encoded = {k: v.to(device) for k, v in encoded.items()}  # (1, prompt_len) each
    kwargs = generation_kwargs(spec.generation, tokenizer)
    causal = TaskType(task_type) == TaskType.CAUSAL_LM

    def text(model) -> str:
        torch.manual_seed(spec.training.seed)  # sampling: every model draws the same stream
        out = model.generate(**encoded, **kwargs)  # (1, total_len)
        if causal:
            out = out[:, encoded["input_ids"].shape[1]:]  # keep only the continuation
        return tokenizer.decode(out[0], skip_special_tokens=True)

    outputs = {"base": text(peft_model.base_model)} if base else {}
    for name in adapter_names:
        peft_model.set_adapter(name)
        outputs[name] = text(peft_model)
    for name, model in (models or {}).items():
        outputs[name] = text(model)
    return outputs
