"""prefixlab: prefix tuning (Li & Liang 2021) with Hugging Face PEFT's names and file format.

    from prefixlab import PrefixTuningConfig, get_peft_model   # instead of `from peft import ...`
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
    "get_peft_model",
]
__version__ = "0.1.0"
