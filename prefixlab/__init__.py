"""prefixlab: prefix tuning (Li & Liang 2021) with Hugging Face PEFT's names and file format.

    from prefixlab import PrefixTuningConfig, get_peft_model   # instead of `from peft import ...`
    from prefixlab import Trainer      # transformers.Trainer that checkpoints the prefix

The layers are folders and imports only point down (tests/test_layers.py checks it):

    core/    PrefixTuningConfig, PrefixEncoder, PrefixTuningModel: torch + transformers only
    engine/  models, data, the experiment spec and its checks, the worker, run folders, the queue
    views/   tables and figures read from a run folder (no Gradio)
    ui/      the Gradio page
    cli.py   python -m prefixlab ...
    tools/   developer tooling (benchmarks, GPU check, tiny-model pretraining, task generator);
             only the CLI reaches it

The names below load on first use, so `import prefixlab` (and a CLI command that needs no model)
does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PeftType": "prefixlab.core.config",
    "PrefixTuningConfig": "prefixlab.core.config",
    "PromptLearningConfig": "prefixlab.core.config",
    "TaskType": "prefixlab.core.config",
    "PrefixEncoder": "prefixlab.core.encoder",
    "PrefixTuningModel": "prefixlab.core.model",
    "get_peft_model": "prefixlab.core.model",
    "Trainer": "prefixlab.core.hf_trainer",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefixlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
