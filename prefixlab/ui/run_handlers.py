"""Event handlers of the run panels: the timer and the run selection read the run directory; the
typed prompt generates; an adapter downloads as a zip. Lab (ui/handlers.py) has these too.

Like every handler, they take their event's inputs by registry id and return the outputs they
change, by id. The timer handler only reads files, leaving out outputs whose content did not change
since the session last drew them, so a long run does not redraw its finished tables every second;
what it draws is built once for all sessions (SharedRenders), so many viewers of one run cost about
what one does. `generate` is the one slow handler (a queued event with progress); its refusals and
failures are messages in its outputs' place. Every text from a run or an input is escaped and
clipped (ui/values.py), and a run is named only by a folder directly in the runs folder.
"""

from __future__ import annotations

import base64
import io
import secrets
import shutil
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import gradio as gr
import pandas as pd
from gradio.components.plot import PlotData

from prefixlab.engine.limits import MAX_PROMPT_CHARS
from prefixlab.engine.runs import JobQueue, RunDir
from prefixlab.ui import values
from prefixlab.ui.generate import generate_all, no_adapters_message, trained_variants
from prefixlab.ui.values import Values
from prefixlab.views import figures as plots
from prefixlab.views import tables as compare

RUN_FILES = ("status.json", "metrics.jsonl", "samples.jsonl", "summary.json")


