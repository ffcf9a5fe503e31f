"""The training worker: one base model, every variant an adapter on it, trained in lockstep.

Life of a job (torchtune's recipe shape): setup (load the base once, one adapter + AdamW + linear
warmup schedule per variant, data), train (each batch through every variant: the prefix variants in
one fused pass of the base where that is exact (training.fused), else one pass each, the fine_tune
baseline on its own copy; a stop flag checked every step; validation loss and task metrics every
eval_interval), save (adapters in PEFT format, the baseline's model, samples, summary), cleanup
(final state in status.json). Everything the page shows is written into the run
directory (see runs.py); training reports through the small `Logger` interface and never imports
Gradio.

`accelerate` does device placement (CUDA, else Apple MPS, else CPU), mixed precision and gradient
accumulation, so the same worker runs on several GPUs under `accelerate launch -m prefixlab train`;
which device and precision a job gets is decided in devices.py.
"""

from __future__ import annotations

import errno
import copy
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from prefixlab.core.config import TaskType
from prefixlab.engine.generation import generate_outputs, prompts_for
from prefixlab.engine.loggers import JsonlLogger, Logger, ProgressBarLogger, report_loggers
from prefixlab.engine.spec import ExperimentSpec, SpecError, TrainingSpec
from prefixlab.engine.devices import make_accelerator, peak_gpu_memory, release_gpu_memory
from prefixlab.engine.limits import clip
from prefixlab.engine.runs import (CANCELLED, DONE, FAILED, RUNNING, RunDir, RunFileError, append_jsonl,
                                   atomic_write_json, describe_os_error, naming, overwrite_json, read_json,
                                   worker_lock)

HEARTBEAT_INTERVAL_S = 2.0


