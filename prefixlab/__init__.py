"""prefixlab: prefix tuning (Li & Liang 2021) with Hugging Face PEFT's names and file format.

    from prefixlab import PrefixTuningConfig, get_peft_model   # instead of `from peft import ...`
    from prefixlab import Trainer      # transformers.Trainer that checkpoints the prefix (lazy import)
"""

from .config import PeftType, PrefixTuningConfig, PromptLearningConfig, TaskType
from .encoder import PrefixEncoder
from .model import PrefixTuningModel, get_peft_model

__all__ = [
    "PeftType",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PrefixTuningModel",
    "PromptLearningConfig",
    "TaskType",
    "Trainer",
    "get_peft_model",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Trainer":  # transformers.Trainer is slow to import: only when asked for
        from .trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'prefixlab' has no attribute {name!r}")
