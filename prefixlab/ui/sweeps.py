"""The Sweep tab's pure parts (no Gradio): the vary boxes read as the command line's `--vary`, the
sweeps menu, and where each sweep problem is shown.

A sweep (engine/sweep.py) runs the form's spec once per value of one field, or once per pair of
values of two: its runs are ordinary run folders whose spec.json carries the sweep's tag, so the tab
reads every sweep back from the runs folder, after a restart as before it.
"""

from __future__ import annotations

from prefixlab.engine.limits import clip
from prefixlab.engine.sweep import MAX_SWEEP_RUNS, SweepError, SweepSummary, describe_sweepable, parse_vary
from prefixlab.ui import values

VARY_IDS = ("sweep.vary", "sweep.vary2")  # the two boxes' registry ids
VARY_EXAMPLE = "prefix.num_virtual_tokens=1,5,10"
VARY_HELP = (f"FIELD=V1,V2,... as on the command line (sweep --vary), e.g. {VARY_EXAMPLE}; none is an empty "
             f"value, a JSON list holds text with commas. A sweep can vary {describe_sweepable()}")
VARY2_HELP = (f"Optional: a second field, e.g. training.learning_rate=0.05,0.1; every pair of values is run "
              f"(at most {MAX_SWEEP_RUNS} runs in all)")
HELPS = dict(zip(VARY_IDS, (VARY_HELP, VARY2_HELP)))
NO_VARY = f"type a field and its values in the first box, e.g. {VARY_EXAMPLE}"
NO_SWEEPS = ("no sweep in this runs folder yet: set the form, type a field and its values above, and press "
             "Start sweep")
FORM_REFUSED = ("⚠️ The form has problems (above the form and beside each field); the sweep runs the form's "
                "experiment, so fix them, then start the sweep again. Nothing was queued.")


def read_vary(texts: list[str | None]) -> tuple[dict[str, list], dict[str, str]]:
    """({field: values as text}, {where: problem}) from the vary boxes' texts (an empty box is left
    out): each box is FIELD=V1,V2,... (engine.sweep.parse_vary). A field in both boxes, a box that is
    not FIELD=VALUES, or no box filled in is a problem."""
    vary: dict[str, list] = {}
    problems: dict[str, str] = {}
    for text in texts:
        if not (text or "").strip():
            continue
        try:
            name, given = parse_vary(text.strip())
        except SweepError as err:
            problems.update(err.errors)
            continue
        if name in vary:
            problems[name] = "is in both vary boxes; give all its values in one box, or vary another field"
            continue
        vary[name] = given
    if not vary and not problems:
        problems["vary"] = NO_VARY
    return vary, problems


def boxes_of(where: str, texts: list[str | None]) -> list[int]:
    """The vary boxes (0, 1) a problem is about: those naming its field (`where` is a field,
    "field=value", or "field=value, field=value" for a pair: its first field); none for the form's own
    fields and "vary"."""
    names = [(text or "").partition("=")[0].strip() for text in texts]
    return [i for i, name in enumerate(names) if name and (where == name or where.startswith(f"{name}="))]


def vary_messages(problems: dict[str, str], texts: list[str | None]) -> dict[str, str | None]:
    """{box id: the message beside it, or None}: each box shows the problems with its own field
    ("prefix.num_virtual_tokens=0: must be at least 1"); the note under the boxes shows them all."""
    out: dict[str, list[str]] = {box: [] for box in VARY_IDS}
    for where, message in problems.items():
        boxes = boxes_of(where, texts)
        if not boxes and where == "vary" and not any((t or "").strip() for t in texts):
            boxes = [0]  # nothing typed: the first box says what to type
        for box in boxes:
            out[VARY_IDS[box]].append(f"{where}: {message}" if where != "vary" else message)
    return {box: "; ".join(messages) or None for box, messages in out.items()}


def problems_note(problems: dict[str, str]) -> str:
    """The note under the vary boxes for a refused sweep: every problem, named by its value and field."""
    return f"{values.errors_markdown(problems)}\n\nNothing was queued."


def queued_note(sweep_id: str, run_ids: list[str], fields: list[str]) -> str:
    return (f"Queued sweep **{values.md_text(sweep_id)}**: {len(run_ids)} runs varying "
            f"{values.md_text(', '.join(fields))}; they train one after another (each also in the run menu and "
            "*All runs*), and the chart and table below fill in as they end.")


def sweep_label(summary: SweepSummary) -> str:
    """How the sweeps menu names a sweep: its experiment, the fields varied, its run count and id."""
    return clip(f"{summary.name}: {' x '.join(summary.fields)} · {summary.runs} runs · {summary.id}", 160)


def sweep_choices(sweeps: list[SweepSummary]) -> list[tuple[str, str]]:
    """(label, id) per sweep, newest first (engine.sweep.list_sweeps' order)."""
    return [(sweep_label(s), s.id) for s in sweeps]
