"""The five examples of the PrefixTuningConfig reference page, run with `prefixlab` in place of `peft`.

The code is read from the page itself (../shared/reference/PrefixTuningConfig.wiki.txt, copied below
when the shared folder is absent), `from peft import` becomes `from prefixlab import`, and "gpt2" is a
tiny local GPT-2 (tests cannot download). Each example also runs with peft; the printed counts and
the configs must be the same.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest
import transformers

from prefixlab.engine.tiny import tiny_model

WIKI = Path(__file__).resolve().parents[2] / "shared" / "reference" / "PrefixTuningConfig.wiki.txt"

# The page's examples, verbatim, for checkouts without ../shared (kept in sync by test_copy_matches_page).
EXAMPLES = {
    "Basic Configuration Without Projection": '''from peft import PrefixTuningConfig

# Simple prefix tuning without MLP projection
config = PrefixTuningConfig(
    task_type="CAUSAL_LM",
    num_virtual_tokens=30,
    token_dim=768,
    num_layers=12,
    prefix_projection=False
)''',
    "Configuration With Projection (Recommended)": '''from peft import PrefixTuningConfig

# Prefix tuning with MLP projection for better stability
config = PrefixTuningConfig(
    task_type="CAUSAL_LM",
    num_virtual_tokens=30,
    token_dim=768,
    num_layers=12,
    encoder_hidden_size=512,
    prefix_projection=True
)''',
    "Seq2Seq Model Configuration": '''from peft import PrefixTuningConfig

# Configuration for encoder-decoder models
config = PrefixTuningConfig(
    task_type="SEQ_2_SEQ_LM",
    num_virtual_tokens=20,
    token_dim=768,
    num_transformer_submodules=2,  # Encoder + Decoder
    num_attention_heads=12,
    num_layers=12,
    encoder_hidden_size=768,
    prefix_projection=True
)''',
    "Complete Example with Model": '''from peft import PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

# Create configuration
config = PrefixTuningConfig(
    task_type="CAUSAL_LM",
    num_virtual_tokens=20,
    encoder_hidden_size=1024,
    prefix_projection=True
)

# Load base model
model = AutoModelForCausalLM.from_pretrained("gpt2")

# Apply prefix tuning
peft_model = get_peft_model(model, config)

# Check trainable parameters
peft_model.print_trainable_parameters()
# Output shows only prefix parameters are trainable''',
    "Comparing Projection vs No Projection": '''from peft import PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("gpt2")

# Without projection
config_no_proj = PrefixTuningConfig(
    task_type="CAUSAL_LM",
    num_virtual_tokens=20,
    prefix_projection=False
)
model1 = get_peft_model(model, config_no_proj)

# With projection (more parameters but better training stability)
config_with_proj = PrefixTuningConfig(
    task_type="CAUSAL_LM",
    num_virtual_tokens=20,
    encoder_hidden_size=512,
    prefix_projection=True
)
model2 = get_peft_model(model, config_with_proj)

print("Without projection:")
model1.print_trainable_parameters()

print("\\nWith projection:")
model2.print_trainable_parameters()''',
}


def _examples_from_page(text: str) -> dict[str, str]:
    """{heading: code} for the code blocks under "Usage Examples"."""
    usage = text.split("=== Usage Examples ===", 1)[1]
    pattern = r"==== (.+?) ====\s*<syntaxhighlight lang=\"python\">\n(.*?)\n</syntaxhighlight>"
    return {title: code for title, code in re.findall(pattern, usage, flags=re.S)}


def test_copy_matches_page():
    if not WIKI.exists():  # a checkout without the shared folder keeps using the copy above
        assert len(EXAMPLES) == 5
        return
    assert _examples_from_page(WIKI.read_text()) == EXAMPLES


def _run(code: str, library: str, monkeypatch) -> tuple[str, dict]:
    """Run an example with `library` as the peft package and a tiny GPT-2 as "gpt2"."""
    def tiny_from_pretrained(name, *args, **kwargs):
        assert name == "gpt2"
        return tiny_model("gpt2")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", tiny_from_pretrained)
    code = code.replace("from peft import", f"from {library} import")
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, f"<{library} example>", "exec"), namespace)
    return out.getvalue(), namespace


def _config_values(config) -> dict:
    values = {k: getattr(v, "value", v) for k, v in config.to_dict().items()}
    values.pop("peft_version")
    return values


@pytest.mark.parametrize("title", list(EXAMPLES))
def test_example_runs_with_prefixlab_like_peft(title, monkeypatch):
    ours_out, ours_ns = _run(EXAMPLES[title], "prefixlab", monkeypatch)
    peft_out, peft_ns = _run(EXAMPLES[title], "peft", monkeypatch)
    assert ours_out == peft_out
    for name in ("config", "config_no_proj", "config_with_proj"):
        if name in peft_ns and "model" not in peft_ns:
            assert _config_values(ours_ns[name]) == _config_values(peft_ns[name])
    if "print_trainable_parameters" in EXAMPLES[title]:
        assert ours_out.count("trainable params: ") == EXAMPLES[title].count(".print_trainable_parameters()")
