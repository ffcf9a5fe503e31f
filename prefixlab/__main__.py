"""Command line: `python -m prefixlab {train,generate,inspect,bench,gpucheck} ...`.

    python -m prefixlab train presets/offline-tiny.json            # a new folder under runs/
    python -m prefixlab train SPEC.json --run-dir runs/my-run
    python -m prefixlab train --run-dir runs/<id>                   # spec.json already there (the queue)
    accelerate launch -m prefixlab train SPEC.json --run-dir DIR    # several GPUs
    python -m prefixlab generate --run-dir runs/<id> --prompt "name[Aromi] | food[Thai]"
    python -m prefixlab inspect presets/gpt2-e2e.json               # parameter counts, no weights
    python -m prefixlab inspect --model gpt2-medium --prefix-length 10 --encoder-hidden-size 512
    python -m prefixlab bench [core|engine|all] [--quick]
    python -m prefixlab gpucheck
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from prefixlab.experiment import ExperimentSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(ValueError):
    """A bad command line or input; printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# train


def quiet_transformers() -> None:
    """Keep the worker's terminal and log to its own lines: no weight-loading bars or config notices
    from transformers (its errors still show)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_train(args) -> int:
    from prefixlab.runs import FAILED, RunDir, atomic_write_json, new_run_id, new_status
    from prefixlab.train import run_worker

    if args.spec is None and args.run_dir is None:
        raise CliError("train needs SPEC.json, --run-dir DIR (with spec.json inside), or both")
    if args.spec is not None:
        spec = ExperimentSpec.load(args.spec)
        runs_dir = Path(args.runs_dir)
        path = Path(args.run_dir) if args.run_dir else runs_dir / new_run_id(spec.name, runs_dir)
        run = RunDir(path)
        if run.read_status().get("state") not in (None, "queued"):
            raise CliError(f"{path} already holds a run ({run.read_status()['state']}); "
                           "pick a new --run-dir or leave it out")
        run.write_spec(spec)
        atomic_write_json(run.status_path, new_status())
    else:
        run = RunDir(args.run_dir)
        if not run.spec_path.exists():
            raise CliError(f"{run.spec_path} does not exist; pass SPEC.json as well, or submit from the page")
        run.read_spec()  # a bad spec.json: one clear line now, not a failed run
    print(f"run directory: {run.path}", file=sys.stderr)
    quiet_transformers()
    state = run_worker(run.path, progress=None if args.progress is None else args.progress)
    status = run.read_status()
    print(f"{state}: {run.path}" + (f" ({status.get('error')})" if state == FAILED else ""), file=sys.stderr)
    return EXIT_FAILED if state == FAILED else EXIT_OK


# ---------------------------------------------------------------------------------------------
# generate


def cmd_generate(args) -> int:
    import torch

    from prefixlab import PrefixTuningModel
    from prefixlab.devices import training_device_type
    from prefixlab.runs import RunDir
    from prefixlab.train import generate_outputs
    from prefixlab.zoo import load_base

    run = RunDir(args.run_dir)
    spec = run.read_spec()
    if args.max_new_tokens is not None:
        spec.generation.max_new_tokens = args.max_new_tokens
    names = [v for v in spec.variant_names if (run.adapter_path(v) / "adapter_config.json").exists()]
    if not names:
        raise CliError(f"{run.adapters_path} holds no adapters yet; wait for the first checkpoint "
                       f"(every training.eval_interval={spec.training.eval_interval} steps)")
    base, tokenizer, task_type = load_base(spec.model.name)
    device = torch.device(training_device_type())  # where the worker would train: CUDA, MPS or CPU
    model = PrefixTuningModel.from_pretrained(base.to(device), str(run.adapter_path(names[0])), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(run.adapter_path(name)), name)
    model.eval()
    for prompt in args.prompt:
        outputs = generate_outputs(model, tokenizer, task_type, spec, prompt, names, device)
        print(f"prompt: {prompt}")
        for name, text in outputs.items():
            print(f"  {name:>16}: {text}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# inspect


def inspect_rows(spec: ExperimentSpec) -> list[dict]:
    """Per variant: the filled prefix sizes and parameter counts, from the model config only (the
    page's accounting, compare.variant_accounting)."""
    from prefixlab.compare import filled_prefix, variant_accounting

    rows = []
    for v in spec.variants:
        filled = filled_prefix(spec.model.name, v.prefix)
        counts = variant_accounting(spec.model.name, v.prefix)
        rows.append({"variant": v.name, "num_virtual_tokens": filled.num_virtual_tokens,
                     "num_layers": filled.num_layers, "token_dim": filled.token_dim,
                     "encoder_hidden_size": filled.encoder_hidden_size,
                     "prefix_projection": filled.prefix_projection, "trainable": counts["trainable"],
                     "stored": counts["stored"], "base": counts["total"] - counts["trainable"],
                     "trainable_percent": counts["trainable %"], "formula": counts["formula"]})
    return rows


def cmd_inspect(args) -> int:
    if args.spec is not None:
        spec = ExperimentSpec.load(args.spec)
    elif args.model is not None:
        form = {"model.name": args.model, "prefix.num_virtual_tokens": args.prefix_length,
                "prefix.encoder_hidden_size": args.encoder_hidden_size}
        from prefixlab.experiment import spec_from_form

        spec = spec_from_form({k: v for k, v in form.items() if v is not None})
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
    if args.which in ("core", "all"):  # without PEFT, run_core_bench raises the ValueError main() prints
        _import("prefixlab.bench", "main", "the core benchmark")(["--quick"] if args.quick else [])
    if args.which in ("engine", "all"):
        from prefixlab.bench_engine import run_engine_bench

        run_engine_bench(quick=args.quick)
    return EXIT_OK


def cmd_gpucheck(args) -> int:
    """Every argument after `gpucheck` goes to prefixlab.gpucheck (its own --help lists them)."""
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return _import("prefixlab.gpucheck", "main", "the GPU check")(rest)


# ---------------------------------------------------------------------------------------------


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

    p = sub.add_parser("inspect", help="parameter accounting for a spec or a model, no training")
    p.add_argument("spec", nargs="?")
    p.add_argument("--model", help="a model preset, Hub id or folder (instead of a spec)")
    p.add_argument("--prefix-length", type=int, default=10)
    p.add_argument("--encoder-hidden-size", type=int)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="benchmarks: core (a training step vs PEFT and a floor), "
                                     "engine (paired vs separate runs)")
    p.add_argument("which", nargs="?", choices=("core", "engine", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="small sizes, seconds not minutes")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gpucheck", add_help=False,
                       help="check the GPU path (parity, worker, throughput); python -m prefixlab gpucheck --help")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="passed on to prefixlab.gpucheck")
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


if __name__ == "__main__":
    sys.exit(main())
