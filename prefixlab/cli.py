"""Command line: `python -m prefixlab {train,generate,evaluate,runs,inspect,sweep,bench,gpucheck} ...`.

    python -m prefixlab train presets/offline-tiny.json            # a new folder under runs/
    python -m prefixlab train SPEC.json --run-dir runs/my-run
    python -m prefixlab train --run-dir runs/<id>                   # a queued run (what the queue starts)
    accelerate launch -m prefixlab train SPEC.json --run-dir DIR    # several GPUs
    python -m prefixlab generate --run-dir runs/<id> --prompt "name[Aromi] | food[Thai]"
    python -m prefixlab evaluate runs/<id> [--split test] [--limit N]   # task metrics on a whole split
    python -m prefixlab runs [--runs-dir runs]                      # every run: state, step, error
    python -m prefixlab inspect presets/gpt2-e2e.json               # parameter counts, no weights
    python -m prefixlab inspect --model gpt2-medium --prefix-length 10 --encoder-hidden-size 512
    python -m prefixlab sweep SPEC.json --vary prefix.num_virtual_tokens=1,5,10 [--queue] [--plot P.png]
    python -m prefixlab sweep --show [SWEEP_ID] [--plot P.svg]      # a sweep's table and chart; the sweeps
    python -m prefixlab bench [core|paired|engine|startup|page|all] [--quick] [--json PATH]
    python -m prefixlab gpucheck
"""

from __future__ import annotations

import argparse
import json
import importlib
import os
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from prefixlab.engine.spec import ExperimentSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(ValueError):
    """A bad command line or input; printed as one line, exit status 2."""


def folder(path: str, flag: str, *, create: bool = False) -> Path:
    """`path` as a folder for `flag`: never a file; made (with its parents) when `create`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {path} is a file, not a folder; give a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CliError(f"{flag} {path}: cannot create the folder ({err.strerror}); "
                           "give a folder you can write to") from None
    return path


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, outermost first (what mkdir -p makes)."""
    missing = []
    for folder_ in [path, *path.parents]:
        if folder_.exists():
            break
        missing.insert(0, folder_)
    return missing


def remove_made(made: list[Path]) -> None:
    """Remove the folders this command made (innermost first), with what it wrote into them."""
    import shutil

    for path in reversed(made):
        shutil.rmtree(path, ignore_errors=True)


def train_again(run) -> str:
    """The command that trains a run's spec again, as a new run beside it."""
    return (f"to train this spec again: python -m prefixlab train {shlex.quote(str(run.spec_path))} "
            f"--runs-dir {shlex.quote(str(run.path.parent))}")


def worker_of(status: dict) -> tuple[str, str | None]:
    """("alive" | "starting" | "dead", detail) for a run in state running, by the queue's liveness
    check (this process is not the worker's parent): detail is the pid, or why the worker is gone."""
    from prefixlab.engine.runs import why_worker_dead

    why = why_worker_dead(status, starting_is_alive=True)
    if why is not None:
        return "dead", why
    return ("alive", str(status["pid"])) if status.get("pid") else ("starting", None)


def held_by(status: dict) -> str:
    """The state of the run in a folder that `train SPEC --run-dir` will not overwrite."""
    state = status.get("state")
    if state == "failed" and status.get("error"):
        return f"failed: {status['error']}"
    if state != "running":
        return str(state)
    worker, detail = worker_of(status)
    if worker == "alive":
        return f"running, worker process {detail}"
    if worker == "starting":
        return "running, its worker being started by the page's queue"
    return f"running, but its worker died: {detail}"


