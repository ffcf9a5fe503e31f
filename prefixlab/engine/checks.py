"""What the worker would reject, found before a run exists: the page shows it beside the form and the
CLI's `train SPEC` refuses with it (exit 2), instead of leaving a failed run folder behind.

Reads only configs and local files: no weights, no Hub dataset download.
"""

from __future__ import annotations

from prefixlab.engine import devices
from prefixlab.views import tables as compare
from prefixlab.core.config import INFERRED_FIELDS
from prefixlab.engine.data import DataError, check_columns, load_task, resolve_source
from prefixlab.engine.spec import ExperimentSpec, position_errors
from prefixlab.engine.zoo import position_limit


def field_for_error(message: str) -> str:
    """The form key a core error is about: an inferred size it names, or else the model."""
    for name in INFERRED_FIELDS + ("encoder_hidden_size", "num_virtual_tokens"):
        if message.startswith(f"{name}=") or f" {name}=" in message:
            return f"prefix.{name}"
    return "model.name"


def accounting(spec: ExperimentSpec) -> tuple[list[dict], dict[str, str]]:
    """(compare.accounting_rows, errors): a model whose config cannot be read (offline, a typo) or
    sizes that do not fit it give an error on the field responsible and no rows; lengths past the
    model's positions (experiment.position_errors) come beside the rows."""
    try:
        rows = compare.accounting_rows(spec)
    except ValueError as err:  # ModelLoadError, a size that does not fit the model
        return [], {field_for_error(str(err)): str(err)}
    return rows, position_errors(spec, position_limit(compare.model_config(spec.model.name)))


def task_data_errors(spec: ExperimentSpec) -> dict[str, str]:
    """{form key: message} for a local data file or folder that the worker would reject: every line is
    read with the chosen columns, so a bad line 500 is named here rather than in a failed run. The
    built-in task is shipped and checked by its tests; a Hub dataset is checked by the worker, except
    for one column chosen as both source and target, which is refused for every source but the
    built-in task."""
    kind, where = resolve_source(spec.data.source)
    try:
        if kind != "builtin":
            check_columns(where, spec.data.source_column, spec.data.target_column)
    except DataError as err:
        return {"data.target_column": str(err)}
    if kind != "file":
        return {}
    try:
        load_task(spec.data)
    except DataError as err:
        message = str(err)
        for role in ("source", "target"):
            if f"no {role} column" in message or f"the {role} column" in message:
                return {f"data.{role}_column": message}
        return {"data.source": message}
    return {}


def precision_errors(spec: ExperimentSpec) -> dict[str, str]:
    """{"training.precision": why} when this machine's training device cannot train in the chosen
    precision (fp16 on a CPU, bf16 on MPS before macOS 14): the worker runs here and would refuse.
    On CUDA the check (bf16 on a pre-Ampere GPU) stays with the worker: asking the GPU would open a
    CUDA context in the page's process, which keeps the GPU for training."""
    device_type = devices.training_device_type()
    if device_type == "cuda":
        return {}
    try:
        devices.mixed_precision_for(spec.training.precision, device_type)
    except ValueError as err:
        return {"training.precision": str(err).removeprefix("training.precision: ")}
    return {}


def check(spec: ExperimentSpec) -> dict[str, str]:
    """Every problem a run of `spec` would fail on at setup that can be known without weights:
    {dotted field: message}, empty when the spec may run."""
    return {**precision_errors(spec), **(accounting(spec)[1] or task_data_errors(spec))}
