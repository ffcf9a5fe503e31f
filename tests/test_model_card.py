"""The model card save_pretrained writes (README.md, as PEFT does): the metadata the Hub reads, and
loading code that, run as written, gives the saved adapters' logits in PEFT."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from core_helpers import ours_config, padded_batch, randomize_prefix
from prefixlab import get_peft_model
from prefixlab.core.card import PLACEHOLDER
from prefixlab.engine.tiny import tiny_model

AUTO = {"gpt2": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _code(card_path, block: int = 0) -> str:
    """The card's Python code: block 0 loads the adapters in PEFT, block 1 generates with prefixlab."""
    blocks = re.findall(r"```python\n(.*?)```", card_path.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    return blocks[block]


def _runnable(code: str, base_folder, adapter_folder) -> str:
    """The card's code with this machine's paths in place of the base folder's name and PLACEHOLDER,
    and the tiny byte tokenizer (the saved tiny bases have no tokenizer files)."""
    code = code.replace('from_pretrained("base")', f"from_pretrained({str(base_folder)!r})")
    code = re.sub(r"tokenizer = AutoTokenizer\.from_pretrained\(.*\)",
                  "from prefixlab.engine.tiny import tiny_tokenizer\ntokenizer = tiny_tokenizer()", code)
    return code.replace(f'"{PLACEHOLDER}"', repr(str(adapter_folder)))


@pytest.fixture(params=["gpt2", "t5"])
def saved(request, tmp_path):
    """A base model saved to a folder and loaded from it (so it has a name), with a projection
    adapter "default" and a flat one "flat", saved together."""
    arch = request.param
    tiny_model(arch).save_pretrained(tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AUTO[arch].from_pretrained(tmp_path / "base")
    ours = get_peft_model(base, ours_config(arch, True)).eval()
    ours.add_adapter("flat", ours_config(arch, False))
    randomize_prefix(ours, "default", seed=1)
    randomize_prefix(ours, "flat", seed=2)
    ours.save_pretrained(tmp_path / "adapter")
    return arch, ours, tmp_path


def test_the_card_s_loading_code_runs_in_peft_and_gives_our_logits(saved):
    arch, ours, tmp_path = saved
    code = _code(tmp_path / "adapter" / "README.md")
    assert 'from_pretrained("base")  # a local folder where it was trained: give its path' in code
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(_runnable(code, tmp_path / "base", tmp_path / "adapter"), scope)  # noqa: S102
    ref = scope["model"].eval()
    assert type(ref).__module__.startswith("peft.")
    batch = padded_batch(arch)
    ours.set_adapter("default")
    torch.testing.assert_close(_logits(ref, batch), _logits(ours, batch), rtol=1e-4, atol=1e-5)
    ref.set_adapter("flat"), ours.set_adapter("flat")
    flat = _logits(ours, batch)
    torch.testing.assert_close(_logits(ref, batch), flat, rtol=1e-4, atol=1e-5)
    with ours.disable_adapter():
        assert not torch.allclose(_logits(ours, batch), flat, atol=1e-2)  # the prefix shows, so this could fail


def test_a_local_base_is_named_in_the_text_but_not_in_the_metadata(saved):
    """The Hub refuses a push whose base_model metadata is not a model id (transformers issue 33922,
    which PEFT's cards run into): a base loaded from a folder is named in the card's text only."""
    arch, ours, tmp_path = saved
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None
    assert card.data.tags == ["prefix-tuning", "prefixlab", "transformers"]
    assert card.data.pipeline_tag == ("text-generation" if arch == "gpt2" else None)
    assert card.text.lstrip().startswith("# Prefix-tuning adapter for `base` (a local folder)\n")
    assert str(tmp_path) not in card.text  # this machine's path means nothing elsewhere
    rows = [line for line in card.text.splitlines() if line.startswith("| `")]
    stored = {name: ours.get_prompt_embedding_to_save(name).numel() for name in ("default", "flat")}
    assert rows[0].startswith(f"| `default` | `.` | {ours.peft_config['default'].num_virtual_tokens} | ")
    assert f"| {stored['default']:,} | the projection MLP (hidden size" in rows[0]
    assert rows[1].startswith("| `flat` | `flat` |") and f"| {stored['flat']:,} | the prefix trained directly |" in rows[1]


def test_the_card_s_generation_code_generates_with_the_prefix(saved):
    """PEFT 0.21's generate drops the prefix under transformers 5.24+ (test_model_parity pins it); the
    card says so and gives prefixlab's code, which, run as written, generates what our model does."""
    arch, ours, tmp_path = saved
    card = (tmp_path / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "PEFT 0.21's `generate` loses the prefix with transformers 5.24 and later" in card
    code = _code(tmp_path / "adapter" / "README.md", block=1)
    assert "from prefixlab import PrefixTuningModel" in code
    assert 'model = PrefixTuningModel.from_pretrained(base, "PATH_OR_REPO_ID")' in code
    assert 'model.load_adapter("PATH_OR_REPO_ID", "flat", subfolder="flat")' in code
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(_runnable(code, tmp_path / "base", tmp_path / "adapter").replace('"PROMPT"', '"name[Aromi] => "'),
             scope)  # noqa: S102
    from prefixlab import PrefixTuningModel

    assert isinstance(scope["model"], PrefixTuningModel)
    inputs = scope["inputs"]
    ours.set_adapter("default")
    expected = ours.generate(**inputs, max_new_tokens=40)
    assert torch.equal(scope["output"], expected)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_a_hub_base_is_linked_in_the_metadata(arch, tmp_path):
    ours = get_peft_model(tiny_model(arch), ours_config(arch, True, base_model_name_or_path=f"me/tiny-{arch}"))
    ours.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == f"me/tiny-{arch}" and card.data.library_name == "peft"
    assert card.data.tags == sorted([f"base_model:adapter:me/tiny-{arch}", "prefix-tuning", "prefixlab", "transformers"])
    assert card.data.pipeline_tag == ("text-generation" if arch == "gpt2" else None)
    assert card.text.lstrip().startswith(f"# Prefix-tuning adapter for `me/tiny-{arch}`\n")
    auto = "AutoModelForCausalLM" if arch == "gpt2" else "AutoModelForSeq2SeqLM"
    assert f'base = {auto}.from_pretrained("me/tiny-{arch}")' in _code(tmp_path / "README.md")


def test_a_readme_that_is_not_a_model_card_is_left_alone_with_a_warning(tmp_path):
    text = "---\ntags: [unclosed\n---\n\nMy notes\n"
    (tmp_path / "README.md").write_text(text)
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    with pytest.warns(UserWarning, match="README.md is not a model card huggingface_hub can read .*left as it is"):
        ours.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == text
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "adapter_config.json").is_file()


def test_a_readme_already_there_keeps_its_text_and_gains_the_metadata(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\ntags:\n- mine\n---\n\n# My notes\n\nKeep me.\n")
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    ours.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.text.strip() == "# My notes\n\nKeep me."
    assert card.data.license == "mit" and card.data.library_name == "peft"
    assert card.data.tags == ["mine", "prefix-tuning", "prefixlab", "transformers"]


def test_a_base_built_from_a_config_has_no_name_to_link(tmp_path):
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    ours.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and not any(t.startswith("base_model:") for t in card.data.tags)
    assert 'from_pretrained("BASE_MODEL")' in _code(tmp_path / "README.md")
    assert "of a frozen base model: " in card.text and "the base model it was trained on in place of `BASE_MODEL`" in card.text


def test_a_worker_s_adapter_folder_has_a_card_for_that_folder(tmp_path):
    from prefixlab.engine.worker import save_adapter

    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False), adapter_name="no_projection")
    save_adapter(ours, "no_projection", tmp_path / "adapters" / "no_projection")
    code = _code(tmp_path / "adapters" / "no_projection" / "README.md")
    assert f'PeftModel.from_pretrained(base, "{PLACEHOLDER}", adapter_name="no_projection")' in code
    assert "subfolder" not in code and sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["no_projection"]


def test_a_base_loaded_from_a_relative_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    """"tiny" is a valid Hub id too; when it names a folder here, from_pretrained loaded the folder."""
    monkeypatch.chdir(tmp_path)
    tiny_model("gpt2").save_pretrained("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained("tiny")
    get_peft_model(base, ours_config("gpt2", False)).save_pretrained("adapter")
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.base_model is None and card.text.lstrip().startswith("# Prefix-tuning adapter for `tiny` (a local")


def test_a_run_s_adapter_card_says_how_it_was_trained_and_holds_the_spec(tmp_path):
    from test_cli import tiny_spec_dict

    from prefixlab.engine.spec import ExperimentSpec
    from prefixlab.engine.runs import RunDir
    from prefixlab.engine.worker import run_worker

    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict({**tiny_spec_dict(), "description": "A card\ntest."}))
    assert run_worker(run.path, progress=False) == "done"
    summary = json.loads(run.summary_path.read_text())
    for variant in ("no_projection", "projection"):
        text = (run.adapter_path(variant) / "README.md").read_text()
        training = text[text.index("\n## Training\n"):]
        assert f"Variant `{variant}` of the prefixlab experiment `cli`: A card test." in training
        assert "- base model: `tiny-gpt2`\n- data: `e2e-synth` (`source` -> `target`)" in training
        assert "- this checkpoint: step 2 of 2; batch size 4 x 1 accumulation steps, learning rate 0.2 " in training
        final = summary["variants"][variant]
        assert f"- validation loss at step 2: {final['final_eval_loss']:.4f}" in training
        assert f"- training loss (mean of the last logged steps): {final['final_train_loss']:.4f}" in training
        embedded = re.search(r"```json\n(.*?)```", training, flags=re.S).group(1)
        assert ExperimentSpec.from_json(embedded).to_dict() == run.read_spec().to_dict()
        assert 'PeftModel.from_pretrained(base, "PATH_OR_REPO_ID", adapter_name="' + variant + '")' in text
        # The base named portably: the preset's name and prefixlab's loader, not this checkout's path.
        assert text.startswith("---") and "# Prefix-tuning adapter for `tiny-gpt2` (a prefixlab offline preset)" in text
        assert 'base, tokenizer, _ = load_base("tiny-gpt2")  # prefixlab\'s offline preset' in _code(
            run.adapter_path(variant) / "README.md", block=1)
        assert str(tmp_path) not in text and str(Path(__file__).resolve().parents[1]) not in text


def test_a_paper_layout_card_says_peft_cannot_load_it_and_counts_every_stored_value(tmp_path):
    from safetensors.torch import load_file

    from prefixlab import PrefixTuningConfig, PrefixTuningModel, get_peft_model
    from prefixlab.engine.tiny import tiny_model

    config = PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, prefix_positions="paper",
                                prefix_tuning_init="TEXT", prefix_tuning_init_text="table-to-text:")
    model = get_peft_model(tiny_model("t5"), config)
    model.init_prefix_from_text("default", token_ids=[5, 6, 7, 8])
    model.save_pretrained(str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    assert "PEFT cannot load them" in card and "from peft import PeftModel" not in card
    assert "library_name: peft" not in card
    assert "from prefixlab import PrefixTuningModel" in card
    assert 'started from the activations of "table-to-text:"' in card
    stored = sum(t.numel() for t in load_file(str(tmp_path / "adapter_model.safetensors")).values())
    assert f"| {stored:,} |" in card
    loaded = PrefixTuningModel.from_pretrained(tiny_model("t5"), str(tmp_path))  # prefixlab loads what it says
    assert loaded.peft_config["default"].is_paper_layout