class TrainingDiverged(RuntimeError):
    """A variant's loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# Status: one writer shared by the train loop and a heartbeat thread.
# ---------------------------------------------------------------------------------------------


class StatusWriter:
    """Serialises status.json updates and refreshes its heartbeat from a daemon thread, so the
    queue can tell a slow step (model download, a big eval) from a dead worker."""

    def __init__(self, run: RunDir, stop: threading.Event, interval: float = HEARTBEAT_INTERVAL_S,
                 enabled: bool = True):
        self.run, self.stop, self.enabled = run, stop, enabled  # disabled: a non-main process
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
        self._written: dict = {}  # everything this worker has put in status.json

    def start(self, **changes) -> None:
        self.update(**changes)
        if self.enabled:
            self._thread.start()

    def update(self, **changes) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._written.update(changes)
            try:
                self.run.update_status(**changes, heartbeat=time.time())
            except RunFileError:  # bad content, not ours: the worker owns the file, so it rewrites it
                now = time.time()
                self._write({**self._written, "heartbeat": now, "updated_at": now})
            except OSError:  # cannot read it, or cannot write a new one (a full disk): say what we know
                now = time.time()
                try:
                    current = read_json(self.run.status_path) or {}
                except (OSError, RunFileError):
                    current = {}
                self._write({**current, **self._written, "heartbeat": now, "updated_at": now})

    def _write(self, status: dict) -> None:
        """status.json replaced atomically, or, when that fails (no space for a temp file), overwritten
        in place: a failed run must still say why."""
        try:
            atomic_write_json(self.run.status_path, status)
        except OSError:
            overwrite_json(self.run.status_path, status)

    def _beat(self, interval: float) -> None:
        while not self._done.wait(interval):
            if self.run.cancel_requested():  # a Stop sent before our SIGTERM handler existed
                self.stop.set()
            try:
                self.update()
            except OSError as err:  # RunFileUnreadable, a full disk: this beat is lost, the next retries
                print(f"prefixlab worker: heartbeat not written ({err})", file=sys.stderr)

    def finish(self, **changes) -> None:
        self._done.set()
        self.update(**changes, finished_at=time.time())


INTERRUPTED_TWICE = "interrupted twice (Ctrl-C); stopped without saving the last steps"


def install_stop_handler() -> tuple[threading.Event, dict]:
    """SIGTERM (the page's Stop) and Ctrl-C set a flag the loop checks every step; returns the flag
    and the previous handlers, for `restore_handlers`."""
    stop = threading.Event()

    def on_interrupt(*_):
        if stop.is_set():  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_interrupt)
    return stop, previous


def is_main_process() -> bool:
    """Rank 0, or the only process. Read from the launcher's environment because status.json is
    written before the Accelerator exists."""
    return os.environ.get("RANK", "0") == "0"


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------------



def total_steps(training: TrainingSpec, batches_per_epoch: int) -> int:
    """Optimizer steps: max_steps if set, else epochs x (batches / accumulation), at least 1."""
    if training.max_steps is not None:
        return training.max_steps
    per_epoch = math.ceil(batches_per_epoch / training.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * training.num_epochs))


def describe_error(err: BaseException, spec: ExperimentSpec | None) -> str:
    """The one-line error for status.json; out-of-memory gets the fix."""
    # torch.cuda.OutOfMemoryError is torch.OutOfMemoryError where that exists; MPS raises a RuntimeError.
    # The CPU allocator raises a RuntimeError "... DefaultCPUAllocator: can't allocate memory ...".
    text = str(err).lower()
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        hint = ""
        if spec is not None:
            prefixes = [v.prefix for v in spec.variants]
            sizes = [f"batch_size={spec.training.batch_size}", f"max_length={spec.training.max_length}",
                     f"num_virtual_tokens={max(p.num_virtual_tokens for p in prefixes)}"]
            hidden = [p.encoder_hidden_size for p in prefixes if p.prefix_projection and p.encoder_hidden_size]
            sizes += [f"encoder_hidden_size={max(hidden)}"] if hidden else []
            hint = f" (now {', '.join(sizes)})"
        # "MPS backend out of memory ..." on Apple GPUs
        where = "MPS" if "mps" in text else "CPU" if "can't allocate memory" in text else "CUDA"
        return (f"{where} out of memory: use a smaller training.batch_size or training.max_length, or a smaller "
                f"prefix{hint}; raise training.gradient_accumulation_steps to keep the effective batch")
    if isinstance(err, SpecError):  # already names the field and the fix
        return str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return describe_os_error(err)  # a disk that fills or turns read-only mid-run: only writes meet these
    if isinstance(err, KeyboardInterrupt):  # install_stop_handler: the first Ctrl-C stops gracefully
        return INTERRUPTED_TWICE
    return f"{type(err).__name__}: {err}"


@dataclass
class VariantState:
    """One variant's optimizer, schedule and running statistics since the last log line."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: object
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    last_loss: float | None = None
    last_eval_loss: float | None = None
    last_eval_step: int | None = None
    total_tokens: int = 0
    total_seconds: float = 0.0
    scaler: object = None  # fp16: this variant's own GradScaler (see Job._own_loss_scales)
    skipped_steps: int = 0  # fp16: optimizer steps the scaler skipped for inf/NaN gradients
    model: object = None  # the fine-tuning baseline's own copy of the base (prefix variants: None)
    last_metrics: dict | None = None  # task metrics at the last evaluation (training.metrics)
    last_metrics_step: int | None = None

    def record(self, loss: float, tokens: int, seconds: float) -> None:
        self.losses.append(loss)
        self.tokens += tokens
        self.seconds += seconds

    def flush(self) -> tuple[float, float]:
        """(mean loss, tokens/s) since the last flush, then reset the window."""
        loss = sum(self.losses) / len(self.losses)
        speed = self.tokens / self.seconds if self.seconds > 0 else 0.0
        self.last_loss = loss
        self.total_tokens += self.tokens
        self.total_seconds += self.seconds
        self.losses, self.tokens, self.seconds = [], 0, 0.0
        return loss, speed


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


class Job:
    """setup() -> train() -> save(); the caller (run_worker) does cleanup and status."""

    def __init__(self, spec: ExperimentSpec, run: RunDir, stop: threading.Event,
                 status: StatusWriter | None = None, loggers: list[Logger] | None = None):
        self.spec, self.run, self.stop, self.status = spec, run, stop, status
        self.loggers = loggers if loggers is not None else []
        self.step = 0
        self.started = time.time()
        self.num_truncated = 0
        self.metric_seconds = 0.0  # generating and scoring for task metrics, all evaluations together
        self.base_metrics: dict | None = None

    def say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            self.run.log(message)
            if sys.stdout.isatty():
                print(message, flush=True)

    # --- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Accelerator, base model (loaded once) with one adapter per variant, data, optimizers."""
        from accelerate.utils import set_seed

        training = self.spec.training
        self.accelerator = make_accelerator(training)
        self.say(f"device {self.accelerator.device}, mixed precision {self.accelerator.mixed_precision}")
        set_seed(training.seed)
        from prefixlab.engine.zoo import load_base

        base, self.tokenizer, self.task_type = load_base(self.spec.model.name)
        self.say(f"loaded base model {self.spec.model.name} ({TaskType(self.task_type).value})")
        self.train_loader, self.eval_loader = self._data_loaders()
        # The baseline's own copy, taken before the prefixes freeze the base (no random numbers drawn:
        # the prefixes start where they would without it).
        tuned = copy.deepcopy(base).requires_grad_(True) if self.spec.fine_tune else None
        model = self._build_model(base, self._checked_configs(base))
        if training.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if len(self.train_loader) == 0:
            raise ValueError(f"data.source {self.spec.data.source!r}: the train split has no examples; "
                             "add some or check data.max_train_examples")
        self.total_steps = total_steps(training, len(self.train_loader))
        names = [v.name for v in self.spec.prefix_variants]
        optimizers, schedulers = zip(*(self._optimizer(model, name) for name in names))
        extra = []
        if tuned is not None:  # the baseline: every parameter, its own learning rate, the same schedule
            extra = [tuned, *self._schedule(torch.optim.AdamW(tuned.parameters(), lr=training.fine_tune_learning_rate,
                                                              weight_decay=training.weight_decay))]
        prepared = self.accelerator.prepare(model, self.train_loader, self.eval_loader, *optimizers, *schedulers,
                                            *extra)
        self.model, self.train_loader, self.eval_loader = prepared[:3]
        n = len(optimizers)
        self.variants = [VariantState(name, opt, sched) for name, opt, sched
                         in zip(names, prepared[3:3 + n], prepared[3 + n:3 + 2 * n])]
        if tuned is not None:
            self.variants.append(VariantState(self.spec.fine_tune.name, *prepared[3 + 2 * n + 1:], model=prepared[3 + 2 * n]))
        self.variants.sort(key=lambda v: self.spec.variant_names.index(v.name))  # the spec's order
        self.peft = self.accelerator.unwrap_model(self.model)
        self.causal = TaskType(self.task_type) == TaskType.CAUSAL_LM
        self._own_loss_scales()
        self.groups = self._pass_groups()
        if self.status:
            self.status.update(total_steps=self.total_steps)
        self.say(f"{len(self.variants)} variant(s) {self.spec.variant_names}, {self.total_steps} steps, "
                 f"{len(self.train_loader)} batches per epoch")

    def _own_loss_scales(self) -> None:
        """fp16: give every variant its own GradScaler. accelerate keeps one for the run and updates
        it after each optimizer's step, so with two variants the first one's update (a halving after
        an overflow, a doubling after growth_interval good steps) would change the scale between the
        second one's backward passes of the same accumulation window, and its gradients would be
        unscaled by the wrong factor; one variant's overflow would also shrink the other's scale."""
        shared = self.accelerator.scaler
        if shared is None:  # bf16 and fp32 need no loss scaling
            return
        for v in self.variants:
            v.scaler = copy.deepcopy(shared)  # same kind and settings, fresh state
            v.optimizer.scaler = v.scaler  # the prepared optimizer's step() unscales, steps and updates it

    def _checked_configs(self, base) -> list:
        """Before any training, the spec's one check (engine.checks) against the loaded model and the
        real prompts (lengths past the model's position table would fail deep inside it, generation
        at the very end, after all the training); returns each variant's config, sizes filled."""
        from prefixlab.engine import checks
        from prefixlab.engine.data import encode_prompts

        lengths = [encode_prompts([source], self.tokenizer, self.task_type, self.spec.data.separator,
                                  max_length=self.spec.training.max_length)["input_ids"].shape[1]
                   for source, _ in prompts_for(self.spec, self.test_examples)]
        checked = checks.check(self.spec, model_config=base.config, prompt_lengths=lengths, data=False)
        if checked.errors:
            raise SpecError(checked.errors)
        return [checked.filled[v.name] for v in self.spec.prefix_variants]

    def _build_model(self, base, configs: list):
        """The frozen base with every variant's prefix; prefixes initialise from the seed in variant
        order, so a spec always starts from the same weights."""
        from prefixlab.core.model import get_peft_model

        model = None
        for name, config in zip([v.name for v in self.spec.prefix_variants], configs):
            if model is None:
                model = get_peft_model(base, config, adapter_name=name)
            else:
                model.add_adapter(name, config)
        for name in model.adapters_awaiting_text_init:  # prefix_tuning_init="TEXT" (Li & Liang 2021, sec. 7.3)
            done = model.init_prefix_from_text(name, tokenizer=self.tokenizer)
            self.say(f"variant {name}: prefix from the activations of "
                     f"{model.peft_config[name].prefix_tuning_init_text!r} ({done['text_tokens']} tokens -> "
                     f"{done['virtual_tokens']} virtual tokens, max abs error {done['max_abs_error']:.1e})")
        return model

    def _optimizer(self, model, name: str):
        """AdamW over one adapter's parameters, with linear warmup then linear decay to 0."""
        training = self.spec.training
        names = set(model.trainable_parameter_names(name))
        params = [p for n, p in model.named_parameters() if n in names]
        return self._schedule(torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay))

    def _schedule(self, optimizer):
        """(optimizer, its linear warmup then linear decay to 0 over the run's steps). Under
        `accelerate launch` the prepared scheduler steps once per process at every optimizer step
        (accelerate counts samples, not steps), so the schedule is that many times longer: the
        learning rate at each step is the one-process run's."""
        from transformers import get_linear_schedule_with_warmup

        processes = self.accelerator.num_processes
        return optimizer, get_linear_schedule_with_warmup(optimizer, self.spec.training.warmup_steps * processes,
                                                          self.total_steps * processes)

    def _data_loaders(self) -> tuple[DataLoader, DataLoader]:
        from prefixlab.engine.data import Collator, encode_examples, load_task

        spec = self.spec
        splits = load_task(spec.data)  # capped to data.max_train_examples / max_eval_examples
        train, validation = splits["train"], splits["validation"]
        self.test_examples = splits["test"] or validation or train  # samples' prompts, held-out first
        self.metric_examples = validation[: spec.training.metric_examples]  # task metrics at each evaluation
        if not validation:
            self.say(f"data.source {spec.data.source!r} has no validation examples: no validation loss and no "
                     "task metrics (give the task a validation split)")
        elif self.metric_examples:
            self.say(f"task metrics {', '.join(spec.training.metrics)} on the first {len(self.metric_examples)} "
                     "validation example(s) at every evaluation (training.metric_examples)")

        def encode(examples: list[dict], split: str):
            return encode_examples(examples, self.tokenizer, self.task_type, spec.training.max_length,
                                   spec.data.separator, split=split)

        train_enc = encode(train, "train")
        eval_enc = encode(validation, "validation") if validation else None
        self.num_truncated = train_enc.num_truncated + (eval_enc.num_truncated if eval_enc else 0)
        if self.num_truncated:
            self.say(f"{self.num_truncated} example(s) truncated to max_length={spec.training.max_length}")
        collate = Collator(self.tokenizer.pad_token_id, self.task_type)
        # The same generator seed gives the same batch order in every run of this spec.
        order = torch.Generator().manual_seed(spec.training.seed)
        train_loader = DataLoader(train_enc.features, batch_size=spec.training.batch_size, shuffle=True,
                                  generator=order, collate_fn=collate)
        eval_loader = DataLoader(eval_enc.features if eval_enc else [], batch_size=spec.training.batch_size,
                                 collate_fn=collate)
        return train_loader, eval_loader

    def _pass_groups(self) -> list[list[VariantState]]:
        """The variants that share one pass of the base (core.fused): all of them where that is exact,
        else one pass each, with the reason in the log."""
        from prefixlab.core.fused import fusable

        prefixes = [v for v in self.variants if v.model is None]
        baseline = [[v] for v in self.variants if v.model is not None]  # its own model: its own pass
        singles = [[v] for v in prefixes] + baseline
        if len(prefixes) < 2:
            return singles
        why = ("training.fused is off" if not self.spec.training.fused
               else "fp16 gives each variant its own loss scale" if self.accelerator.scaler is not None
               else fusable(self.peft, [v.name for v in prefixes]))
        if why:
            self.say(f"one pass of the base per variant: {why}")
            return singles
        self.say(f"variants {[v.name for v in prefixes]} share one pass of the base (training.fused)")
        return [prefixes] + baseline

    # --- train ----------------------------------------------------------------------------------

    def train(self) -> None:
        """Lockstep: every batch goes through every variant before the next batch."""
        self.model.train()
        batches = len(self.train_loader)
        micro = 0
        self.evaluate()  # step 0: where each curve starts, before any training
        while self.step < self.total_steps and not self._stop_requested():
            for batch in self.train_loader:
                with self.accelerator.accumulate(self.model, *self._tuned_models()):
                    for group in self.groups:
                        if len(group) == 1:
                            self._train_variant(group[0], batch)
                        else:
                            self._train_fused(group, batch)
                micro += 1
                if self.accelerator.sync_gradients:
                    self.step += 1
                    self._after_step(epoch=micro / batches)
                # A stop waits for the optimizer step in progress (all its accumulated batches).
                if self.step >= self.total_steps or (self.accelerator.sync_gradients and self._stop_requested()):
                    break
        if self.stop.is_set():
            self.say(f"stop requested: finishing at step {self.step}")
        for v in self.variants:
            if v.skipped_steps:
                self.say(f"variant {v.name}: the fp16 loss scaler skipped {v.skipped_steps} of {self.step} "
                         "optimizer steps (inf/NaN gradients)")

    def _tuned_models(self) -> list:
        return [v.model for v in self.variants if v.model is not None]

    def _stop_requested(self) -> bool:
        """The stop flag, agreed by all processes under `accelerate launch` (one rank may get the
        signal or see the cancel file first; a rank that stopped alone would hang the others)."""
        if self.accelerator.num_processes == 1:
            return self.stop.is_set()
        flag = torch.tensor(float(self.stop.is_set()), device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            self.stop.set()
        return self.stop.is_set()

    def _train_variant(self, variant: VariantState, batch: dict) -> None:
        """One pass for one variant (training.fused off or not exact, fp16, or the baseline)."""
        if variant.scaler is not None:
            self.accelerator.scaler = variant.scaler  # accelerator.backward scales the loss with it
        self._train_group([variant], batch)

    def _train_fused(self, group: list[VariantState], batch: dict) -> None:
        """One pass of the base for every variant of `group` (core.fused): backward through the sum of
        their losses gives each its own gradient, then each steps its own optimizer."""
        self._train_group(group, batch)

    def _train_group(self, group: list[VariantState], batch: dict) -> None:
        start = time.perf_counter()
        losses = self._losses(group, batch, self._share(batch))
        self.accelerator.backward(torch.stack(losses).sum())
        for v in group:
            v.optimizer.step()  # fp16: unscales first, skips the step on inf/NaN gradients
            v.scheduler.step()  # accelerate does not advance the schedule past a skipped step
            v.optimizer.zero_grad(set_to_none=True)
        # One host sync per pass, after the optimizer steps: on a GPU it waits for all the work queued
        # before it (backward and steps included), so the time recorded is this pass's own.
        values = self._across_processes(torch.stack(losses).detach(), "sum").tolist()
        seconds = (time.perf_counter() - start) / len(group)  # a shared pass: each variant its share
        tokens = int(batch["attention_mask"].sum())
        for v, value in zip(group, values):
            self._check_finite(v, value)
            if v.scaler is not None and self.accelerator.sync_gradients and v.optimizer.step_was_skipped:
                v.skipped_steps += 1
                self.say(f"variant {v.name}: fp16 gradients overflowed at step {self.step + 1}; step skipped, "
                         f"loss scale now {v.scaler.get_scale():g}")
            v.record(value, tokens, seconds)

    def _losses(self, group: list[VariantState], batch: dict, num_items) -> list[torch.Tensor]:
        """Each variant's loss on `batch`: the sum over its target tokens divided by `num_items`.
        Prefix variants go through the (prepared, perhaps distributed) model's forward, one pass for
        the group; the baseline through its own model."""
        from prefixlab.core.fused import token_loss

        if group[0].model is not None:
            logits = group[0].model(**batch).logits
            return [token_loss(logits, batch["labels"], self.causal, num_items)]
        return self.model(adapter_names=[v.name for v in group], num_items_in_batch=num_items, **batch).losses

    def _share(self, batch: dict):
        """The count this process divides its loss sums by: every process's target tokens together,
        over the number of processes. Gradients are averaged over processes, so the step is that of
        the mean over all the batch's tokens, as one process with the whole batch would take; and
        the sum of the processes' losses (_across_processes) is that mean."""
        from prefixlab.core.fused import target_tokens

        count = target_tokens(batch["labels"], self.causal)
        if self.accelerator.num_processes == 1:
            return count
        return self.accelerator.reduce(count, reduction="sum") / self.accelerator.num_processes

    def _across_processes(self, values: torch.Tensor, reduction: str) -> torch.Tensor:
        """`values` combined over the processes of `accelerate launch` (as they are with one)."""
        if self.accelerator.num_processes == 1:
            return values.float()
        values = self.accelerator.reduce(values.float(), reduction=reduction)
        return values / self.accelerator.num_processes if reduction == "sum" else values

    def _check_finite(self, variant: VariantState, value: float) -> None:
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"variant {variant.name}: loss is {value} at step {self.step + 1}; lower "
                f"training.learning_rate (now {self.spec.training.learning_rate}) or use precision fp32")

    def _after_step(self, epoch: float) -> None:
        training = self.spec.training
        if self.step % training.log_interval == 0 or self.step == self.total_steps:
            for v in self.variants:
                loss, speed = v.flush()
                self._log({"variant": v.name, "epoch": round(epoch, 4), "loss": loss,
                           "lr": v.scheduler.get_last_lr()[0],
                           "tokens_per_s": speed * self.accelerator.num_processes})
        if self.step % training.eval_interval == 0 or self.step == self.total_steps:
            self.evaluate()
            self.save_adapters()  # checkpoint: what a crash or kill leaves behind
        if self.status and self.accelerator.is_main_process:
            self.status.update(step=self.step)

    def _log(self, metrics: dict) -> None:
        if self.accelerator.is_main_process:
            for logger in self.loggers:
                logger.log(self.step, metrics)

    @torch.no_grad()
    def evaluate(self) -> None:
        """Each variant's validation loss: the mean over every target token of the validation split
        (all processes' shares together)."""
        if len(self.eval_loader) == 0:
            return
        from prefixlab.core.fused import target_tokens

        self.model.eval()
        for tuned in self._tuned_models():
            tuned.eval()
        sums = torch.zeros(len(self.variants), device=self.accelerator.device)
        index = {v.name: i for i, v in enumerate(self.variants)}
        count = torch.zeros((), device=self.accelerator.device)
        for batch in self.eval_loader:
            count += target_tokens(batch["labels"], self.causal)
            for group in self.groups:
                for v, loss in zip(group, self._losses(group, batch, num_items=1)):  # sums over tokens
                    sums[index[v.name]] += loss.detach().float()
        if self.accelerator.num_processes > 1:
            sums, count = self.accelerator.reduce(sums, "sum"), self.accelerator.reduce(count, "sum")
        for v, mean in zip(self.variants, (sums / count).tolist()):
            v.last_eval_loss, v.last_eval_step = mean, self.step
            self._log({"variant": v.name, "eval_loss": mean})
        self.task_metrics()
        self.model.train()
        for tuned in self._tuned_models():
            tuned.train()

    def task_metrics(self) -> None:
        """Generate for the first training.metric_examples validation examples with every variant (and
        the base model without a prefix at step 0), score them (engine.metrics) and log one line per
        model. The first process only; the random state is put back, so a run's batches, dropout and
        losses are those of the same run without metrics."""
        if not self.metric_examples or not self.accelerator.is_main_process:
            return
        from prefixlab.engine.evaluate import generate_split
        from prefixlab.engine.metrics import score

        started = time.perf_counter()
        sources = [e["source"] for e in self.metric_examples]
        references = [e["target"] for e in self.metric_examples]
        prefixes = [v.name for v in self.variants if v.model is None]
        models = {v.name: self.accelerator.unwrap_model(v.model) for v in self.variants if v.model is not None}
        device = self.accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), self.accelerator.autocast():
            outputs = generate_split(self.peft, self.tokenizer, self.task_type, self.spec, sources, prefixes, device,
                                     batch_size=min(len(sources), 32), models=models, base=self.step == 0)
        by_name = {v.name: v for v in self.variants}
        for name, predictions in outputs.items():
            scores = score(predictions, references, sources, self.spec.training.metrics)
            if self.step == 0 and scores.absent and name == next(iter(outputs)):
                self.say("task metrics left out: " + "; ".join(f"{m}: {why}" for m, why in scores.absent.items()))
            if name == "base":
                self.base_metrics = dict(scores)
            else:
                by_name[name].last_metrics, by_name[name].last_metrics_step = dict(scores), self.step
            self._log({"variant": name, "metric_examples": len(sources), **scores})
        self.metric_seconds += time.perf_counter() - started

    # --- save -----------------------------------------------------------------------------------

    def save_adapters(self) -> None:
        """Each variant into adapters/<variant>/ (PEFT format, fp32; the fine_tune baseline into
        models/<variant>/), published file by file with os.replace (`publish`), so the folder always
        holds a whole checkpoint, the previous one or the new one."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        base = card_base(self.spec.model.name)
        for v in self.variants:
            if v.model is not None:
                save_model(self.accelerator.unwrap_model(v.model), self.run.model_path(v.name))
            else:
                save_adapter(self.peft, v.name, self.run.adapter_path(v.name), training=self.card_section(v),
                             base=base)

    def card_section(self, v: VariantState) -> str:
        """The adapter card's "Training" section: the run, this checkpoint's losses, and the spec."""
        spec, t = self.spec, self.spec.training
        about = f": {' '.join(spec.description.split())}" if spec.description.strip() else ""
        data = spec.data
        lines = [
            "## Training", "",
            f"Variant `{v.name}` of the prefixlab experiment `{spec.name}`{about or '.'}", "",
            f"- base model: `{spec.model.name}`",
            f"- data: `{data.source}` (`{data.source_column}` -> `{data.target_column}`)",
            f"- this checkpoint: step {self.step} of {self.total_steps}; batch size {t.batch_size} x "
            f"{t.gradient_accumulation_steps} accumulation steps, learning rate {t.learning_rate:g} "
            f"(warm-up {t.warmup_steps}, then linear decay), weight decay {t.weight_decay:g}, max length "
            f"{t.max_length}, seed {t.seed}, mixed precision {self.accelerator.mixed_precision}",
        ]
        if v.last_loss is not None:
            lines.append(f"- training loss (mean of the last logged steps): {v.last_loss:.4f}")
        if v.last_eval_loss is not None:
            lines.append(f"- validation loss at step {v.last_eval_step}: {v.last_eval_loss:.4f}")
        return "\n".join([*lines, "", "The experiment, which `python -m prefixlab train spec.json` runs again "
                           "(both variants, from the start):", "", "```json", spec.to_json(), "```"])

    def write_samples(self) -> None:
        """samples.jsonl: the base model and every variant on the same prompts."""
        if not self.accelerator.is_main_process:
            return
        self.model.eval()
        self.run.samples_path.unlink(missing_ok=True)  # a rerun of the same folder starts over
        prompts = prompts_for(self.spec, self.test_examples)
        for source, reference in prompts:
            with self.accelerator.autocast():
                # Prompts come from the spec (checked) or the task file (each record under MAX_LINE_CHARS).
                outputs = generate_outputs(self.peft, self.tokenizer, self.task_type, self.spec, source,
                                           [v.name for v in self.variants if v.model is None],
                                           self.accelerator.device, limit_prompt=False,
                                           models={v.name: self.accelerator.unwrap_model(v.model)
                                                   for v in self.variants if v.model is not None})
            # Clipped: the page reads this file every second and shows it whole.
            append_jsonl(self.run.samples_path, {
                "prompt": clip(source), "reference": None if reference is None else clip(reference),
                "outputs": {name: clip(text) for name, text in outputs.items()}})
        self.say(f"wrote {len(prompts)} sample(s)")

    def summary(self) -> dict:
        from prefixlab.core.config import prefix_parameter_counts

        base_total = sum(p.numel() for p in self.peft.base_model.parameters())
        variants = {}
        for v in self.variants:
            if v.model is not None:  # the baseline: all of its copy trains and is stored
                counts = {"trainable": base_total, "stored": base_total,
                          "formula": "every parameter of a copy of the base (full fine-tuning)"}
                total = base_total
                weights = self.accelerator.unwrap_model(v.model).parameters()
            else:
                counts = prefix_parameter_counts(self.peft.peft_config[v.name])
                total = base_total + counts["trainable"]
                weights = self.peft.prompt_encoder[v.name].parameters()
            if v.losses:  # a partial log window at a stop request
                v.flush()
            variants[v.name] = {
                "trainable": counts["trainable"], "stored": counts["stored"],
                "total": total, "formula": counts["formula"],
                "final_train_loss": v.last_loss, "final_eval_loss": v.last_eval_loss,
                "tokens_per_s": v.total_tokens / v.total_seconds if v.total_seconds else None,
                "metrics": v.last_metrics, "metrics_step": v.last_metrics_step,
                # Measured from the tensors: the variant's own weights and its AdamW state (the frozen
                # base the prefixes share is not counted; the baseline's copy is).
                "train_state_bytes": _bytes(weights) + _bytes(t for s in v.optimizer.state.values()
                                                              for t in s.values() if torch.is_tensor(t)),
            }
        wall = time.time() - self.started
        return {"variants": variants, "steps": self.step, "total_steps": self.total_steps,
                "wall_time_s": wall, "num_truncated": self.num_truncated,
                # Task metrics: the untuned base at step 0, and the time their generations took.
                "base_metrics": self.base_metrics, "metric_examples": len(self.metric_examples),
                "metric_seconds": round(self.metric_seconds, 3),
                "metric_share": round(self.metric_seconds / wall, 4) if wall > 0 else None,
                "device": str(self.accelerator.device), "mixed_precision": self.accelerator.mixed_precision,
                "peak_gpu_memory_bytes": peak_gpu_memory(self.accelerator.device)}



def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def card_base(name: str):
    """How an adapter card names the spec's base model `name` on any machine (card.BaseModel): an
    offline preset by its preset name, a local folder by the folder's name, else the Hub id."""
    from prefixlab.core.card import FOLDER, HUB, PRESET, BaseModel
    from prefixlab.core.hub import local_folder
    from prefixlab.engine.zoo import OFFLINE_PRESETS

    if name in OFFLINE_PRESETS:
        return BaseModel(name, PRESET)
    folder = local_folder(name)
    if folder is not None:
        return BaseModel(folder.expanduser().resolve().name or name, FOLDER)
    return BaseModel(name, HUB)