def check_startable(run, status: dict) -> None:
    """`train --run-dir DIR` starts only a run in state queued (what the queue submits), or the
    run the queue just marked running for this very process (QUEUE_LAUNCH_ENV)."""
    from prefixlab.engine.runs import QUEUE_LAUNCH_ENV, QUEUED, RUNNING

    state, path = status.get("state"), run.path
    if state in (None, QUEUED):
        return
    if state == RUNNING and status.get("pid") is None and os.environ.get(QUEUE_LAUNCH_ENV) == str(path):
        return
    if state == "done":
        raise CliError(f"{path} is already done; {train_again(run)}")
    if state == "cancelled":
        raise CliError(f"{path} was cancelled at step {status.get('step') or 0}; {train_again(run)}")
    if state == "failed":
        raise CliError(f"{path} has failed ({status.get('error') or 'no error recorded'}); {train_again(run)}")
    if state != RUNNING:
        raise CliError(f"{path} is in state {state!r}, not queued; {train_again(run)}")
    worker, detail = worker_of(status)
    if worker == "alive":
        raise CliError(f"{path} is already running in worker process {detail}; wait for it, or stop it "
                       f"(Stop on the page, or kill {detail}: it saves and ends cancelled)")
    if worker == "starting":
        raise CliError(f"{path} is being started by the page's queue; wait for it, or press Stop on the page")
    raise CliError(f"{path} is marked running but its worker died ({detail}); {train_again(run)}")


# ---------------------------------------------------------------------------------------------
# train


