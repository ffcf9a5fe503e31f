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
import json
import secrets
import shutil
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import gradio as gr
from gradio.components.plot import PlotData

from prefixlab.engine.limits import MAX_PROMPT_CHARS
from prefixlab.engine.runs import FINAL_STATES, JobQueue, RunDir
from prefixlab.engine.sweep import SweepSummary, SweepView, list_sweeps, read_sweep
from prefixlab.ui import values
from prefixlab.ui.generate import generate_all, no_adapters_message, trained_variants
from prefixlab.ui.values import Values
from prefixlab.views import figures as plots
from prefixlab.ui.sweeps import NO_SWEEPS, sweep_choices
from prefixlab.views import tables as compare
from prefixlab.views.sweep import sweep_figure, sweep_table

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
    data = base64.b64encode(plots.figure_bytes(figure, "png")).decode("ascii")
    return PlotData(type="matplotlib", plot=f"data:image/png;base64,{data}")


def fingerprint(value) -> int:
    """What tells a panel's content apart from its last: the hash of its text or rows."""
    if isinstance(value, PlotData):
        return hash(value.plot)
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
        """Page opened or refreshed: every run on disk, the running (else newest) one selected, and
        every other one offered to overlay."""
        infos = self.queue.list_runs()
        ids = [i.run_id for i in infos]
        selected = values.default_selection(infos)
        return {"run.select": gr.update(choices=ids, value=selected),
                "run.overlay": gr.update(choices=overlay_choices(ids, selected), value=""),
                "runs.table": values.runs_html(self.runs_rows(infos), selected)}

    def runs_rows(self, infos=None) -> list[list]:
        rows = []
        for info in infos if infos is not None else self.queue.list_runs():
            run = RunDir(info.path)
            rows.append(values.run_row(info, run.read_summary(), run.read_metrics()))
        return rows

    def _runs_table(self, infos, selected: str | None) -> str:
        """The runs table, built once per state of the runs' files (and selection) for every session."""
        key = ("runs", selected, tuple((i.run_id, i.state, i.step, _stamp(i.path / "summary.json"),
                                        _stamp(i.path / "metrics.jsonl")) for i in infos))
        return self.renders.get(key, lambda: values.runs_html(self.runs_rows(infos), selected))

    def _log_tail(self, run: RunDir) -> str:
        """The last 20 lines of a failed run's log, read once per version of the file."""
        try:
            st = run.log_path.stat()
        except FileNotFoundError:
            return ""
        return self.renders.get(("log", str(run.path), st.st_mtime_ns, st.st_size), lambda: run.log_tail(20))

    def _pace(self, run: RunDir) -> float | None:
        """Measured seconds per step (values.seconds_per_step), once per version of metrics.jsonl."""
        return self.renders.get(("pace", str(run.path), _stamp(run.metrics_path)),
                                lambda: values.seconds_per_step(run.read_metrics()))

    def _settings(self, run: RunDir) -> str:
        """The run's settings line, once per version of its spec.json."""
        return self.renders.get(("settings", str(run.path), _stamp(run.spec_path)),
                                lambda: values.settings_line(_quiet_spec(run)))

    def tick(self, v: Values) -> Values:
        """Timer (about 1 s) and run selection: redraw what changed on disk since "run.seen".

        Returns the status line always, and of the charts, points, comparison, bars, output grid,
        adapter dropdown, runs table, run and overlay dropdowns and "run.seen" only those that
        changed. The adapter picked ("compare.adapter") stays picked while the run still has it; the
        overlay menu offers every run but the selected one.
        """
        run_id, overlay = v["run.select"], v["run.overlay"]
        seen = dict(v["run.seen"] or {})
        out: Values = {}
        infos = self.queue.list_runs()
        ids = [i.run_id for i in infos]
        if run_id and run_id not in ids:
            # A run whose folder was deleted on disk: unselect it in the same update that drops it
            # from the choices (a dropdown holding a value it no longer offers fails every later event).
            out["run.select"] = gr.update(choices=ids, value=None)
            seen["gone"], run_id = run_id, None
            seen.pop("run", None)
            seen.pop("drawn", None)  # the next run's panels are all sent
            out |= self.empty_panels()  # not the deleted run's chart and tables
        listing = (tuple((i.run_id, i.state, i.step) for i in infos), run_id)
        if listing != seen.get("listing"):
            out["runs.table"] = self._runs_table(infos, run_id)
            seen["listing"] = listing
        if ids != seen.get("ids"):  # the run dropdown changes only when a run appears (not every step)
            out.setdefault("run.select", gr.update(choices=ids))
            seen["ids"] = ids
        choices = overlay_choices(ids, run_id)
        if overlay and (overlay not in ids or overlay == run_id):  # deleted, or now the selected run itself
            out["run.overlay"] = gr.update(choices=choices, value="")
            overlay = ""
        elif choices != seen.get("overlay_choices"):
            out["run.overlay"] = gr.update(choices=choices)
        seen["overlay_choices"] = choices
        if not run_id:
            status_md = values.status_markdown("", {})
            if seen.get("gone"):
                status_md = f"Run **{seen['gone']}** no longer exists (its folder was removed).\n\n{status_md}"
            return out | {"run.status": status_md} | _changed_seen(v, seen)
        seen.pop("gone", None)
        run = RunDir(self.queue.runs_dir / run_id)  # listed above; reads as empty if deleted since
        status = run.read_status()
        log_tail = self._log_tail(run) if status.get("state") == "failed" else ""
        pace = self._pace(run) if status.get("state") == "running" else None
        out["run.status"] = values.status_markdown(run_id, status, log_tail, pace=pace, settings=self._settings(run))
        smoothing, log_scale = plots.clamp_smoothing(v["run.smoothing"]), bool(v["run.log_scale"])
        signature = (run_id, overlay, smoothing, log_scale, files_signature(run.path),
                     files_signature(self.queue.runs_dir / overlay) if overlay else None)
        if signature != seen.get("run"):
            seen["run"] = signature
            # Rendered once for every session looking at the same files with the same settings; a
            # session is sent only the panels whose content changed since it last drew them.
            drawn, adapters = dict(seen.get("drawn") or {}), None
            names = {i.run_id: i.name for i in infos}
            panels = self.shared_run_panels(run, overlay, smoothing, log_scale, names)
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
        """The run panels with no run: empty charts, tables and grid, no adapters."""
        charts = self.renders.get("empty", lambda: (png(plots.loss_figure({})), png(plots.metric_figure({})),
                                                    png(plots.parameter_figure([]))))
        return {"run.chart": charts[0], "run.metrics": charts[1], "run.points": "", "run.bars": charts[2],
                "compare.table": values.comparison_html([]), "compare.outputs": values.grid_html([], []),
                "compare.adapter": gr.update(choices=[], value=None)}

    def shared_run_panels(self, run: RunDir, overlay, smoothing, log_scale, names: dict | None = None) -> dict:
        """The run panels as every session sees them: {panel id: (fingerprint, value)} and
        "adapters": (None, the run's trained variants). Each part is built once per version of the
        files it reads, for all sessions: the charts and point counts from metrics.jsonl (and the
        overlay's), the comparison and its bars from metrics, summary and spec, the outputs from
        samples.jsonl; a heartbeat in status.json redraws nothing."""
        other = RunDir(self.queue.runs_dir / overlay) if overlay and overlay != run.run_id else None
        labels = values.run_labels([run.run_id] + ([other.run_id] if other else []), names)
        chart = self.renders.get(
            ("chart", str(run.path), _stamp(run.metrics_path), _stamp(run.spec_path), other and str(other.path),
             other and _stamp(other.metrics_path), smoothing, log_scale, tuple(labels.items())),
            lambda: self._charts(run, other, smoothing, log_scale, labels))
        comparison = self.renders.get(
            ("comparison", str(run.path), _stamp(run.metrics_path), _stamp(run.summary_path), _stamp(run.spec_path)),
            lambda: self._comparison(run))
        outputs = self.renders.get(("outputs", str(run.path), _stamp(run.samples_path)),
                                   lambda: _marked({"compare.outputs": values.grid_html(*compare.output_grid(run.path))}))
        return {**chart, **comparison, **outputs, "adapters": (None, trained_variants(run))}

    @staticmethod
    def _charts(run: RunDir, other: RunDir | None, smoothing, log_scale, labels: dict[str, str]) -> dict:
        """The loss and task-metric charts (the overlay's curves too) and the loss chart's point counts."""
        runs_metrics = {run.run_id: run.read_metrics()}
        if other is not None:
            runs_metrics[other.run_id] = other.read_metrics()
        order = _variant_order(run)
        counts = plots.point_counts(plots.loss_curves(runs_metrics, smoothing))
        return _marked({"run.chart": png(plots.loss_figure(runs_metrics, smoothing, log_scale, labels, order)),
                        "run.metrics": png(plots.metric_figure(runs_metrics, labels, order)),
                        "run.points": values.points_markdown(counts, labels)})

    def _comparison(self, run: RunDir) -> dict:
        """The comparison table, and its parameter bars, drawn once per set of counts (they do not
        change while a run trains)."""
        rows = compare.comparison_table(run.path)
        order = [r["variant"] for r in rows]
        counted = [r for r in rows if r["trainable"] is not None]
        bars = self.renders.get(("bars", tuple((r["variant"], r["trainable"], r["stored"]) for r in counted)),
                                lambda: png(plots.parameter_figure(counted, order)))
        return _marked({"compare.table": values.comparison_html(rows, order), "run.bars": bars})

    # --- sweeps -----------------------------------------------------------------------------------

    def _sweeps(self) -> list[SweepSummary]:
        """The runs folder's sweeps (engine.sweep.list_sweeps, newest first), read again only when a
        run folder appears or goes: a run's sweep tag is written with its spec.json and never changes,
        so the same run folders (those with a spec.json, as JobQueue.list_runs counts them) hold the
        same sweeps. The run counts by state are of that reading; the tab reads states itself."""
        runs_dir = self.queue.runs_dir
        try:
            names = tuple(sorted(p.name for p in runs_dir.iterdir() if (p / "spec.json").is_file()))
        except OSError:
            names = ()
        return self.renders.get(("sweeps", str(runs_dir), names), lambda: list_sweeps(runs_dir))

    def _sweep_view(self, summary: SweepSummary) -> SweepView:
        """read_sweep of one sweep, read again only when one of its runs changes state or, once ended,
        its summary.json or metrics.jsonl (what a point's values come from: engine.sweep.run_points);
        a running run's heartbeat changes nothing. Raises ValueError or OSError as read_sweep does."""
        parts = []
        for run_id in summary.run_ids:
            run = RunDir(self.queue.runs_dir / run_id)
            state = run.read_status().get("state")
            ended = state in FINAL_STATES
            parts.append((run_id, state, ended and _stamp(run.summary_path), ended and _stamp(run.metrics_path)))
        return self.renders.get(("sweep", str(self.queue.runs_dir), summary.id, tuple(parts)),
                                lambda: read_sweep(self.queue.runs_dir, summary.id))

    def sweeps_on_load(self, v: Values) -> Values:
        """Page opened or refreshed: the runs folder's sweeps in the menu (they are read from the run
        folders, so a restarted app lists them all), the newest selected."""
        sweeps = self._sweeps()
        return {"sweep.select": gr.update(choices=sweep_choices(sweeps), value=sweeps[0].id if sweeps else None)}

    def sweep_tick(self, v: Values) -> Values:
        """Timer (about 1 s), sweep selection and metric: the sweeps menu when a sweep appears or goes
        (the newest selected while none is), and the selected sweep's chart and table when what they
        show changes (SweepView.fingerprint), drawn once per change for every session. A session is
        sent only what changed since "sweep.seen"."""
        selected, metric = v["sweep.select"] or None, v["sweep.metric"] or None
        seen = dict(v["sweep.seen"] or {})
        out: Values = {}
        sweeps = self._sweeps()
        by_id = {s.id: s for s in sweeps}
        choices = sweep_choices(sweeps)
        if selected not in by_id and (selected or sweeps):  # none yet, or its runs removed: the newest, if any
            selected = sweeps[0].id if sweeps else None
            out["sweep.select"] = gr.update(choices=choices, value=selected)
        elif choices != seen.get("choices"):
            out["sweep.select"] = gr.update(choices=choices)
        seen["choices"] = choices
        if selected is None:
            mark, chart, table = None, None, values.sweep_html([], [], [], empty=NO_SWEEPS)
        else:
            try:
                view = self._sweep_view(by_id[selected])
            except (ValueError, OSError) as err:
                mark, chart = ("unreadable", selected, str(err)), None
                table = values.html_message(f"sweep {selected} cannot be read: {err}", "sweep-message")
            else:
                mark = (selected, metric, view.fingerprint())
                chart = self.renders.get(("sweep-chart", *mark), lambda: png(sweep_figure(view, metric)))
                table = self.renders.get(("sweep-table", selected, view.fingerprint()),
                                         lambda: values.sweep_html(*sweep_table(view), view.fields, view.variants))
        if mark != seen.get("drawn") or "drawn" not in seen:
            out["sweep.chart"], out["sweep.table"], seen["drawn"] = chart, table, mark
        return out | ({"sweep.seen": seen} if seen != v["sweep.seen"] else {})

    # --- generation and downloads -------------------------------------------------------------------

    @staticmethod
    def run_selected(v: Values) -> Values:
        """Another run selected: the last one's generations, adapter zip and chart files would sit
        under its status."""
        return {"compare.generated": "", "compare.adapter_file": None, "compare.adapter_note": "",
                "run.files": gr.update(value=None, visible=False), "run.note": ""}

    def generate(self, v: Values, progress=gr.Progress()) -> Values:
        """Typed prompt -> base and every variant's output (queued; loads the run's model once).

        A refusal (no run, no adapter yet, an empty or too long prompt) or a failure is a message
        in the outputs' place, escaped (never a traceback); a prompt over limits.MAX_PROMPT_CHARS is
        refused before anything is loaded or tokenized, so it holds the Generate slot for no time."""
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
        except Exception as err:  # noqa: BLE001 - the page shows the message; the app's output one line
            print(f"generate: run {run_id}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            return _said(f"generation failed ({type(err).__name__}: {err})")
        return {"compare.generated": values.grid_html(["prompt", *[name for name, _ in rows]],
                                                      [[prompt, *[out for _, out in rows]]])}

    def zip_adapter(self, v: Values) -> Values:
        """-> a zip of runs/<id>/adapters/<variant> (adapter_config.json + adapter_model.safetensors,
        README.md), or why not beside the button."""
        run_id, variant = v["run.select"], v["compare.adapter"]
        if not run_id:
            return _not_zipped("select a run and one of its trained adapters first")
        try:
            run = self.queue.run_dir(plain_run_id(run_id))
        except ValueError:
            return _not_zipped(f"run {run_id} no longer exists (its folder was removed); choose another run")
        adapters = trained_variants(run)
        if not adapters:
            return _not_zipped(no_adapters_message(run))
        if not variant:
            return _not_zipped("select one of the run's trained adapters first")
        if variant not in adapters:
            return _not_zipped(f"run {run_id} has no saved adapter {variant!r} yet")
        base = self.download_folder() / f"{run_id}-{variant}"
        folder = run.adapter_dir(variant) or run.adapter_path(variant)
        return {"compare.adapter_file": shutil.make_archive(str(base), "zip", root_dir=folder),
                "compare.adapter_note": paper_layout_note(folder)}

    def export_charts(self, v: Values) -> Values:
        """-> the selected run's charts as PNG and SVG (loss with the overlay and the chart's settings,
        task metrics, parameters) and its metrics (and the overlay's) as CSV, as downloads."""
        run_id, overlay = v["run.select"], v["run.overlay"]
        try:
            run = self.queue.run_dir(plain_run_id(run_id or ""))
        except ValueError:
            return _no_files("select a run first; its charts and metrics then download")
        if not run.path.is_dir():
            return _no_files(f"run {run_id} no longer exists (its folder was removed); choose another run")
        other = None
        if overlay and overlay != run_id:
            try:
                other = self.queue.run_dir(plain_run_id(overlay))
            except ValueError:
                other = None
        runs_metrics = {run.run_id: run.read_metrics()}
        if other is not None and other.path.is_dir():
            runs_metrics[other.run_id] = other.read_metrics()
        labels = values.run_labels(list(runs_metrics), {i.run_id: i.name for i in self.queue.list_runs()})
        order = _variant_order(run)
        rows = [r for r in compare.comparison_table(run.path) if r["trainable"] is not None]
        figures = {"loss": plots.loss_figure(runs_metrics, plots.clamp_smoothing(v["run.smoothing"]),
                                             bool(v["run.log_scale"]), labels, order),
                   "task-metrics": plots.metric_figure(runs_metrics, labels, order),
                   "parameters": plots.parameter_figure(rows, order)}
        folder = self.download_folder()
        paths = []
        for name, figure in figures.items():
            for fmt in ("png", "svg"):
                path = folder / f"{run.run_id}-{name}.{fmt}"
                path.write_bytes(plots.figure_bytes(figure, fmt))
                paths.append(str(path))
        csv_path = folder / f"{run.run_id}-metrics.csv"
        csv_path.write_text(compare.metrics_csv(runs_metrics), encoding="utf-8")
        return {"run.files": gr.update(value=[*paths, str(csv_path)], visible=True), "run.note": ""}


NO_OVERLAY = ("no overlay", "")


def overlay_choices(ids: list[str], selected: str | None) -> list:
    """What the overlay menu offers: no overlay, or any run but the selected one."""
    return [NO_OVERLAY, *(i for i in ids if i != selected)]


def _quiet_spec(run: RunDir):
    """The run's spec, or None when spec.json cannot be read (the status line then shows no settings)."""
    try:
        return run.read_spec()
    except (ValueError, OSError):
        return None


def _variant_order(run: RunDir) -> list[str]:
    """The run's variants in its spec's order (their colours in every chart and table)."""
    spec = _quiet_spec(run)
    return [v.name for v in spec.variants] if spec is not None else []


def _no_files(message: str) -> Values:
    """Why the charts cannot be downloaded, beside the button (escaped)."""
    return {"run.files": gr.update(value=None, visible=False), "run.note": f"⚠️ {values.md_text(message)}"}


def paper_layout_note(folder: Path) -> str:
    """What the download of an adapter in the paper's encoder-decoder layout must say: PEFT cannot
    load it (its card says so too); "" for PEFT's layout."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if config.get("prefix_positions") != "paper":
        return ""
    return ("ℹ️ This adapter has the paper's encoder-decoder prefixes (prefix_positions=\"paper\"): prefixlab loads "
            "it (`PrefixTuningModel.from_pretrained`), **PEFT cannot** (its files are `paper_prompt_embeddings.*`, "
            "not PEFT's `prompt_embeddings`).")


def _not_zipped(message: str) -> Values:
    """Why the adapter cannot be downloaded, beside the button (escaped)."""
    return {"compare.adapter_file": None, "compare.adapter_note": f"⚠️ {values.md_text(message)}"}


def _said(message: str) -> Values:
    """A refusal or failure of Generate, shown where its outputs go."""
    return {"compare.generated": values.html_message(message, "generate-message")}


def _changed_seen(v: Values, seen: dict) -> Values:
    """"run.seen" when it differs from what the page holds, else nothing (the tick sends only changes)."""
    return {"run.seen": seen} if seen != v["run.seen"] else {}