# The order a checkpoint replaces an adapter folder's files in: the config (the same bytes at every
# checkpoint of a run), then the weights, then the card.
ADAPTER_FILE_ORDER = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")


def save_adapter(peft_model, name: str, target: Path, training: str = "", base=None) -> None:
    """Save one adapter to `target` with a model card for that folder (`training`: its Markdown on
    how the adapter was trained; `base`: card.BaseModel, how the card names the base model).

    Never a moment without a whole adapter at `target`: the files are written into a staging folder
    beside it; the first checkpoint renames that folder to `target` (it appears whole), and every
    later one moves each file over its old copy with os.replace (atomic), so `target` always holds a
    config and whole weights. A run's adapter_config.json is the same at every checkpoint, so old
    and new files never disagree. A kill mid-save leaves the previous checkpoint and a staging folder
    that the next save replaces. A checkpoint an older worker's kill left stranded (.<v>.old /
    .<v>.tmp, see runs.STRANDED) is restored first."""
    from prefixlab.core.card import write_model_card
    from prefixlab.engine.runs import recover_adapter

    staging = target.with_name(f".{target.name}.saving")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        peft_model.save_adapter_files(name, str(staging))
        write_model_card(peft_model, str(staging), {name: "."}, training, base=base)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk: free what we wrote
        if isinstance(err, OSError) and err.errno is not None:
            raise naming(err, target) from err  # the adapter's folder, not the staging folder's files
        if "no space left on device" in str(err).lower():  # safetensors' own error type
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from err
        raise
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_adapter(target, owner=True)
    publish(staging, target, ADAPTER_FILE_ORDER)