def quiet_transformers() -> None:
    """Keep the worker's terminal and log to its own lines: no weight-loading bars or config notices
    from transformers (its errors still show)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def interrupted(run, owner: bool) -> str:
    """After a KeyboardInterrupt escaped the worker: the run's final state, with status.json saying
    what happened (the worker's own handler turns a first Ctrl-C into a graceful stop)."""
    from prefixlab.engine.runs import CANCELLED, FAILED, QUEUED

    if not owner:
        return FAILED
    status = run.read_status()
    if status.get("state") in (None, QUEUED):  # before the worker started: nothing trained yet
        run.update_status(state=CANCELLED, finished_at=time.time())
        return CANCELLED
    return status.get("state") or FAILED  # run_worker wrote the failure (train.INTERRUPTED_TWICE)


def cmd_train(args) -> int:
    from prefixlab.engine.worker import is_main_process

    if args.spec is None and args.run_dir is None:
        raise CliError("train needs SPEC.json, --run-dir DIR (with spec.json inside), or both")
    # Under `accelerate launch` every process runs this; only the first owns status.json (the others
    # would find it running, by the first, and must not reset it). The read-only checks run in every
    # process, so all of them refuse what the first refuses, before any of them writes.
    owner = is_main_process()
    with ExitStack() as stack:  # the run's worker lock, from the checks to the worker's end
        return train_in(args, owner, stack)


def claim(run, stack: ExitStack) -> None:
    """Take the run's worker lock (in the first process only) before reading its state, so that no
    other worker (the page's queue) can start it between the check and the start."""
    from prefixlab.engine.runs import RunBusy, worker_lock

    try:
        stack.enter_context(worker_lock(run.path))
    except RunBusy:
        status = run.read_status()
        state = "its worker is starting" if status.get("state") in (None, "queued") else held_by(status)
        raise CliError(f"{run.path} is already being trained by another worker ({state}); "
                       "wait for it, or stop it (Stop on the page)") from None


def train_in(args, owner: bool, stack: ExitStack) -> int:
    from prefixlab.engine.runs import FAILED, QUEUED, RUNNING, RunDir, atomic_write_json, new_run_id, new_status
    from prefixlab.engine.worker import run_worker

    if args.spec is not None:
        spec = ExperimentSpec.load(args.spec)
        from prefixlab.engine import checks

        problems = checks.check(spec).errors  # what the worker would fail on at setup: bad input, no run folder
        if problems:
            raise CliError("; ".join(f"{key}: {message}" for key, message in problems.items())
                           + f" (in {args.spec})")
        made = []  # the folders this command creates, removed again if it cannot write the run into them
        if args.run_dir:
            made += missing_folders(Path(args.run_dir))
            path = folder(args.run_dir, "--run-dir", create=True)
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own new run id
            raise CliError("under accelerate launch every process must write the same run: pass --run-dir DIR")
        else:
            made += missing_folders(Path(args.runs_dir))
            runs_dir = folder(args.runs_dir, "--runs-dir", create=True)
            path = runs_dir / new_run_id(spec.name, runs_dir)
            try:
                path.mkdir()
            except OSError:  # a read-only runs folder
                remove_made(made)
                raise
            made.append(path)
        run = RunDir(path)
        try:
            if owner:
                claim(run, stack)
            status = run.read_status()
            # The other processes may find the first one's run already started; a finished run, never.
            if status.get("state") not in ((None, QUEUED) if owner else (None, QUEUED, RUNNING)):
                raise CliError(f"{path} already holds a run ({held_by(status)}); pick a new --run-dir or leave it out")
            run.write_spec(spec)
            if owner:
                atomic_write_json(run.status_path, new_status())
        except OSError:  # a read-only or full disk: no run folder left behind, empty or half written
            remove_made(made)
            raise
    else:
        run = RunDir(folder(args.run_dir, "--run-dir"))
        if not run.spec_path.exists():
            raise CliError(f"{run.spec_path} does not exist; pass SPEC.json as well, or submit from the page")
        spec = run.read_spec()  # a bad spec.json: one clear line now, not a failed run
        if owner:
            claim(run, stack)
            check_startable(run, run.read_status())
    if owner:  # the other processes of `accelerate launch` say nothing of their own
        print(f"run directory: {run.path}", file=sys.stderr)
    processes = spec.training.num_processes
    if processes > 1 and "WORLD_SIZE" not in os.environ:  # not yet under a launcher: start one
        stack.close()  # its first process takes the run's worker lock
        return launch(run, processes)
    try:
        quiet_transformers()
        state = run_worker(run.path, progress=None if args.progress is None else args.progress)
    except KeyboardInterrupt:
        state = interrupted(run, owner)
    status = run.read_status()
    if owner:
        if getattr(args, "print_metrics", True):  # a sweep prints its own table at the end
            print_metrics(run)
        print(f"{state}: {run.path}" + (f" ({status.get('error')})" if state == FAILED else ""), file=sys.stderr)
    return EXIT_FAILED if state == FAILED else EXIT_OK


def print_metrics(run) -> None:
    """The run's task metrics (summary.json), a table on stdout, where it scored any."""
    from prefixlab.engine.evaluate import metrics_table, summary_metrics

    summary = run.read_summary()
    table = summary_metrics(summary) if summary else {}
    if table:
        print(f"task metrics on the first {summary.get('metric_examples')} validation examples "
              f"({100 * (summary.get('metric_share') or 0):.0f}% of the run's time):")
        print(metrics_table(table))


def launch(run, processes: int) -> int:
    """Train `run` in `processes` processes under accelerate's launcher (training.num_processes),
    in this terminal: Ctrl-C reaches them as it reaches this process, a SIGTERM to this process is
    passed on to the launcher, which ends every process (each saves and ends cancelled)."""
    import signal
    import subprocess

    from prefixlab.engine.runs import FAILED, launch_command

    command = [*launch_command(processes), "--run-dir", str(run.path)]
    print(f"starting {processes} processes: {shlex.join(command)}", file=sys.stderr)
    child = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                child.wait()
                break
            except KeyboardInterrupt:  # the launcher got it too; wait for it to end the processes
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    status = run.read_status()
    state = status.get("state") or FAILED
    if state not in ("done", "cancelled"):  # the first process says how a run it finished ended
        print(f"{state}: {run.path}" + (f" ({status.get('error')})" if status.get("error") else ""), file=sys.stderr)
    return EXIT_FAILED if state == FAILED else EXIT_OK


# ---------------------------------------------------------------------------------------------
# generate


def cmd_generate(args) -> int:
    import torch

    from prefixlab.core.model import PrefixTuningModel
    from prefixlab.engine.devices import training_device_type
    from prefixlab.engine.runs import RunDir
    from prefixlab.engine.generation import check_prompt, generate_outputs
    from prefixlab.engine.zoo import load_base

    run = RunDir(folder(args.run_dir, "--run-dir"))
    if not run.spec_path.exists():
        raise CliError(f"{run.path} is not a run folder (it has no spec.json); pass one of the folders "
                       "`python -m prefixlab runs` lists")
    spec = run.read_spec()
    if args.max_new_tokens is not None:
        spec = with_max_new_tokens(spec, args.max_new_tokens)
    for prompt in args.prompt:
        check_prompt(prompt)
    # Every variant with a whole checkpoint, one an older worker's kill left stranded included.
    folders = {v: run.adapter_dir(v) for v in spec.variant_names}
    names = [v for v in spec.variant_names if folders[v] is not None]
    if not names:
        raise CliError(no_adapters(run, spec))
    quiet_transformers()
    base, tokenizer, task_type = load_base(spec.model.name)
    device = torch.device(training_device_type())  # where the worker would train: CUDA, MPS or CPU
    model = PrefixTuningModel.from_pretrained(base.to(device), str(folders[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(folders[name]), name)
    model.eval()
    for prompt in args.prompt:
        outputs = generate_outputs(model, tokenizer, task_type, spec, prompt, names, device)
        print(f"prompt: {prompt}")
        for name, text in outputs.items():
            print(f"  {name:>16}: {text}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args) -> int:
    from prefixlab.engine.evaluate import evaluate_run, evaluation_path, format_table

    run_dir = folder(args.run, "RUN")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a positive number of examples, got {args.limit}")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics is not None else None
    quiet_transformers()
    result = evaluate_run(run_dir, split=args.split, limit=args.limit,
                          **({"metrics": metrics} if metrics is not None else {}))
    print(format_table(result))
    print(f"wrote {evaluation_path(run_dir, args.split)} ({result['seconds']:.0f} s)", file=sys.stderr)
    return EXIT_OK


def with_max_new_tokens(spec: ExperimentSpec, tokens: int) -> ExperimentSpec:
    """`spec` generating `tokens` new tokens, checked as the spec's own value is (limits included)."""
    from prefixlab.engine.spec import SpecError

    document = spec.to_dict()
    document["generation"] = {**document.get("generation", {}), "max_new_tokens": tokens}
    try:
        return ExperimentSpec.from_dict(document)
    except SpecError as err:
        raise CliError("; ".join(f"--max-new-tokens ({key}): {message}" if key == "generation.max_new_tokens"
                                 else f"{key}: {message}" for key, message in err.errors.items())) from None


def no_adapters(run, spec: ExperimentSpec) -> str:
    """Why a run has no adapters to generate with, and what to do, by its state."""
    from prefixlab.engine.runs import why_no_adapters

    kind, detail = why_no_adapters(run.read_status())
    if kind == "died":
        return f"{run.path} has no adapters: its worker died ({detail}) before the first checkpoint; {train_again(run)}"
    if kind == "waiting":
        return (f"{run.adapters_path} holds no adapters yet; wait for the first checkpoint "
                f"(every training.eval_interval={spec.training.eval_interval} steps)")
    if kind == "failed":
        return (f"{run.path} failed before saving any adapters ({detail}); "
                f"nothing to generate with; fix the cause, then, {train_again(run)}")
    return f"{run.path} is {kind} but {run.adapters_path} holds no adapters; {train_again(run)}"


# ---------------------------------------------------------------------------------------------
# runs


def run_line(info) -> list[str]:
    """One run for `runs`: id, name, model, state, step / total, started (UTC), error. A run marked
    running whose worker is gone shows as failed with the queue's words (the page's queue writes
    them within a second; this command writes nothing)."""
    state, error = info.state, info.error if info.state == "failed" else None
    if state == "running":
        worker, detail = worker_of(info.status)
        if worker == "dead":
            state, error = "failed", f"worker died without reporting: {detail} (status.json still says running)"
    error = " ".join((error or "").split())  # one line per run
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.started_at)) if info.started_at else "-"
    step = f"{info.step}/{info.total_steps or '?'}"
    return [info.run_id, info.name or "-", info.model or "-", state, step, started, error]


def cmd_runs(args) -> int:
    from prefixlab.engine.runs import JobQueue

    runs_dir = folder(args.runs_dir, "--runs-dir")
    if not runs_dir.is_dir():
        print(f"no runs: {runs_dir} does not exist (train something, or pass --runs-dir)", file=sys.stderr)
        return EXIT_OK
    lines = [run_line(info) for info in JobQueue(runs_dir).list_runs()]
    if not lines:
        print(f"no runs in {runs_dir}", file=sys.stderr)
        return EXIT_OK
    lines.insert(0, ["id", "name", "model", "state", "step", "started (UTC)", "error"])
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    for line in lines:
        print("  ".join([cell.ljust(w) for cell, w in zip(line, widths)] + [line[6]]).rstrip())
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# inspect


def inspect_rows(spec: ExperimentSpec) -> list[dict]:
    """Per variant: the filled prefix sizes and parameter counts, from the model config only (the
    page's accounting: engine.checks). CliError with every problem when the sizes cannot be filled."""
    from prefixlab.engine import checks

    checked = checks.check(spec, data=False, machine=False)
    if not checked.filled:
        raise CliError("; ".join(f"{key}: {message}" for key, message in checked.errors.items()))
    rows = []
    for filled, counts in zip(checked.filled.values(), checked.rows()):
        rows.append({"variant": counts["variant"], "num_virtual_tokens": filled.num_virtual_tokens,
                     "num_layers": filled.num_layers, "token_dim": filled.token_dim,
                     "encoder_hidden_size": filled.encoder_hidden_size,
                     "prefix_projection": filled.prefix_projection, "trainable": counts["trainable"],
                     "stored": counts["stored"], "base": counts["total"] - counts["trainable"],
                     "trainable_percent": counts["trainable %"], "formula": counts["formula"]})
    return rows


def cmd_inspect(args) -> int:
    flags = [f"{flag} {value}" for flag, value in (("--model", args.model), ("--prefix-length", args.prefix_length),
                                                   ("--encoder-hidden-size", args.encoder_hidden_size))
             if value is not None]
    if args.spec is not None and flags:
        raise CliError(f"inspect takes SPEC.json or --model NAME, not both: {', '.join(flags)} would be ignored; "
                       f"edit the spec ({args.spec}), or leave SPEC.json out")
    if args.spec is not None:
        spec = ExperimentSpec.load(args.spec)
    elif args.model is not None:
        prefix = {"num_virtual_tokens": 10 if args.prefix_length is None else args.prefix_length}
        if args.encoder_hidden_size is not None:
            prefix["encoder_hidden_size"] = args.encoder_hidden_size
        spec = ExperimentSpec.from_dict({"model": {"name": args.model}, "prefix": prefix})
    else:
        raise CliError("inspect needs SPEC.json or --model NAME")
    rows = inspect_rows(spec)
    print(f"model {spec.model.name}: {rows[0]['base']:,} base parameters (frozen)")
    for r in rows:
        print(f"{r['variant']}: {r['trainable']:,} trainable ({r['trainable_percent']:.4f}%), "
              f"{r['stored']:,} saved | prefix {r['num_virtual_tokens']} x {r['num_layers']} layers x 2 x "
              f"{r['token_dim']}, MLP hidden {r['encoder_hidden_size'] if r['prefix_projection'] else '-'}")
        print(f"    {r['formula']}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# sweep


def cmd_sweep(args) -> int:
    """Validate every run of a sweep, then queue them for a page (--queue) or train them here one after
    another; with --show, print (and plot) a sweep of the runs folder, or list its sweeps."""
    from prefixlab.engine import sweep as sweeps
    from prefixlab.views.sweep import check_metric

    check_metric(args.metric)
    check_plot_path(args.plot)
    if args.show is not None:
        return show_sweep(args)
    if args.spec is not None and not args.vary:  # a sweep preset names its own: "_vary": {field: [values]}
        args.vary = preset_vary(args.spec)
    if args.spec is None or not args.vary:
        raise CliError("sweep needs SPEC.json and --vary FIELD=V1,V2,... (once, or twice for two fields; a sweep "
                       "preset such as presets/sweeps/*.json carries its own), or --show [SWEEP_ID]")
    if args.queue and args.plot:
        raise CliError(f"--plot with --queue: nothing has trained yet; plot later with python -m prefixlab sweep "
                       f"--show SWEEP_ID --plot {shlex.quote(args.plot)}")
    spec = ExperimentSpec.load(args.spec)
    vary = {}
    for text in args.vary:
        try:
            name, values = sweeps.parse_vary(text)
        except sweeps.SweepError as err:
            raise CliError(f"--vary {text}: {err.message}") from None
        if name in vary:
            raise CliError(f"--vary {name} is given twice; give all its values at once: --vary {name}=V1,V2,...")
        vary[name] = values
    try:
        plan = sweeps.plan_sweep(spec, vary)
    except sweeps.SweepError as err:
        raise CliError(f"{err} (sweep of {args.spec}; nothing was queued)") from None
    runs_dir = folder(args.runs_dir, "--runs-dir", create=True)
    if not args.queue:
        return train_sweep(plan, runs_dir, args)
    from prefixlab.engine.runs import JobQueue

    for run_id, spec in zip(sweeps.submit_sweep(JobQueue(runs_dir), plan), plan.specs):
        print(f"{run_id}  {sweeps.label(spec.sweep.vary)}")
    print(f"sweep {plan.id}: {len(plan.specs)} runs queued in {runs_dir}; a page on this folder (python app.py "
          f"--runs-dir {shlex.quote(str(runs_dir))}) trains them one after another. See them with: python -m "
          f"prefixlab sweep --show {plan.id} --runs-dir {shlex.quote(str(runs_dir))}", file=sys.stderr)
    return EXIT_OK


def preset_vary(path: str) -> list[str]:
    """The --vary arguments a sweep preset carries as `"_vary": {"prefix.num_virtual_tokens": [1, 5, 10]}`
    (none for a plain spec)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # ExperimentSpec.load says what is wrong with the file
    vary = document.get("_vary") if isinstance(document, dict) else None
    if vary is None:
        return []
    if not isinstance(vary, dict) or not all(isinstance(v, list) for v in vary.values()):
        raise CliError(f'{path}: "_vary" must map each field to a list of values, e.g. '
                       '{"prefix.num_virtual_tokens": [1, 5, 10]}')
    return [f"{name}={json.dumps(values)}" for name, values in vary.items()]


def check_plot_path(path: str | None) -> None:
    """--plot names a .png or .svg file in a folder that exists (checked before anything trains)."""
    if path is None:
        return
    if Path(path).suffix.lower() not in (".png", ".svg"):
        raise CliError(f"--plot {path}: name a .png or .svg file")
    if not Path(path).parent.is_dir():
        raise CliError(f"--plot {path}: the folder {Path(path).parent} does not exist; create it or plot elsewhere")


def train_sweep(plan, runs_dir: Path, args) -> int:
    """Train the plan's runs here, one after another, each as `train --run-dir` trains a queued run.
    Their folders are made first, all queued and held by this process (engine.sweep.reserve_sweep), so a
    page shows them and its queue starts none of them. Ctrl-C (or SIGTERM) stops the current run as
    `train` does (saved, cancelled) and starts no other: the runs not started end cancelled. A run
    stopped from the page (Stop) or failing does not stop the sweep. Exit status: 130 when interrupted,
    1 when a run failed, else 0; the table (and --plot) either way."""
    import signal

    from prefixlab.engine import sweep as sweeps
    from prefixlab.engine.runs import CANCELLED, FAILED, QUEUED
    from prefixlab.engine.worker import INTERRUPTED_TWICE

    stop: list[int] = []  # a SIGTERM between two runs (while one trains, the worker's handler has it)
    previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))
    failed = interrupted = False
    try:
        with sweeps.reserve_sweep(runs_dir, plan) as reserved:
            print(f"sweep {plan.id}: {len(plan.specs)} runs in {runs_dir}", file=sys.stderr)
            try:
                for i, run in enumerate(reserved.runs):
                    if stop:
                        interrupted = True
                        break
                    print(f"[{i + 1}/{len(plan.specs)}] {sweeps.label(plan.values(i))}", file=sys.stderr)
                    if run.cancel_requested():  # Stop pressed on the page while it waited
                        run.update_status(state=CANCELLED, finished_at=time.time())
                        continue
                    if plan.specs[i].training.num_processes > 1:
                        reserved.release(i)  # the first process of its launcher takes the run's lock
                    try:
                        with ExitStack() as stack:
                            train_in(argparse.Namespace(spec=None, run_dir=str(run.path), runs_dir=str(runs_dir),
                                                        progress=args.progress, print_metrics=False), True, stack)
                    except CliError as err:  # another worker took the run after all
                        print(f"error: {err}", file=sys.stderr)
                        failed = True
                        continue
                    finally:
                        reserved.release(i)
                    status = run.read_status()
                    failed = failed or status.get("state") == FAILED
                    if (status.get("state") == CANCELLED and not run.cancel_requested()) or \
                            status.get("error") == INTERRUPTED_TWICE:  # Ctrl-C or SIGTERM, not the page's Stop
                        interrupted = True
                        break
            except KeyboardInterrupt:  # between two runs
                interrupted = True
            finally:
                for run in reserved.runs:  # never started: no queue may start them later
                    if run.read_status().get("state") == QUEUED:
                        run.update_status(state=CANCELLED, finished_at=time.time())
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        print(f"sweep {plan.id} interrupted: the runs not started are cancelled", file=sys.stderr)
    report_sweep(sweeps.read_sweep(runs_dir, plan.id), args)
    return EXIT_INTERRUPTED if interrupted else EXIT_FAILED if failed else EXIT_OK


def show_sweep(args) -> int:
    """`sweep --show SWEEP_ID`: the sweep's table (and --plot); `sweep --show`: the runs folder's sweeps."""
    from prefixlab.engine import sweep as sweeps

    if args.spec or args.vary or args.queue:
        raise CliError("--show reads a sweep that exists; leave out SPEC.json, --vary and --queue")
    runs_dir = folder(args.runs_dir, "--runs-dir")
    if args.show:
        report_sweep(sweeps.read_sweep(runs_dir, args.show), args)
        return EXIT_OK
    if args.plot:
        raise CliError("--plot needs a sweep: --show SWEEP_ID --plot PATH")
    listed = sweeps.list_sweeps(runs_dir)
    if not listed:
        print(f"no sweeps in {runs_dir}", file=sys.stderr)
        return EXIT_OK
    from prefixlab.views.sweep import format_table

    rows = [[s.id, s.name, s.model, ", ".join(s.fields), s.runs,
             ", ".join(f"{n} {state}" for state, n in s.states.items())] for s in listed]
    print(format_table(["sweep", "name", "model", "varies", "runs", "states"], rows))
    return EXIT_OK


def report_sweep(view, args) -> None:
    """The sweep's table on stdout, and its chart written to --plot."""
    from prefixlab.views.sweep import format_table, save_figure, sweep_figure, sweep_table

    print(format_table(*sweep_table(view)))
    if args.plot:
        save_figure(sweep_figure(view, args.metric), args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# bench, gpucheck: modules written elsewhere, imported only when asked for


def _import(module: str, attr: str, what: str):
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise CliError(f"{what} is not available in this checkout ({module} is missing); "
                       "update prefixlab or run another subcommand") from None
    except AttributeError:
        raise CliError(f"{module} has no {attr}(); update prefixlab") from None


def cmd_bench(args) -> int:
    """prefixlab.tools.bench runs and prints them (without PEFT, `core` raises the ValueError main() prints)."""
    argv = [args.which] + (["--quick"] if args.quick else []) + (["--json", args.json] if args.json else [])
    return _import("prefixlab.tools.bench", "main", "the benchmarks")(argv)


def cmd_gpucheck(args) -> int:
    """Every argument after `gpucheck` goes to prefixlab.tools.gpucheck (its own --help lists them)."""
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return _import("prefixlab.tools.gpucheck", "main", "the GPU check")(rest)


# ---------------------------------------------------------------------------------------------


def os_error_line(err: OSError) -> str:
    """An OSError as one line: the path, what went wrong, what to do (runs.describe_os_error)."""
    from prefixlab.engine.runs import RunsFolderError, describe_os_error

    if isinstance(err, RunsFolderError) or err.errno is None:
        return str(err)
    return describe_os_error(err)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prefixlab", description="Prefix-tuning lab.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train every variant of an experiment spec in lockstep")
    p.add_argument("spec", nargs="?", help="experiment spec JSON (e.g. presets/offline-tiny.json)")
    p.add_argument("--run-dir", help="run directory (default: a new folder under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where new run directories go (default: runs)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="base model and every saved variant on your prompts")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--prompt", action="append", required=True, help="a source; repeat for several")
    p.add_argument("--max-new-tokens", type=int)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="score a run's base model, saved adapters and fine-tuned model on a whole "
                                        "split (BLEU, chrF, ROUGE-L, slot accuracy); writes evaluation-<split>.json")
    p.add_argument("run", metavar="RUN", help="the run's folder, e.g. runs/20261205-101500000-offline-demo")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="default: test")
    p.add_argument("--limit", type=int, help="only the split's first N examples (default: all)")
    p.add_argument("--metrics", help="comma-separated: bleu,chrf,rouge_l,slot_accuracy (default: all)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("runs", help="every run in the runs folder: state, step, start time, error")
    p.add_argument("--runs-dir", default="runs", help="the folder of runs (default: runs)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("inspect", help="parameter accounting for a spec or a model, no training")
    p.add_argument("spec", nargs="?")
    p.add_argument("--model", help="a model preset, Hub id or folder (instead of a spec)")
    p.add_argument("--prefix-length", type=int, help="with --model: num_virtual_tokens (default: 10)")
    p.add_argument("--encoder-hidden-size", type=int, help="with --model: the projection MLP's hidden size")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("sweep", help="one spec run once per value of one or two of its fields, trained here or "
                                     "queued for a page, and the sweep's table and chart")
    p.add_argument("spec", nargs="?", help="experiment spec JSON (e.g. presets/offline-tiny.json)")
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a field and its values, e.g. prefix.num_virtual_tokens=1,5,10,20,40 (none: an empty value; "
                        "a JSON list for text with commas); twice for every pair of two fields' values")
    p.add_argument("--runs-dir", default="runs", help="where the runs go, or are read from (default: runs)")
    p.add_argument("--queue", action="store_true",
                   help="queue the runs for a page on --runs-dir (python app.py) instead of training them here")
    p.add_argument("--show", nargs="?", const="", metavar="SWEEP_ID",
                   help="print (and --plot) the sweep SWEEP_ID of --runs-dir; without an id, list its sweeps")
    p.add_argument("--plot", metavar="PATH", help="write the sweep's chart to PATH (.png or .svg)")
    p.add_argument("--metric", help="the chart's metric: slot_accuracy, bleu, chrf, rouge_l or val_loss "
                                    "(default: slot_accuracy where the runs report it, else bleu, else val_loss)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="a progress bar per run (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bench", help="benchmarks: core (a training step vs PEFT and a floor), engine (paired vs "
                                     "separate runs), paired (both variants' step: fused vs one pass each vs two "
                                     "PEFT models, and checkpointing's memory), startup (cold starts of these "
                                     "commands and the page), page (the page's timer with 20 viewers)")
    p.add_argument("which", nargs="?", choices=("core", "paired", "engine", "startup", "page", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="small sizes and one round: seconds, not minutes")
    p.add_argument("--json", metavar="PATH", help="also write every number measured to PATH")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gpucheck", add_help=False,
                       help="check the GPU path (parity, worker, throughput, generation, paired); "
                                "python -m prefixlab gpucheck --help")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="passed on to prefixlab.tools.gpucheck")
    p.set_defaults(func=cmd_gpucheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpucheck"]:  # its options are gpucheck's own; argparse would reject them here
        args = argparse.Namespace(func=cmd_gpucheck, rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, FileNotFoundError) as err:
        # SpecError, ModelLoadError, DataError are ValueErrors with messages meant for people.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a read-only, missing or full runs folder: one line naming the path, no traceback
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before a command could handle it (e.g. while importing torch)
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
