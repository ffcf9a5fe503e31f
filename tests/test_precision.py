"""Precision and device handling of the wrapper and the worker, checked on whatever devices exist.

On a CPU-only machine: bf16 *weights* and bf16 *autocast* run on CPU, so dtype bugs show here; fp16
loss scaling runs with torch's CPU GradScaler put where accelerate puts its CUDA one; and device
bugs (a tensor made without device=) show when the default device is "meta" while the model is on
the CPU. Where CUDA exists, the same model-level checks also run on it (DEVICES).
"""

from __future__ import annotations

import gc
import functools
import math
import warnings
import weakref

import pytest
import torch
from safetensors import safe_open

import prefixlab
import prefixlab.engine.devices as devices
import prefixlab.engine.worker as train_module
from core_helpers import ARCHS, copy_prefix, is_seq2seq, ours_config, padded_batch, peft_config
from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.engine.runs import DONE, FAILED
from prefixlab.engine.tiny import tiny_model
from prefixlab.engine.devices import make_accelerator, mixed_precision_for, select_mixed_precision
from prefixlab.engine.worker import Job, run_worker
from test_train import start, tiny_spec, train_lines

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PARAMS = [(arch, projection) for arch in ARCHS for projection in (False, True)]


def saved_dtype(adapter_dir) -> torch.dtype:
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        return f.get_tensor("prompt_embeddings").dtype