def publish(staging: Path, target: Path, order) -> None:
    """Move a checkpoint written in `staging` to `target`: the first one by renaming the folder (it
    appears whole), later ones file by file with os.replace (atomic), in `order` (weights before the
    file that describes them), so `target` always holds whole files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.rename(staging, target)
            return
        except OSError:
            if not target.is_dir():
                raise
    order = tuple(order)
    for file in sorted((p.name for p in staging.iterdir()),
                       key=lambda n: order.index(n) if n in order else len(order)):
        os.replace(staging / file, target / file)
    staging.rmdir()


def save_model(model, target: Path) -> None:
    """Save the fine-tuning baseline's whole model (transformers' save_pretrained, safetensors) to
    `target` the way save_adapter publishes an adapter: never a moment without whole files there."""
    staging = target.with_name(f".{target.name}.saving")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise naming(err, target) from err
        raise
    publish(staging, target, order=("model.safetensors", "config.json"))


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def run_worker(run_dir: str | Path, *, progress: bool | None = None) -> str:
    """Run the experiment in `run_dir` (spec.json must be there) and return the final state.

    Never raises for a training failure: the state becomes `failed`, the one-line error goes to
    status.json and the traceback to log.txt. `progress`: a terminal bar (default: when stderr is a
    terminal). Raises runs.RunBusy, having written nothing, when another worker holds the run.
    """
    run = RunDir(run_dir)
    main = is_main_process()
    # One worker per run (the first process of an `accelerate launch` holds it for all of them);
    # RunBusy, before anything is written, when another worker has the run.
    with worker_lock(run.path) if main else nullcontext():
        return _work(run, main, progress)


def _work(run: RunDir, main: bool, progress: bool | None) -> str:
    log = run.log if main else (lambda message: None)
    stop, previous = install_stop_handler()
    status = StatusWriter(run, stop, enabled=main)
    if run.cancel_requested():
        stop.set()
    status.start(state=RUNNING, pid=os.getpid(), error=None, finished_at=None,
                 started_at=run.read_status().get("started_at") or time.time())
    spec, job, bar, dashboards = None, None, None, []
    try:
        spec = run.read_spec()
        log(f"worker {os.getpid()} starting {spec.name!r} on {spec.model.name}")
        if main:  # training.report_to: TensorBoard, trackio (the first process only, like every file)
            dashboards = report_loggers(spec.training.report_to, run.path, run.run_id, spec.to_dict())
        job = Job(spec, run, stop, status, loggers=[JsonlLogger(run.metrics_path), *dashboards])
        job.setup()
        if progress if progress is not None else sys.stderr.isatty():
            bar = ProgressBarLogger(job.total_steps)
            job.loggers.append(bar)
        job.train()
        job.save_adapters()
        job.write_samples()
        if job.accelerator.is_main_process:
            atomic_write_json(run.summary_path, job.summary())
        state = CANCELLED if stop.is_set() else DONE
        log(f"finished: {state} at step {job.step}")
        status.finish(state=state, step=job.step)
        return state
    except BaseException as err:  # noqa: BLE001 - every failure must reach status.json
        message = describe_error(err, spec)
        try:
            log(f"failed: {message}\n{traceback.format_exc()}")
        except OSError:  # the disk that failed us holds the log too: status.json must still say why
            print(f"prefixlab worker: failed: {message} (log.txt not written)", file=sys.stderr)
        status.finish(state=FAILED, error=message, step=job.step if job else 0)
        if isinstance(err, KeyboardInterrupt):
            raise
        return FAILED
    finally:
        for logger in [bar, *dashboards]:
            if logger:
                logger.close()
        restore_handlers(previous)
        job = None  # the model, adapters and optimizers, before their memory is returned
        release_gpu_memory()