def files_signature(run_path: Path) -> tuple:
    """(mtime_ns, size) of the files a run's panels read, and of its adapters folder (an adapter
    saved or removed renames an entry there): equal signatures mean nothing to redraw."""
    out = []
    for name in (*RUN_FILES, "adapters"):
        try:
            st = (run_path / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


class SharedRenders:
    """What the timer draws, shared by every session of the page: each value is built once per key
    (a run's files, the chart's settings), however many viewers ask for it at once; the last
    `size` keys are kept. Twenty viewers of a training run render its chart once per change, not
    twenty times (the PNG encoding is most of a tick's cost)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, object] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, build: Callable[[], object]):
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one session builds; the others wait for its value
            with self._lock:
                if key in self._values:
                    return self._values[key]
            value = build()
            with self._lock:
                self._values[key] = value
                while len(self._values) > self.size:
                    self._values.popitem(last=False)
                self._building.pop(key, None)
        return value


def png(figure) -> PlotData:
    """A matplotlib figure as the PNG a gr.Plot(format="png") sends: encoded once, then shared."""
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format="png")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return PlotData(type="matplotlib", plot=f"data:image/png;base64,{data}")


def fingerprint(value) -> int:
    """What tells a panel's content apart from its last: the hash of its text or rows."""
    if isinstance(value, PlotData):
        return hash(value.plot)
    if isinstance(value, pd.DataFrame):
        return hash(value.to_json())
    return hash(repr(value))


def _stamp(path: Path) -> tuple | None:
    """(mtime_ns, size) of one file, None when it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def _marked(panels: dict) -> dict:
    """{panel id: (fingerprint, value)}."""
    return {id_: (fingerprint(value), value) for id_, value in panels.items()}


def plain_run_id(run_id: str) -> str:
    """`run_id` if it names a folder directly inside the runs folder (never a path), else ValueError."""
    if not run_id or Path(run_id).name != run_id or run_id in (".", ".."):
        raise ValueError(f"no run {run_id!r}; choose one in the runs list")
    return run_id


class RunHandlers:
    """Reading runs, generating and downloading, over `queue`'s runs directory."""

    queue: JobQueue
    exports: Path  # downloads are written in folders of their own under it (the app's temporary folder)

    def __init__(self):
        self.renders = SharedRenders()

    def download_folder(self) -> Path:
        """A new folder for one download (two sessions' files never share a path)."""
        folder = self.exports / secrets.token_hex(8)
        folder.mkdir(parents=True)
        return folder

    def page_load(self, v: Values) -> Values:
        """Page opened or refreshed: every run on disk, the running (else newest) one selected."""
        infos = self.queue.list_runs()
        ids = [i.run_id for i in infos]
        return {"run.select": gr.update(choices=ids, value=values.default_selection(infos)),
                "run.overlay": gr.update(choices=[""] + ids, value=""), "runs.table": self.runs_rows(infos)}

    def runs_rows(self, infos=None) -> list[list]:
        rows = []
        for info in infos if infos is not None else self.queue.list_runs():
            run = RunDir(info.path)
            rows.append(values.run_row(info, run.read_summary(), run.read_metrics()))
        return rows

    def _runs_table(self, infos) -> list[list]:
        """runs_rows, built once per state of the runs' files for every session."""
        key = ("runs", tuple((i.run_id, i.state, i.step, _stamp(i.path / "summary.json"), _stamp(i.path / "metrics.jsonl"))
                             for i in infos))
        return self.renders.get(key, lambda: self.runs_rows(infos))

    def _log_tail(self, run: RunDir) -> str:
        """The last 20 lines of a failed run's log, read once per version of the file."""
        try:
            st = run.log_path.stat()
        except FileNotFoundError:
            return ""
        return self.renders.get(("log", str(run.path), st.st_mtime_ns, st.st_size), lambda: run.log_tail(20))

    def tick(self, v: Values) -> Values:
        """Timer (about 1 s) and run selection: redraw what changed on disk since "run.seen".

        Returns the status line always, and of the chart, points, comparison, bars, output grid,
        adapter dropdown, runs table, run and overlay dropdowns and "run.seen" only those that
        changed. The adapter picked ("compare.adapter") stays picked while the run still has it.
        """
        run_id, overlay = v["run.select"], v["run.overlay"]
        seen = dict(v["run.seen"] or {})
        out: Values = {}
        infos = self.queue.list_runs()
        listing = tuple((i.run_id, i.state, i.step) for i in infos)
        if listing != seen.get("listing"):
            out["runs.table"] = self._runs_table(infos)
            seen["listing"] = listing
        ids = [i.run_id for i in infos]
        if ids != seen.get("ids"):  # the dropdowns change only when a run appears (not every step)
            out |= {"run.select": gr.update(choices=ids), "run.overlay": gr.update(choices=[""] + ids)}
            seen["ids"] = ids
        # A run whose folder was deleted on disk: unselect it in the same update that drops it from
        # the choices (a dropdown holding a value it no longer offers fails every later event).
        if overlay and overlay not in ids:
            out["run.overlay"] = gr.update(choices=[""] + ids, value="")
            overlay = ""
        if run_id and run_id not in ids:
            out["run.select"] = gr.update(choices=ids, value=None)
            seen["gone"], run_id = run_id, None
            seen.pop("run", None)
            seen.pop("drawn", None)  # the next run's panels are all sent
            out |= self.empty_panels()  # not the deleted run's chart and tables
        if not run_id:
            status_md = values.status_markdown("", {})
            if seen.get("gone"):
                status_md = f"Run **{seen['gone']}** no longer exists (its folder was removed).\n\n{status_md}"
            return out | {"run.status": status_md} | _changed_seen(v, seen)
        seen.pop("gone", None)
        run = RunDir(self.queue.runs_dir / run_id)  # listed above; reads as empty if deleted since
        status = run.read_status()
        log_tail = self._log_tail(run) if status.get("state") == "failed" else ""
        out["run.status"] = values.status_markdown(run_id, status, log_tail)
        smoothing, log_scale = v["run.smoothing"], v["run.log_scale"]
        signature = (run_id, overlay, smoothing, log_scale, files_signature(run.path),
                     files_signature(self.queue.runs_dir / overlay) if overlay else None)
        if signature != seen.get("run"):
            seen["run"] = signature
            # Rendered once for every session looking at the same files with the same settings; a
            # session is sent only the panels whose content changed since it last drew them.
            drawn, adapters = dict(seen.get("drawn") or {}), None
            panels = self.shared_run_panels(run, overlay, smoothing, log_scale)
            for id_, (mark, value) in panels.items():
                if id_ == "adapters":
                    adapters = value
                elif drawn.get(id_) != mark:
                    out[id_], drawn[id_] = value, mark
            if drawn.get("compare.adapter") != tuple(adapters):
                variant = v["compare.adapter"]
                out["compare.adapter"] = gr.update(choices=adapters, value=variant if variant in adapters else
                                                   (adapters[0] if adapters else None))
                drawn["compare.adapter"] = tuple(adapters)
            seen["drawn"] = drawn
        return out | _changed_seen(v, seen)

    def empty_panels(self) -> Values:
        """The run panels with no run: an empty chart, tables and grid, no adapters."""
        charts = self.renders.get("empty", lambda: (png(plots.loss_figure({})), png(plots.parameter_figure([]))))
        return {"run.chart": charts[0], "run.points": "",
                "compare.table": pd.DataFrame([], columns=list(compare.COMPARISON_COLUMNS)),
                "compare.bars": charts[1], "compare.outputs": values.grid_html([], []),
                "compare.adapter": gr.update(choices=[], value=None)}

    def shared_run_panels(self, run: RunDir, overlay, smoothing, log_scale) -> dict:
        """The run panels as every session sees them: {panel id: (fingerprint, value)} and
        "adapters": (None, the run's trained variants). Each part is built once per version of the
        files it reads, for all sessions: the chart and its point count from metrics.jsonl (and the
        overlay's), the comparison and its bars from metrics, summary and spec, the outputs from
        samples.jsonl; a heartbeat in status.json redraws nothing."""
        other = RunDir(self.queue.runs_dir / overlay) if overlay and overlay != run.run_id else None
        chart = self.renders.get(
            ("chart", str(run.path), _stamp(run.metrics_path), other and str(other.path),
             other and _stamp(other.metrics_path), smoothing, log_scale),
            lambda: self._chart(run, other, smoothing, log_scale))
        comparison = self.renders.get(
            ("comparison", str(run.path), _stamp(run.metrics_path), _stamp(run.summary_path), _stamp(run.spec_path)),
            lambda: self._comparison(run))
        outputs = self.renders.get(("outputs", str(run.path), _stamp(run.samples_path)),
                                   lambda: _marked({"compare.outputs": values.grid_html(*compare.output_grid(run.path))}))
        return {**chart, **comparison, **outputs, "adapters": (None, trained_variants(run))}

    @staticmethod
    def _chart(run: RunDir, other: RunDir | None, smoothing, log_scale) -> dict:
        runs_metrics = {run.run_id: run.read_metrics()}
        if other is not None:
            runs_metrics[other.run_id] = other.read_metrics()
        counts = plots.curve_counts(plots.loss_curves(runs_metrics, smoothing))
        return _marked({"run.chart": png(plots.loss_figure(runs_metrics, smoothing, log_scale)),
                        "run.points": f"{counts['train']} training points, {counts['eval']} validation points"})

    def _comparison(self, run: RunDir) -> dict:
        """The comparison table, and its parameter bars, drawn once per set of counts (they do not
        change while a run trains)."""
        rows = compare.comparison_table(run.path)
        counted = [r for r in rows if r["trainable"] is not None]
        bars = self.renders.get(("bars", tuple((r["variant"], r["trainable"], r["stored"]) for r in counted)),
                                lambda: png(plots.parameter_figure(counted)))
        return _marked({"compare.table": pd.DataFrame(rows, columns=list(compare.COMPARISON_COLUMNS)),
                        "compare.bars": bars})

    # --- generation and downloads -------------------------------------------------------------------

    @staticmethod
    def run_selected(v: Values) -> Values:
        """Another run selected: the last one's generations and adapter zip would sit under its status."""
        return {"compare.generated": "", "compare.adapter_file": None}

    def generate(self, v: Values, progress=gr.Progress()) -> Values:
        """Typed prompt -> base and every variant's output (queued; loads the run's model once).

        A refusal (no run, no adapter yet, an empty or too long prompt) or a failure is a message
        in the outputs' place, escaped; a prompt over limits.MAX_PROMPT_CHARS is refused before
        anything is loaded or tokenized, so it holds the Generate slot for no time."""
        run_id, prompt = v["run.select"], v["compare.prompt"] or ""
        if len(prompt) > MAX_PROMPT_CHARS:
            return _said(f"the prompt is {len(prompt):,} characters long; the page generates from prompts of up to "
                         f"{MAX_PROMPT_CHARS:,} characters: shorten it")
        if not run_id:
            return _said("select a run first (the runs list), then generate")
        try:
            rows = generate_all(self.queue.run_dir(plain_run_id(run_id)).path, prompt,
                                on_progress=lambda fraction, text: progress(fraction, desc=text))
        except ValueError as err:  # no adapter yet, an empty prompt, the engine's own limits
            return _said(str(err))
        except Exception as err:  # noqa: BLE001 - the page shows a message, the app's log the traceback
            traceback.print_exc(file=sys.stderr)
            return _said(f"generation failed ({type(err).__name__}: {err}); the app's output has the details")
        return {"compare.generated": values.grid_html(["prompt", *[name for name, _ in rows]],
                                                      [[prompt, *[out for _, out in rows]]])}

    def zip_adapter(self, v: Values) -> Values:
        """-> a zip of runs/<id>/adapters/<variant> (adapter_config.json + adapter_model.safetensors)."""
        run_id, variant = v["run.select"], v["compare.adapter"]
        if not run_id:
            raise gr.Error("select a run and one of its trained adapters first")
        try:
            run = self.queue.run_dir(plain_run_id(run_id))
        except ValueError:
            raise gr.Error(values.toast_text(f"run {run_id} no longer exists (its folder was removed); choose "
                                             "another run")) from None
        adapters = trained_variants(run)
        if not adapters:
            raise gr.Error(values.toast_text(no_adapters_message(run)))
        if not variant:
            raise gr.Error("select one of the run's trained adapters first")
        if variant not in adapters:
            raise gr.Error(values.toast_text(f"run {run_id} has no saved adapter {variant!r} yet"))
        base = self.download_folder() / f"{run_id}-{variant}"
        return {"compare.adapter_file": shutil.make_archive(str(base), "zip", root_dir=run.adapter_dir(variant) or run.adapter_path(variant))}


def _said(message: str) -> Values:
    """A refusal or failure of Generate, shown where its outputs go."""
    return {"compare.generated": values.html_message(message, "generate-message")}


def _changed_seen(v: Values, seen: dict) -> Values:
    """"run.seen" when it differs from what the page holds, else nothing (the tick sends only changes)."""
    return {"run.seen": seen} if seen != v["run.seen"] else {}