def random_prefix(model, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.prompt_encoder["default"].parameters():
            param.copy_(torch.randn(param.shape, generator=gen))


# ---------------------------------------------------------------------------------------------
# Choosing the precision


@pytest.mark.parametrize("precision, device, bf16_native, version, expected", [
    ("auto", "cuda", True, (2, 4), "bf16"),  # Ampere and newer
    ("auto", "cuda", False, (2, 13), "fp16"),  # T4, V100: fp16 with a gradient scaler
    ("bf16", "cuda", True, (2, 13), "bf16"),
    ("fp16", "cuda", True, (2, 13), "fp16"),
    ("fp32", "cuda", True, (2, 13), "no"),
    ("auto", "mps", True, (2, 6), "bf16"),  # macOS 14+
    ("auto", "mps", False, (2, 8), "fp16"),  # older macOS: fp16 where accelerate has MPS's GradScaler
    ("auto", "mps", True, (2, 5), "no"),  # torch too old for either on MPS
    ("auto", "mps", False, (2, 7), "no"),
    ("fp16", "mps", True, (2, 8), "fp16"),
    ("fp32", "mps", True, (2, 13), "no"),
    ("auto", "cpu", True, (2, 13), "no"),
    ("bf16", "cpu", True, (2, 13), "bf16"),  # CPU autocast
    ("fp32", "cpu", True, (2, 13), "no"),
])
def test_select_mixed_precision(precision, device, bf16_native, version, expected):
    assert select_mixed_precision(precision, device, bf16_native, version) == expected


@pytest.mark.parametrize("precision, device, bf16_native, version, message", [
    ("fp16", "cpu", True, (2, 13), "fp16 needs a CUDA or Apple MPS GPU"),
    ("bf16", "cuda", False, (2, 13), "bf16 needs a GPU with native bfloat16"),
    ("bf16", "mps", False, (2, 13), "bf16 on Apple MPS needs macOS 14"),
    ("bf16", "mps", True, (2, 5), "bf16 on Apple MPS needs macOS 14 or newer and torch 2.6"),
    ("fp16", "mps", True, (2, 7), "fp16 on Apple MPS needs torch 2.8"),
    ("fp8", "cuda", True, (2, 13), "must be auto, fp32, bf16 or fp16"),
])
def test_select_mixed_precision_refuses_what_the_device_cannot_do(precision, device, bf16_native, version, message):
    with pytest.raises(ValueError, match=f"^training.precision: {message}"):
        select_mixed_precision(precision, device, bf16_native, version)


@pytest.fixture
def fake_machine(monkeypatch):
    """Pretend the machine has a CUDA GPU (with or without native bf16) or an Apple GPU."""
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)

    def set_up(device: str, bf16_native: bool, version=(2, 13)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda")
        # torch answers True for emulated bf16 (pre-Ampere GPUs) unless including_emulation=False.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: bf16_native or including_emulation)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: device == "mps")
        monkeypatch.setattr("accelerate.utils.is_bf16_available", lambda *a: bf16_native)
        monkeypatch.setattr(devices, "_torch_version", lambda: version)

    return set_up


@pytest.mark.parametrize("device, bf16_native, expected", [
    ("cuda", True, "bf16"), ("cuda", False, "fp16"), ("mps", True, "bf16"), ("mps", False, "fp16"),
    ("cpu", True, "no")])
def test_auto_precision_on_each_kind_of_machine(fake_machine, device, bf16_native, expected):
    fake_machine(device, bf16_native)
    assert devices.training_device_type() == device
    assert mixed_precision_for("auto") == expected
    assert mixed_precision_for("fp32") == "no"


def test_precision_for_another_device_than_the_default(fake_machine):
    fake_machine("cuda", bf16_native=True)
    assert mixed_precision_for("auto") == "bf16"
    assert mixed_precision_for("auto", "cpu") == "no" and mixed_precision_for("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA or Apple MPS GPU"):
        mixed_precision_for("fp16", "cpu")


def test_emulated_bf16_on_an_old_gpu_is_not_bf16_support(fake_machine):
    fake_machine("cuda", bf16_native=False)
    assert torch.cuda.is_bf16_supported() is True  # what torch says on a T4 ...
    assert devices.cuda_bf16_native() is False
    assert mixed_precision_for("auto") == "fp16"  # ... and fp16 is still the one it runs fast
    with pytest.raises(ValueError, match="bf16 needs a GPU with native bfloat16"):
        mixed_precision_for("bf16")


def test_cuda_bf16_native_on_a_torch_without_including_emulation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.cuda_bf16_native() is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.cuda_bf16_native() is False


def test_accelerate_use_cpu_means_cpu(fake_machine, monkeypatch):
    fake_machine("cuda", bf16_native=True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert devices.training_device_type() == "cpu" and mixed_precision_for("auto") == "no"


def test_stale_accelerate_state():
    state = {"_mixed_precision": "bf16", "device": torch.device("cuda", 0)}
    assert not devices.stale_accelerate_state({}, "bf16", "cuda", 1)  # nothing yet
    assert not devices.stale_accelerate_state(state, "bf16", "cuda", 1)
    assert devices.stale_accelerate_state(state, "no", "cuda", 1)
    assert devices.stale_accelerate_state(state, "bf16", "cpu", 1)
    assert not devices.stale_accelerate_state(state, "no", "cpu", 2)  # launched: never reset


def test_accelerators_with_different_precisions_in_one_process():
    """accelerate keeps one process-wide state; a second job with another precision must still start."""
    from prefixlab.engine.spec import TrainingSpec

    sequence = (("bf16", "bf16"), ("fp32", "no"), ("bf16", "bf16"), ("auto", mixed_precision_for("auto")))
    for precision, expected in sequence:
        accelerator = make_accelerator(TrainingSpec(precision=precision))
        assert accelerator.mixed_precision == expected
        if expected == "bf16":
            with accelerator.autocast():
                assert torch.is_autocast_enabled(accelerator.device.type)
                assert torch.get_autocast_dtype(accelerator.device.type) == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# The wrapper with low-precision weights and under autocast, against PEFT


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch, projection", PARAMS)
def test_bf16_weights_keep_an_fp32_prefix_and_match_peft(device, arch, projection):
    """PEFT's behaviour: the prompt encoder stays fp32 on the base's device, the cache it feeds is cast
    to the base's dtype; logits, loss and the gradient reaching the prefix work in bf16 weights."""
    import peft

    def base():
        return tiny_model(arch).to(device, torch.bfloat16)

    ours = get_peft_model(base(), ours_config(arch, projection))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(base(), peft_config(arch, projection))
    random_prefix(ours)
    copy_prefix(ours, ref)
    params = list(ours.prompt_encoder.parameters())
    assert {(p.dtype, p.device.type) for p in params} == {(torch.float32, device)}
    assert ours.prefix_key_values().dtype == torch.bfloat16
    batch = {k: v.to(device) for k, v in padded_batch(arch).items()}
    got = ours(**batch)
    with torch.no_grad():
        expected = ref(**batch)
        base_only = ours.base_model(**batch)
    assert got.logits.dtype == torch.bfloat16 and math.isfinite(got.loss.item())
    torch.testing.assert_close(got.logits.float(), expected.logits.float(), rtol=0, atol=0.05)
    assert (got.logits.float() - base_only.logits.float()).abs().max() > 0.1  # the prefix is used
    got.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               and p.grad.abs().sum() > 0 for p in params[:1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch, projection", PARAMS)
def test_bf16_autocast_over_fp32_weights_matches_peft(device, arch, projection):
    """What the worker does (fp32 base, accelerate's autocast): a fp32 cache meets bf16 keys inside
    attention; logits close to PEFT's under the same autocast, gradients fp32."""
    import peft

    ours = get_peft_model(tiny_model(arch).to(device), ours_config(arch, projection))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model(arch).to(device), peft_config(arch, projection))
    random_prefix(ours)
    copy_prefix(ours, ref)
    batch = {k: v.to(device) for k, v in padded_batch(arch).items()}
    with torch.no_grad():
        fp32 = ours(**batch).logits
    with torch.autocast(device, dtype=torch.bfloat16):
        got = ours(**batch)
        with torch.no_grad():
            expected = ref(**batch)
    err_ours = (got.logits.float() - fp32).abs().max().item()
    err_peft = (expected.logits.float() - fp32).abs().max().item()
    assert 0 < err_ours <= 1.5 * err_peft + 1e-3, (err_ours, err_peft)  # the parity rule of the GPU check
    got.loss.float().backward()
    grads = [p.grad for p in ours.prompt_encoder.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@torch.no_grad()
def greedy_shortfall(model, prompt: torch.Tensor, out: torch.Tensor, seq2seq: bool) -> float:
    """How far `out`'s generated tokens fall short of greedy under full recomputation with `model`'s
    forward (EOS banned): the largest gap, over positions and rows, between the best logit and the
    chosen token's. 0 for exact greedy; a few 1e-3 where bf16 rounds cached and recomputed keys
    differently (GPU kernels); tenths when the prefix is lost."""
    first = 1 if seq2seq else prompt.shape[1]
    worst = 0.0
    for t in range(first, out.shape[1]):
        if seq2seq:
            logits = model(input_ids=prompt, decoder_input_ids=out[:, :t]).logits[:, -1].float()
        else:
            logits = model(input_ids=out[:, :t]).logits[:, -1].float()
        logits[:, prefixlab.engine.tiny.EOS_ID] = float("-inf")
        chosen = logits.gather(1, out[:, t:t + 1]).squeeze(1)
        worst = max(worst, (logits.max(-1).values - chosen).max().item())
    return worst


GREEDY_BF16_TOLERANCE = 0.05  # a lost prefix falls short by 0.17 or more on every tiny model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_bf16_weights_and_under_autocast(device, arch):
    """Greedy and beam search run with a bf16 base, and with an fp32 base under bf16 autocast; greedy
    with bf16 weights is greedy under our own forward (and the base model's tokens are not)."""
    seq2seq = is_seq2seq(arch)
    prompt = padded_batch(arch)["input_ids"][:2].to(device)  # (2, 7), no padding in the first two rows
    low = get_peft_model(tiny_model(arch).to(device, torch.bfloat16), ours_config(arch, True))
    random_prefix(low)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, suppress_tokens=[prefixlab.engine.tiny.EOS_ID])
    got = low.generate(input_ids=prompt, **kwargs)
    assert greedy_shortfall(low, prompt, got, seq2seq) <= GREEDY_BF16_TOLERANCE
    without_prefix = low.base_model.generate(input_ids=prompt, **kwargs)
    assert greedy_shortfall(low, prompt, without_prefix, seq2seq) > GREEDY_BF16_TOLERANCE  # the check has teeth
    beams = low.generate(input_ids=prompt, max_new_tokens=3, num_beams=2, do_sample=False)
    assert beams.shape[0] == 2
    wide = get_peft_model(tiny_model(arch).to(device), ours_config(arch, False))
    with torch.autocast(device, dtype=torch.bfloat16):
        out = wide.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.device.type == device


# ---------------------------------------------------------------------------------------------
# Device placement: every tensor the wrapper makes goes where its inputs are


@pytest.mark.parametrize("arch", ARCHS)
def test_no_tensor_is_made_on_the_default_device(arch):
    """With the default device set to "meta" and the model on the CPU, a tensor made without device=
    would land on meta and fail when combined with the CPU model: the CPU stand-in for a CPU tensor
    meeting a CUDA model. Forward (mask, positions), greedy generate with and without a mask."""
    model = get_peft_model(tiny_model(arch), ours_config(arch, True))
    random_prefix(model)
    batch = padded_batch(arch)
    prompt = batch["input_ids"][:2]
    with torch.no_grad():
        expected = model(**batch).logits
    extra = {} if is_seq2seq(arch) else {"position_ids": torch.arange(7).expand(3, 7)}
    with torch.device("meta"):
        logits = model(**batch).logits
        positioned = model(**batch, **extra).logits
        greedy = model.generate(input_ids=prompt, max_new_tokens=2, do_sample=False)
        masked = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2,
                                do_sample=False)
    assert logits.device.type == positioned.device.type == greedy.device.type == "cpu"
    torch.testing.assert_close(logits, expected)
    assert torch.equal(greedy, masked)


@pytest.mark.parametrize("device", DEVICES)
def test_prefix_is_created_on_the_base_models_device(device):
    model = get_peft_model(tiny_model("llama").to(device, torch.bfloat16), ours_config("llama", False))
    model.add_adapter("second", ours_config("llama", True))
    assert {p.device.type for p in model.prompt_encoder.parameters()} == {device}
    cache = model.get_prompt(3, "second")
    assert {(layer.keys.device.type, layer.keys.dtype) for layer in cache.layers} == {(device, torch.bfloat16)}
    meta = get_peft_model(tiny_model("gpt2").to("meta"), ours_config("gpt2", True))
    assert {p.device.type for p in meta.prompt_encoder.parameters()} == {"meta"}


# ---------------------------------------------------------------------------------------------
# Saving: fp32 whatever the training precision


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_are_saved_in_fp32_whatever_the_model_dtype(tmp_path, arch):
    model = get_peft_model(tiny_model(arch).to(torch.bfloat16), ours_config(arch, True))
    random_prefix(model)
    expected = model.prompt_encoder["default"].prefix_states().detach()  # fp32 encoder
    model.save_pretrained(str(tmp_path / "from_bf16_base"))
    assert saved_dtype(tmp_path / "from_bf16_base") == torch.float32
    model.to(torch.bfloat16)  # even an encoder the user cast to bf16 is saved as fp32
    assert model.prompt_encoder["default"].embedding.weight.dtype == torch.bfloat16
    model.save_pretrained(str(tmp_path / "bf16_encoder"))
    assert saved_dtype(tmp_path / "bf16_encoder") == torch.float32
    loaded = PrefixTuningModel.from_pretrained(tiny_model(arch), str(tmp_path / "from_bf16_base"))
    torch.testing.assert_close(loaded.prompt_encoder["default"].embedding.weight, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_the_saved_prefix_is_computed_in_fp32_even_under_autocast(tmp_path, device):
    """A save from inside a bf16 training loop must not run the projection MLP in bf16."""
    model = get_peft_model(tiny_model("gpt2").to(device), ours_config("gpt2", True))
    random_prefix(model)
    exact = model.get_prompt_embedding_to_save("default")
    with torch.autocast(device, dtype=torch.bfloat16):
        assert model.prompt_encoder["default"].prefix_states().dtype == torch.bfloat16  # autocast is on
        model.save_pretrained(str(tmp_path))
        inside = model.get_prompt_embedding_to_save("default")
    assert exact.dtype == inside.dtype == torch.float32 and exact.device.type == "cpu"
    assert torch.equal(inside, exact)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("prompt_embeddings"), exact)


def test_worker_in_bf16_autocast_trains_and_saves_fp32(tmp_path, monkeypatch):
    """precision bf16 on CPU: the forward runs under bf16 autocast, losses fall, adapters are fp32."""
    from transformers import GPT2LMHeadModel

    seen = []
    original = GPT2LMHeadModel.forward

    @functools.wraps(original)
    def spy(self, *args, **kwargs):  # the base's forward, whether the variants share a pass or not
        device = self.device.type
        seen.append((torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GPT2LMHeadModel, "forward", spy)
    run = start(tmp_path, tiny_spec(precision="bf16", max_steps=6, eval_interval=6, log_interval=2))
    assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
    assert seen and set(seen) == {(True, torch.bfloat16)}
    summary = run.read_summary()
    assert summary["mixed_precision"] == "bf16"
    for name in ("no_projection", "projection"):
        assert saved_dtype(run.adapter_path(name)) == torch.float32
        losses = [m["loss"] for m in train_lines(run) if m["variant"] == name]
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-t5"])
def test_worker_with_bf16_base_weights_trains_an_fp32_prefix(tmp_path, monkeypatch, model_name):
    """A base loaded in bf16 (load_base(dtype=torch.bfloat16)): the prefix and its optimizer stay fp32,
    training works, the saved adapter is fp32 and loads onto the fp32 base."""
    from prefixlab.engine import zoo

    original_load = zoo.load_base
    monkeypatch.setattr(zoo, "load_base", lambda name, **kw: original_load(name, dtype=torch.bfloat16))
    jobs = []
    original_train = Job.train
    monkeypatch.setattr(Job, "train", lambda self: (jobs.append(self), original_train(self))[1])
    spec = tiny_spec(precision="fp32", max_steps=4, eval_interval=4, log_interval=2)
    spec.model.name = model_name
    run = start(tmp_path, spec)
    assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
    job = jobs[0]
    assert {p.dtype for p in job.peft.base_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in job.peft.prompt_encoder.parameters()} == {torch.float32}
    for v in job.variants:
        assert {s["exp_avg"].dtype for s in v.optimizer.state.values()} == {torch.float32}
    arch = model_name.removeprefix("tiny-")
    for name in ("no_projection", "projection"):
        assert saved_dtype(run.adapter_path(name)) == torch.float32
        loaded = PrefixTuningModel.from_pretrained(tiny_model(arch), str(run.adapter_path(name)))
        torch.testing.assert_close(loaded.prompt_encoder["default"].embedding.weight,
                                   job.peft.prompt_encoder[name].prefix_states().detach().float().cpu())


# ---------------------------------------------------------------------------------------------
# fp16 loss scaling: accelerate's CUDA GradScaler, played by torch's CPU GradScaler


def on_cpu(monkeypatch) -> None:
    """Train on the CPU even where CUDA exists: exact comparisons need a deterministic device."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")


def with_scaler(monkeypatch, **scaler_kwargs) -> list:
    """Make the worker's accelerator (on the CPU) scale losses as accelerate does for fp16 on CUDA
    (autocast stays off: the CPU has no fp16 autocast to speak of); returns the list the jobs are
    appended to."""
    on_cpu(monkeypatch)
    original = train_module.make_accelerator
    jobs = []

    def make(training):
        accelerator = original(training)
        accelerator.scaler = torch.amp.GradScaler("cpu", **scaler_kwargs)
        return accelerator

    monkeypatch.setattr(train_module, "make_accelerator", make)
    original_train = Job.train
    monkeypatch.setattr(Job, "train", lambda self: (jobs.append(self), original_train(self))[1])
    return jobs


def losses_of(run) -> list[tuple[str, int, float]]:
    return [(m["variant"], m["step"], m["loss"]) for m in train_lines(run)]


def test_each_variant_has_its_own_loss_scale_so_accumulated_gradients_are_exact(tmp_path, monkeypatch):
    """With a power-of-two scale, scaled-then-unscaled gradients are exactly the fp32 ones, so the run
    must match an unscaled run. A scale shared by the variants (accelerate's one scaler) changes when
    the first variant steps (here: doubles after every good step), between the second variant's
    accumulated backward passes, and its gradients come out wrong."""
    # One pass per variant in both runs: fp16's scalers run the variants one by one, and the base's
    # dropout draws its masks in the order the passes run.
    spec = dict(max_steps=4, eval_interval=4, gradient_accumulation_steps=2, log_interval=1, fused=False)
    on_cpu(monkeypatch)
    plain = start(tmp_path, tiny_spec(**spec), "plain")
    assert run_worker(plain.path, progress=False) == DONE
    jobs = with_scaler(monkeypatch, init_scale=2.0**4, growth_interval=1)
    scaled = start(tmp_path, tiny_spec(**spec), "scaled")
    assert run_worker(scaled.path, progress=False) == DONE, scaled.read_status()["error"]
    job = jobs[0]
    assert job.accelerator.device.type == "cpu" and job.accelerator.mixed_precision == "no"
    scalers = [v.scaler for v in job.variants]
    assert all(s is not None for s in scalers) and scalers[0] is not scalers[1]
    assert [v.optimizer.scaler for v in job.variants] == scalers
    assert all(s.get_scale() == 2.0**4 * 2**4 for s in scalers)  # 4 good steps each, doubling after each
    assert all(v.skipped_steps == 0 for v in job.variants)
    expected = losses_of(plain)
    assert [(v, s) for v, s, _ in losses_of(scaled)] == [(v, s) for v, s, _ in expected]
    for (_, _, got), (_, _, want) in zip(losses_of(scaled), expected):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_overflowing_steps_are_skipped_and_counted_and_the_run_goes_on(tmp_path, monkeypatch):
    """The first two steps' gradients overflow (made infinite as they arrive; a huge loss scale alone
    overflows only where some gradient exceeds fp32's range over the scale, which depends on the
    weights and the torch version): those steps are skipped (parameters and learning-rate schedule
    untouched, the scale halves each time) and the run still logs every step and finishes."""
    jobs = with_scaler(monkeypatch)  # torch's defaults: scale 2**16, doubled after 2000 good steps
    watched = []
    original = Job._train_variant

    def watch(self, variant, batch):
        params = variant.optimizer.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]
        skipped, lr = variant.skipped_steps, variant.scheduler.get_last_lr()[0]
        overflow = self.step < 2
        hooks = [p.register_hook(torch.full_like(p, math.inf).__add__) for p in params[:1]] if overflow else []
        original(self, variant, batch)
        for hook in hooks:
            hook.remove()
        watched.append((variant.name, overflow, variant.skipped_steps > skipped,
                        all(torch.equal(a, b) for a, b in zip(before, params)),
                        variant.scheduler.get_last_lr()[0] == lr))

    monkeypatch.setattr(Job, "_train_variant", watch)
    run = start(tmp_path, tiny_spec(max_steps=8, eval_interval=8, log_interval=1))
    assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
    job = jobs[0]
    for v in job.variants:
        assert v.skipped_steps == 2, (v.name, v.skipped_steps)
        assert v.scaler.get_scale() == 2.0**16 / 4
        # linear decay to 0 over 8 steps, advanced only by the 6 steps that were taken
        assert v.scheduler.get_last_lr()[0] == pytest.approx(0.2 * 2 / 8)
    assert len(watched) == 16
    for name, overflow, skipped, unchanged, same_lr in watched:
        assert overflow == skipped == unchanged == same_lr, (name, overflow, skipped, unchanged, same_lr)
    assert run.read_status()["step"] == 8
    assert [(m["variant"], m["step"]) for m in train_lines(run)] == [
        (v, s) for s in range(1, 9) for v in ("no_projection", "projection")]
    assert all(math.isfinite(m["loss"]) for m in train_lines(run))
    log = run.log_tail(200)
    assert "no_projection: fp16 gradients overflowed at step 2; step skipped, loss scale now 16384" in log
    assert "projection: the fp16 loss scaler skipped 2 of 8 optimizer steps" in log


# ---------------------------------------------------------------------------------------------
# Memory: nothing of a finished job stays referenced (on CUDA: its memory goes back to the baseline)


@pytest.mark.parametrize("outcome", [DONE, FAILED])
def test_a_finished_worker_leaves_nothing_behind(tmp_path, monkeypatch, outcome):
    """Run the same job twice in this process: after each, nothing of it is referenced any more,
    and on CUDA the memory torch holds for tensors is the same after both (the first run may leave
    process-wide things such as cuBLAS workspaces; a leaked job would add its model every time)."""
    refs = []
    original_train = Job.train

    def train(self):
        refs.extend(weakref.ref(obj) for obj in (self.peft, self.accelerator, self.variants[0].optimizer.optimizer))
        if outcome == FAILED:
            raise RuntimeError("boom")
        return original_train(self)

    monkeypatch.setattr(Job, "train", train)
    allocated = []
    for name in ("first", "second"):
        run = start(tmp_path, tiny_spec(max_steps=2, eval_interval=2), name)
        assert run_worker(run.path, progress=False) == outcome
        gc.collect()
        assert refs and all(ref() is None for ref in refs)
        refs.clear()
        allocated.append(torch.cuda.memory_allocated() if torch.cuda.is_available() else 0)
    assert allocated[1] == allocated[0]
