"""The command line: `python -m prefixlab gpucheck [--out DIR] [--sections ...] [--budget-s S]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch
from transformers.utils import logging as transformers_logging

from prefixlab.tools.gpucheck.common import (
    DEFAULT_BUDGET_S,
    DEFAULT_OUT,
    NO_CUDA_EXIT,
    no_cuda_message,
    paper_sizes,
    tiny_sizes,
)
from prefixlab.tools.gpucheck.report import OK, write_results
from prefixlab.tools.gpucheck.runner import SECTIONS, run_check


def parse_sections(text: str) -> list[str]:
    """"e2e,parity" -> the named sections, in the check's fixed order."""
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = sorted(names - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or [text]}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names]


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--budget-s {text!r}: give a positive number of seconds, e.g. 330")
    return value


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m prefixlab gpucheck",
                                     description="Check the GPU path and write DIR/results.json and DIR/results.md.")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help="folder for results.json, results.md and e2e-run/ (default: %(default)s)")
    parser.add_argument("--sections", type=parse_sections, default=list(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all, in that order)")
    parser.add_argument("--budget-s", type=positive_seconds, default=DEFAULT_BUDGET_S,
                        help="seconds all sections together may take (default %(default)s: under 6 minutes)")
    # For the CPU tests only: runs the same code with tiny sizes; results are marked as a test run.
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """0: every section passed; 1: a section failed, errored or was skipped; 2: no CUDA device."""
    args = parse_args(argv)
    is_cuda = torch.device(args.device).type == "cuda"
    if is_cuda and not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return NO_CUDA_EXIT
    sizes = paper_sizes(args.device) if is_cuda else tiny_sizes(args.device)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # config warnings about random models are not findings
    try:
        results = run_check(args.out, args.device, args.sections, args.budget_s, sizes)
    finally:
        transformers_logging.set_verbosity(verbosity)
    print(write_results(args.out, results))
    return 0 if results["status"] == OK else 1
