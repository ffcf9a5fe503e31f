"""Where training reports to: each logger takes one record at a step (STYLE.md 9: training never
imports Gradio; the page reads metrics.jsonl, the terminal shows a bar, dashboards get their files).

A record is what the worker logs: {"variant", "epoch", "loss", "lr", "tokens_per_s"} every
log_interval steps, {"variant", "eval_loss"} and task metrics (bleu, chrf, rouge_l, slot_accuracy)
at every evaluation. `training.report_to` adds TensorBoard event files (runs/<id>/tensorboard/) and
trackio (its local database, TRACKIO_DIR; project "prefixlab", one trackio run per lab run), the
dashboards researchers already keep; both are optional dependencies (README), refused by
engine.checks with the install command when missing.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Protocol

from prefixlab.engine.runs import append_jsonl

REPORT_TO = {"tensorboard": "tensorboard", "trackio": "trackio"}  # name -> the package it needs
NOT_SCALARS = ("variant", "epoch", "step", "time")


class Logger(Protocol):
    def log(self, step: int, metrics: dict) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """One whole, flushed line per record in metrics.jsonl (readable within a second)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, step: int, metrics: dict) -> None:
        append_jsonl(self.path, {**metrics, "step": step, "time": time.time()})

    def close(self) -> None:
        pass


class ProgressBarLogger:
    """A tqdm bar over optimizer steps showing each variant's latest loss."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.latest: dict[str, str] = {}

    def log(self, step: int, metrics: dict) -> None:
        key = "loss" if "loss" in metrics else "eval_loss" if "eval_loss" in metrics else None
        if key is not None:
            self.latest[f"{metrics['variant']}{'' if key == 'loss' else ' eval'}"] = f"{metrics[key]:.3f}"
            self.bar.set_postfix(self.latest, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def scalars(metrics: dict) -> dict[str, float]:
    """A record as dashboard scalars named "<variant>/<key>" ("projection/eval_loss")."""
    variant = metrics.get("variant", "run")
    return {f"{variant}/{key}": float(value) for key, value in metrics.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardLogger:
    """TensorBoard event files in `folder` (runs/<id>/tensorboard): `tensorboard --logdir runs`."""

    def __init__(self, folder: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("spec", "```json\n" + _json(config) + "\n```", 0)

    def log(self, step: int, metrics: dict) -> None:
        for tag, value in scalars(metrics).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrackioLogger:
    """A trackio run (local database; `trackio show --project prefixlab` opens its dashboard)."""

    def __init__(self, run_name: str, config: dict, project: str = "prefixlab"):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=project, name=run_name, config=config, embed=False,
                                auto_log_cpu=False, auto_log_gpu=False, resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        values = scalars(metrics)
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _json(config: dict) -> str:
    import json

    return json.dumps(config, indent=2)


def missing_packages(report_to: list[str]) -> dict[str, str]:
    """{name: message} for each dashboard in `report_to` whose package is not installed."""
    return {name: f"{name} is not installed: pip install {REPORT_TO[name]}, or remove it from training.report_to"
            for name in report_to if name in REPORT_TO and importlib.util.find_spec(REPORT_TO[name]) is None}


def report_loggers(report_to: list[str], run_folder: Path, run_name: str, config: dict) -> list[Logger]:
    """The loggers `training.report_to` names, in its order."""
    made = {"tensorboard": lambda: TensorBoardLogger(run_folder / "tensorboard", config),
            "trackio": lambda: TrackioLogger(run_name, config)}
    return [made[name]() for name in report_to]
