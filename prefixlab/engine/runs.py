"""The run directory contract and the job queue that starts and cancels workers.

    runs/<id>/spec.json       the ExperimentSpec as submitted
    runs/<id>/status.json     {"state", "step", "total_steps", "started_at", "updated_at",
                               "finished_at", "pid", "error", "heartbeat"}
    runs/<id>/metrics.jsonl   train lines {"variant", "step", "epoch", "loss", "lr", "tokens_per_s",
                               "time"}; eval lines {"variant", "step", "eval_loss", "time"}; task-metric
                               lines {"variant", "step", "metric_examples", "bleu", ..., "time"}
                               (variant "base": the untuned model, at step 0)
    runs/<id>/adapters/<variant>/   PEFT format
    runs/<id>/models/<variant>/     the fine_tune baseline's whole model
    runs/<id>/samples.jsonl   {"prompt", "reference", "outputs": {"base": ..., "<variant>": ...}}
    runs/<id>/summary.json    parameter counts, final losses and task metrics, tokens/s, wall time
    runs/<id>/evaluation-<split>.json   `python -m prefixlab evaluate` (engine/evaluate.py)
    runs/<id>/tensorboard/    event files (training.report_to)
    runs/<id>/log.txt         the worker's log, traceback included on failure
    runs/<id>/cancel          present when a stop was requested (SIGTERM is sent as well)
    runs/<id>/worker.lock     held (flock) by the one worker training the run; empty

JSON files are replaced atomically and JSONL lines appended whole, so a reader (the page, once a
second) never sees half a record and a killed worker loses nothing it already wrote.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; status.json's pid and heartbeat still guard
    fcntl = None

from prefixlab.engine.spec import ExperimentSpec, SpecError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINAL_STATES = frozenset({DONE, FAILED, CANCELLED})
# A live worker refreshes status.json's heartbeat every few seconds from a background thread, so
# a heartbeat this old means the worker is frozen or gone (pid reused by another process).
HEARTBEAT_TIMEOUT_S = 60.0
# Set by JobQueue._launch, in the worker's environment, to the --run-dir it passes: the worker may
# then start a run the queue has already marked `running` (pid not yet recorded).
QUEUE_LAUNCH_ENV = "PREFIXLAB_QUEUE_LAUNCH"


# ---------------------------------------------------------------------------------------------
# Whole-record file primitives
# ---------------------------------------------------------------------------------------------


class RunFileError(ValueError):
    """A run file that exists but cannot be read as what it should be; the message names it."""


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, unique temp file beside `path`, created like open(..., "w") creates files (mode 0666
    less the umask; tempfile.mkstemp would make it 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def naming(err: OSError, path: str | Path) -> OSError:
    """`err` (same class and errno) with `path` as its file name: the file we meant to write, not the
    temp file it failed on (whose random name changes every time)."""
    return OSError(err.errno, err.strerror or str(err), str(path)) if err.errno else OSError(f"{err}: {path}")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename over `path` (atomic on POSIX).
    An OSError (a read-only or full disk) names `path`, not the temp file."""
    path = Path(path)
    try:
        fd, tmp = _create_temp(path)
    except OSError as err:
        raise naming(err, path) from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise naming(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def overwrite_json(path: str | Path, obj: Any) -> None:
    """Write JSON over `path` in place: the last resort when atomic_write_json cannot create its temp
    file (a full disk). Not atomic, but rewriting a small file's existing block needs no new space."""
    text = json.dumps(obj, indent=2).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        os.write(fd, text)
        os.ftruncate(fd, len(text))
        os.fsync(fd)
    except OSError as err:
        raise naming(err, path) from err
    finally:
        os.close(fd)


def describe_os_error(err: OSError, doing: str = "writing") -> str:
    """One line for an OSError met reading or writing a run's files: what failed, on which file, and
    what to do. ENOSPC: "no space left on device writing <file>: free space ... (N free now)"."""
    path = err.filename or ""
    where = f" {path}" if path else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = ""
        try:
            folder = Path(path).parent if path else Path.cwd()
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            free = f" ({shutil.disk_usage(folder).free / 2**20:,.0f} MiB free now)"
        except OSError:
            pass
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{what} {doing}{where}: free space on that disk{free} or move the runs folder to a bigger one, "
                "then train again")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if err.errno == errno.EROFS else "permission denied"
        return f"{why} {doing}{where}: use a folder you can write to (--runs-dir DIR) or change its permissions"
    if err.errno == errno.ENOENT:
        return f"no such file or folder{where}: check the path, or create the folder"
    reason = err.strerror or str(err) or type(err).__name__
    return f"{reason} {doing}{where}: check the disk and the folder's permissions, then try again"


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one JSON line with a single write call, flushed, so readers see whole lines."""
    line = json.dumps(obj, allow_nan=True) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
    except OSError as err:  # a failed write names no file: name it
        raise naming(err, path) from err


def json_error_at(message: str, where: str) -> str:
    """json's error `message` placed at `where` ("column 13"): "Expecting value at column 13", and
    "Unterminated string starting at column 13" (json's message for that one ends in "at")."""
    return f"{message} {where}" if message.endswith(" at") else f"{message} at {where}"


def _not_utf8(err: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at position {err.start})"


def _json_object(raw: bytes, whole_file: bool = True) -> tuple[dict | None, str | None]:
    """(the JSON object `raw` holds, None), or (None, what is wrong with it, for "<file> ..."):
    `whole_file`, a run's JSON file; else one line of a JSON Lines file."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"is {_not_utf8(err)}"
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}" if whole_file else f"column {err.colno}"
        return None, f"is not valid JSON ({json_error_at(err.msg, where)})"
    if not isinstance(data, dict):
        return None, f"{'holds' if whole_file else 'is'} a JSON {type(data).__name__}, not an object"
    return data, None


class RunFileUnreadable(OSError):
    """A run file the system would not let us read, even after retries (an I/O error, too many open
    files): its content is unknown, not bad, so no state may be inferred from it."""


class RunsFolderError(OSError):
    """The runs folder cannot take a new run (read-only, gone, full); the message names the folder
    and what to do, and `errno` / `filename` are the cause's."""

    @classmethod
    def wrap(cls, err: OSError, runs_dir: Path, doing: str) -> RunsFolderError:
        return cls(err.errno, f"cannot {doing} in {runs_dir}: {describe_os_error(err)}", err.filename)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def read_json(path: str | Path, attempts: int = 3) -> dict | None:
    """The JSON object at `path`, or None when it does not exist (yet). Raises RunFileError, naming
    the file, when its content is not a JSON object (files are written whole by a rename, so bad
    content stays bad), and RunFileUnreadable when reading fails `attempts` times."""
    path = Path(path)
    for attempt in range(attempts):
        try:
            text = path.read_bytes()
            break
        except FileNotFoundError:
            return None
        except OSError as err:
            if attempt == attempts - 1:
                raise RunFileUnreadable(f"cannot read {path}: {err.strerror or err}") from None
            time.sleep(0.05)
    data, problem = _json_object(text)
    if problem:
        raise RunFileError(f"{path} {problem}")
    return data


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete line of a JSONL file; a trailing line without newline (being written, or torn
    by a killed writer) is skipped rather than parsed half-way. A complete line that is not a JSON
    object is skipped with a warning naming the file and line: the page reads these files every
    second and shows what the good lines hold."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        warnings.warn(f"cannot read {path}: {err.strerror}; showing nothing from it", stacklevel=2)
        return []
    records = []
    for number, raw in enumerate(data.split(b"\n")[:-1], start=1):  # the last is b"" or unfinished
        if not raw.strip():
            continue
        record, problem = _json_object(raw, whole_file=False)
        if problem:
            warnings.warn(f"{path} line {number} {problem}; skipped it", stacklevel=2)
        else:
            records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# One worker per run
# ---------------------------------------------------------------------------------------------


class RunBusy(RuntimeError):
    """Another worker holds the run (its worker.lock); the message names the run."""


_held_locks: dict[Path, list] = {}  # run folder -> [fd, depth, thread], the worker locks this process holds
_held_guard = threading.Lock()


@contextmanager
def worker_lock(run_path: str | Path) -> Iterator[None]:
    """Hold `run_path`/worker.lock for the block: at most one worker trains a run at a time, even
    when a CLI `train --run-dir` and the page's queue start the same queued run at the same instant
    (each reads `queued` before either writes `running`). Re-entrant within a thread (another
    thread of the process is refused, like another process); released by
    the kernel when the process dies, so a killed worker leaves no stale lock. Raises RunBusy,
    having written nothing, when another process holds it."""
    key = Path(run_path).resolve()
    with _held_guard:
        held = _held_locks.get(key)
        if held is not None and held[2] != threading.get_ident():
            raise RunBusy(f"{key} is being trained by another worker (a thread of this process)")
        if held is not None:
            held[1] += 1
        elif fcntl is not None:
            fd = os.open(key / "worker.lock", os.O_RDWR | os.O_CREAT, 0o666)
            for attempt in range(20):  # worker_lock_held's probe holds it for microseconds
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.025)
            else:
                os.close(fd)
                raise RunBusy(f"{key} is being trained by another worker")
            _held_locks[key] = [fd, 1, threading.get_ident()]
    try:
        yield
    finally:
        with _held_guard:
            held = _held_locks.get(key)
            if held is not None:
                held[1] -= 1
                if held[1] == 0:
                    del _held_locks[key]
                    os.close(held[0])  # closing the last descriptor releases the flock


@contextmanager
def _try_folder_lock(path: Path) -> Iterator[bool]:
    """Try an exclusive flock on `path` for the block without waiting: yields whether it was taken
    (another holder may be stopped or hung; waiting would freeze whoever called us)."""
    if fcntl is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def worker_lock_held(run_path: str | Path) -> bool:
    """True while some worker (this process or another) holds the run's worker.lock."""
    key = Path(run_path).resolve()
    if key in _held_locks:
        return True
    if fcntl is None or not (key / "worker.lock").exists():
        return False
    try:
        fd = os.open(key / "worker.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: never blocks another such test
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock, if taken


# ---------------------------------------------------------------------------------------------
# Adapters: adapters/<variant>/, each checkpoint replacing its files in place
# ---------------------------------------------------------------------------------------------

# Before each checkpoint replaced adapters/<v>'s files one by one (worker.save_adapter), it renamed
# adapters/<v> to .<v>.old and then .<v>.tmp to adapters/<v>: a kill between the two renames left
# no adapters/<v>, only these complete copies (.<v>.tmp the newer), which recover_adapter restores.
STRANDED = (".tmp", ".old")  # newest first


def _safetensors_complete(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and its tensors end where the
    file ends (a file cut short by a kill mid-write is not)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            size = int.from_bytes(head, "little")
            if size > 100 * 2**20:
                return False
            header = json.loads(f.read(size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            return 8 + size + end == os.fstat(f.fileno()).st_size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def adapter_complete(folder: str | Path) -> bool:
    """Whether `folder` holds a whole adapter: an adapter_config.json that is a JSON object and its
    weights (PEFT writes the weights first, then the config)."""
    from prefixlab.core.config import CONFIG_NAME, LEGACY_WEIGHTS_NAME, WEIGHTS_NAME

    folder = Path(folder)
    try:
        _, problem = _json_object((folder / CONFIG_NAME).read_bytes())
    except OSError:
        return False
    if problem:
        return False
    return _safetensors_complete(folder / WEIGHTS_NAME) or (folder / LEGACY_WEIGHTS_NAME).is_file()


def recover_adapter(target: str | Path, *, owner: bool = False) -> Path | None:
    """The folder holding `target`'s (adapters/<variant>) newest whole adapter, or None if there is
    none. Where an older worker was killed mid-checkpoint (see STRANDED), the newest whole stranded
    copy is renamed to `target` and the other copies are removed, unless another worker holds the run
    (`owner`: the caller is that worker); then the copy's own folder is returned, left in place."""
    target = Path(target)
    copies = [target.with_name(f".{target.name}{suffix}") for suffix in STRANDED]
    copies = [c for c in copies if c.is_dir()]
    if adapter_complete(target):
        best = None
    else:
        best = next((c for c in copies if adapter_complete(c)), None)
        if best is None:
            return None
    if not copies:
        return target
    run_path = target.parent.parent
    if not owner and worker_lock_held(run_path):
        return best or target  # the worker repairs it at its next checkpoint
    if best is not None:
        if target.exists():  # incomplete (files removed by hand?): not ours to delete; read the copy
            return best
        try:
            os.rename(best, target)
        except OSError:  # another reader repaired it first
            return target if adapter_complete(target) else None
        copies.remove(best)
    for copy in copies:
        shutil.rmtree(copy, ignore_errors=True)
    return target


def adapter_variants(adapters_path: str | Path) -> list[str]:
    """The variant names found under an adapters folder, stranded copies (.<v>.old / .<v>.tmp) included."""
    try:
        entries = [p.name for p in Path(adapters_path).iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = set()
    for name in entries:
        if not name.startswith("."):
            names.add(name)
        for suffix in STRANDED:
            if name.startswith(".") and name.endswith(suffix) and len(name) > len(suffix) + 1:
                names.add(name[1:-len(suffix)])
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# One run directory
# ---------------------------------------------------------------------------------------------


class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec_path = self.path / "spec.json"
        self.status_path = self.path / "status.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples_path = self.path / "samples.jsonl"
        self.summary_path = self.path / "summary.json"
        self.log_path = self.path / "log.txt"
        self.adapters_path = self.path / "adapters"
        self.models_path = self.path / "models"  # whole models: the fine-tuning baseline's copy
        self.cancel_path = self.path / "cancel"  # a stop request, for a worker not yet listening

    def cancel_requested(self) -> bool:
        return self.cancel_path.exists()

    @property
    def run_id(self) -> str:
        return self.path.name

    def adapter_path(self, variant: str) -> Path:
        """Where the worker saves `variant`; readers use adapter_dir, which also finds a checkpoint
        an older worker's kill left stranded."""
        return self.adapters_path / variant

    def adapter_dir(self, variant: str) -> Path | None:
        """The folder holding `variant`'s last whole checkpoint (adapter_path, after repairing it
        from a stranded copy if needed: recover_adapter), or None before its first checkpoint."""
        return recover_adapter(self.adapter_path(variant))

    def trained_variants(self) -> list[str]:
        """Every variant with a whole saved adapter, sorted; stranded copies repaired (adapter_dir)."""
        return [v for v in adapter_variants(self.adapters_path) if self.adapter_dir(v) is not None]

    def model_path(self, variant: str) -> Path:
        """Where the worker saves the whole model of `variant` (the fine-tuning baseline)."""
        return self.models_path / variant

    def trained_models(self) -> list[str]:
        """Variants with a whole saved model (the fine-tuning baseline), sorted: a config.json and
        complete weights."""
        if not self.models_path.is_dir():
            return []
        return sorted(p.name for p in self.models_path.iterdir() if not p.name.startswith(".")
                      and (p / "config.json").is_file() and _safetensors_complete(p / "model.safetensors"))

    # readers
    def read_status(self) -> dict:
        """status.json; {} before it exists. One whose content is bad reads as a failed run whose
        error names the file, so the page and the queue go on (a bad run folder must not stop them).
        One the system would not let us read raises RunFileUnreadable: its run may be alive, so
        nothing (a queue starting another run, say) may act as if it were not."""
        try:
            return read_json(self.status_path) or {}
        except RunFileError as err:
            return {"state": FAILED, "error": f"{err}; the run's state is unknown, so it counts as failed"}

    def read_spec(self) -> ExperimentSpec:
        """The run's ExperimentSpec; errors name spec.json (SpecError for a bad value in it)."""
        spec = self.read_spec_dict()
        try:
            return ExperimentSpec.from_dict(spec)
        except SpecError as err:
            # Every problem, as from_dict found them; the last one names the file.
            *first, (key, message) = err.errors.items()
            raise SpecError(dict([*first, (key, f"{message} (in {self.spec_path})")])) from None

    def read_spec_dict(self) -> dict:
        try:
            spec = read_json(self.spec_path)
        except RunFileError as err:
            raise RunFileError(f"{err}; fix the file (the run's experiment spec)") from None
        if spec is None:
            raise FileNotFoundError(f"{self.spec_path} does not exist; submit a spec or pass SPEC.json")
        return spec

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def read_samples(self) -> list[dict]:
        return read_jsonl(self.samples_path)

    def read_summary(self) -> dict | None:
        """summary.json, or None before the run ends; an unreadable one is None with a warning
        naming it (readers then fall back on metrics.jsonl)."""
        try:
            return read_json(self.summary_path)
        except RunFileError as err:
            warnings.warn(f"{err}; ignoring it", stacklevel=2)
            return None

    def log_tail(self, n: int = 50) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    # writers
    def write_spec(self, spec: ExperimentSpec) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.spec_path, spec.to_dict())

    def update_status(self, **changes) -> dict:
        """Merge `changes` into status.json (stamping updated_at) and return the new status. Never
        writes what read_status makes up for a bad file: RunFileError / RunFileUnreadable instead."""
        status = {**(read_json(self.status_path) or {}), **changes, "updated_at": time.time()}
        atomic_write_json(self.status_path, status)
        return status

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message}\n")
        except OSError as err:
            raise naming(err, self.log_path) from err


def new_status(state: str = QUEUED, **extra) -> dict:
    now = time.time()
    status = {"state": state, "step": 0, "total_steps": None, "started_at": None, "updated_at": now,
              "finished_at": None, "pid": None, "error": None, "heartbeat": None}
    status.update(extra)
    return status


_last_stamp_ms = 0  # ids made by this process strictly increase, even within one millisecond


def new_run_id(name: str, runs_dir: Path) -> str:
    """Sortable id `YYYYmmdd-HHMMSSmmm-<slug>` (UTC, milliseconds): sorting ids sorts submissions,
    which is the queue's first-come-first-served order."""
    global _last_stamp_ms
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-").lower()[:24] or "run"
    ms = max(int(time.time() * 1000), _last_stamp_ms + 1)
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}"
        if not any(runs_dir.glob(f"{stamp}-*")):
            _last_stamp_ms = ms
            return f"{stamp}-{slug}"
        ms += 1


# ---------------------------------------------------------------------------------------------
# The job queue
# ---------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    run_id: str
    path: Path
    name: str
    model: str
    state: str
    step: int
    total_steps: int | None
    started_at: float | None
    updated_at: float | None
    finished_at: float | None
    error: str | None
    status: dict = field(default_factory=dict, repr=False, compare=False)  # status.json as read, whole


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def why_worker_dead(status: dict, heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S, *,
                    starting_is_alive: bool = False) -> str | None:
    """For a run in state running whose worker this process did not start: None while the worker
    in status.json is alive and beating, else why it is not (the queue's words).

    `starting_is_alive`: a run with no pid yet but a fresh heartbeat counts as alive, since some
    queue (another app's, or a stopped app's whose worker still records its pid) is starting its
    worker; once the heartbeat is stale, the worker never started.
    """
    stale = heartbeat_stale(status, heartbeat_timeout)
    pid = status.get("pid")
    if pid is None:
        if starting_is_alive and not stale:
            return None
        return "the worker never recorded its pid (the app stopped while starting it?)"
    if not pid_alive(pid):
        return f"process {pid} is gone"
    return stale


def why_no_adapters(status: dict) -> tuple[str, str | None]:
    """For a run with no saved adapter, by its status: ("waiting", None) while it is queued or its
    worker trains; ("died", why) when it is marked running but its worker is gone; ("failed",
    error); or (state, None) for a run that ended done or cancelled before saving any."""
    state = status.get("state") or QUEUED
    if state == RUNNING:
        why = why_worker_dead(status, starting_is_alive=True)
        return ("died", why) if why else ("waiting", None)
    if state == QUEUED:
        return "waiting", None
    if state == FAILED:
        return FAILED, status.get("error") or "no error recorded"
    return state, None


def heartbeat_stale(status: dict, heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S) -> str | None:
    """"no heartbeat for over N s" when status.json's heartbeat is that old, else None."""
    heartbeat = status.get("heartbeat") or status.get("updated_at") or 0
    return f"no heartbeat for over {heartbeat_timeout:.0f} s" if time.time() - heartbeat > heartbeat_timeout else None


def launch_command(num_processes: int) -> list[str]:
    """The command that starts `python -m prefixlab train` in `num_processes` processes:
    accelerate's launcher (torch.distributed's elastic launch underneath; on a machine without CUDA
    its processes talk over gloo on the CPU), on a free port of this machine. One process: the plain
    module."""
    import socket

    if num_processes <= 1:
        return [sys.executable, "-m", "prefixlab", "train"]
    with socket.socket() as probe:  # a port no other run's launcher holds right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "prefixlab", "train"]


def _num_processes(run: RunDir) -> int:
    """training.num_processes of a run's spec.json, 1 where it cannot be read (its worker then says why)."""
    try:
        value = (run.read_spec_dict().get("training") or {}).get("num_processes", 1)
    except (OSError, ValueError):
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


class JobQueue:
    """First come, first served; one job per device. All state lives in the run directories, so a
    restarted app picks up where the last one left off.

    `poll()` does the work (start the next queued run when none is active, mark dead workers
    failed); the app calls it from `start_background()`'s daemon thread about once a second.
    """

    def __init__(self, runs_dir: str | Path, *, heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
                 worker_command: list[str] | None = None):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_timeout = heartbeat_timeout
        self.worker_command = worker_command  # None: the spec's (launch_command); tests pass a fake
        self._children: dict[str, subprocess.Popen] = {}  # workers this process started
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._poll_error: str | None = None  # what the background poll last failed on, printed once
        self._log_starts: dict[str, int] = {}  # run id -> log.txt's size when we launched its worker

    # --- public API -----------------------------------------------------------------------------

    def submit(self, spec: ExperimentSpec) -> str:
        """Write runs/<id>/spec.json and a queued status; returns the run id. Raises RunsFolderError,
        leaving no run folder behind, when the runs folder cannot take them (read-only, gone, full)."""
        with self._lock:
            while True:
                run_id = new_run_id(spec.name, self.runs_dir)
                run = RunDir(self.runs_dir / run_id)
                try:
                    run.path.mkdir(parents=True)
                    break
                except FileExistsError:  # another app took this id in the same millisecond
                    continue
                except OSError as err:
                    raise RunsFolderError.wrap(err, self.runs_dir, "queue the run") from err
            try:
                run.write_spec(spec)
                atomic_write_json(run.status_path, new_status(QUEUED))
            except OSError as err:
                shutil.rmtree(run.path, ignore_errors=True)  # ours alone: its id is new
                raise RunsFolderError.wrap(err, self.runs_dir, "queue the run") from err
            return run_id

    def cancel(self, run_id: str) -> str:
        """SIGTERM a running worker (it saves and ends `cancelled`); a queued run is cancelled at
        once. Returns the state after the request."""
        with self._lock:
            run = self.run_dir(run_id)
            status = run.read_status()
            state = status.get("state")
            if state == QUEUED and not worker_lock_held(run.path):
                run.update_status(state=CANCELLED, finished_at=time.time())
                return CANCELLED
            if state in (QUEUED, RUNNING):  # queued but locked: a worker is starting it
                # The file reaches a worker that has not yet installed its SIGTERM handler and
                # recorded its pid (it checks the file when it starts and with each heartbeat);
                # a SIGTERM before that would kill it without saving.
                run.cancel_path.touch()
                proc = self._children.get(run_id)
                if proc is not None and proc.poll() is None and status.get("pid") == proc.pid:
                    proc.send_signal(signal.SIGTERM)  # the worker recorded its pid: it listens
                elif status.get("pid") and self._why_dead(run) is None:
                    # Not our child (the app restarted), or the first process under our child, the
                    # launcher of several: signal the pid only while it still beats, so a pid reused
                    # by an unrelated process is left alone. It tells the other processes at its next step.
                    os.kill(status["pid"], signal.SIGTERM)
            return state

    def list_runs(self) -> list[RunInfo]:
        """Every run on disk, newest first."""
        infos = []
        for path in sorted(self.runs_dir.iterdir(), reverse=True):
            if path.is_dir() and (path / "spec.json").exists():
                infos.append(self._info(RunDir(path)))
        return infos

    def run_dir(self, run_id: str) -> RunDir:
        if not run_id or Path(run_id).name != run_id or run_id in (".", ".."):
            raise ValueError(f"no run {run_id!r} in {self.runs_dir}; a run id is a folder name, not a path")
        path = self.runs_dir / run_id
        if not (path / "spec.json").exists():
            raise ValueError(f"no run {run_id!r} in {self.runs_dir}; list runs to see the ids")
        return RunDir(path)

    def active_run(self) -> str | None:
        """The id of the run holding the device (state running and its worker alive), if any."""
        for info in self.list_runs():
            if info.state == RUNNING and self._alive(RunDir(info.path)):
                return info.run_id
        return None

    def poll(self) -> str | None:
        """Reap dead workers, then start the oldest queued run if the device is free. Returns the
        id of the run started, if one was. Queues of several apps on one runs folder take turns
        (runs/.queue.lock; a queue that finds it taken skips this tick), so no two start the same
        run or two runs at once."""
        with self._lock, _try_folder_lock(self.runs_dir / ".queue.lock") as ours:
            if not ours:
                return None  # another app's queue is polling this folder: its turn, ours next tick
            self._reap_finished()
            self._mark_dead_workers()
            if self.active_run() is not None:
                return None
            # One job per device, whatever status.json says (a garbled one reads as failed): a worker
            # holding any run's lock, or a child of ours still running, is training.
            if self._busy():
                return None
            # A worker that died between the two calls above is no longer active, but is not yet
            # marked failed either: mark it now, before its successor starts (dead stays dead).
            self._mark_dead_workers()
            # A queued run whose lock is held is being started by a worker of its own (a CLI's).
            queued = [i for i in self.list_runs() if i.state == QUEUED and not worker_lock_held(i.path)]
            if not queued:
                return None
            return self._launch(RunDir(queued[-1].path))  # oldest first

    def start_background(self, interval: float = 1.0) -> threading.Thread:
        """Call poll() every `interval` seconds from a daemon thread (idempotent)."""
        if self._thread and self._thread.is_alive():
            return self._thread
        self._stop.clear()

        def loop():
            while not self._stop.wait(interval):
                self.poll_logged()

        self._thread = threading.Thread(target=loop, name="prefixlab-queue", daemon=True)
        self._thread.start()
        return self._thread

    def stop_background(self) -> None:
        self._stop.set()

    def poll_logged(self) -> str | None:
        """poll(), for the background thread: an exception is printed once (a bad or unreadable runs
        folder fails every poll, once a second), again only when its message changes, and its end is
        printed too; the queue goes on either way."""
        try:
            started = self.poll()
        except Exception as err:  # noqa: BLE001 - a bad run folder must not stop the queue
            why = describe_os_error(err, "reading or writing") if isinstance(err, OSError) and not isinstance(
                err, RunFileUnreadable) else f"{type(err).__name__}: {err}"
            if why != self._poll_error:
                print(f"prefixlab queue: cannot poll {self.runs_dir}: {why} (retrying; said again only if the "
                      "cause changes)", file=sys.stderr, flush=True)
                self._poll_error = why
            return None
        if self._poll_error is not None:
            print(f"prefixlab queue: polling {self.runs_dir} works again", file=sys.stderr, flush=True)
            self._poll_error = None
        return started

    # --- internals ------------------------------------------------------------------------------

    def _launch(self, run: RunDir) -> str:
        # start_new_session: the worker gets its own process group, so a Ctrl-C in the app's
        # terminal does not kill training and the page's SIGTERM reaches only the worker.
        # RUNNING is written before the worker exists: a worker that fails at once must find it and
        # overwrite it, never the other way round. The worker records its own pid.
        now = time.time()
        run.update_status(state=RUNNING, pid=None, started_at=now, heartbeat=now, error=None)
        env = {**os.environ, QUEUE_LAUNCH_ENV: str(run.path)}
        try:
            self._log_starts[run.run_id] = run.log_path.stat().st_size
        except OSError:
            self._log_starts[run.run_id] = 0
        command = self.worker_command or launch_command(_num_processes(run))
        with open(run.log_path, "a", encoding="utf-8") as log:
            proc = subprocess.Popen([*command, "--run-dir", str(run.path)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self._children[run.run_id] = proc
        return run.run_id

    def _busy(self) -> bool:
        """Whether a worker holds any run's lock in the runs folder, or a worker we started is still
        running: then the device is taken, whatever the runs' status.json files say."""
        if any(proc.poll() is None for proc in self._children.values()):
            return True
        try:
            folders = [p for p in self.runs_dir.iterdir() if p.is_dir() and (p / "worker.lock").exists()]
        except FileNotFoundError:
            return False
        return any(worker_lock_held(p) for p in folders)

    def _alive(self, run: RunDir) -> bool:
        return self._why_dead(run) is None

    def _why_dead(self, run: RunDir) -> str | None:
        """None while the run's worker is alive and beating, else why it is not."""
        status = run.read_status()
        proc = self._children.get(run.run_id)
        if proc is not None and proc.poll() is not None:  # also reaps our own zombie child
            if status.get("pid") in (None, proc.pid) and not worker_lock_held(run.path):
                return _exit_reason(proc.returncode)
            # Another worker (a CLI's) took the run first; ours found it locked and left.
            self._children.pop(run.run_id, None)
            proc = None
        if proc is None:
            # No pid yet, heartbeat fresh: another app's queue is starting its worker (a worker whose
            # app stopped meanwhile still records its pid; one never started goes stale).
            return why_worker_dead(status, self.heartbeat_timeout, starting_is_alive=True)
        return heartbeat_stale(status, self.heartbeat_timeout)

    def _reap_finished(self) -> None:
        """Forget (and reap: no zombie per run) our workers that exited after writing a final state."""
        for run_id, proc in list(self._children.items()):
            if proc.poll() is not None and RunDir(self.runs_dir / run_id).read_status().get("state") in FINAL_STATES:
                del self._children[run_id]

    def _mark_dead_workers(self) -> None:
        for info in self.list_runs():
            if info.state != RUNNING:
                continue
            run = RunDir(info.path)
            why = self._why_dead(run)
            # The worker may have written a final state between our two reads.
            if why is not None and run.read_status().get("state") not in FINAL_STATES:
                self._fail(run, why)

    def _fail(self, run: RunDir, why: str) -> None:
        proc = self._children.pop(run.run_id, None)
        if proc is not None and proc.poll() is None:
            proc.kill()  # frozen: free the device for the next run
            proc.wait()
        message = f"worker died without reporting: {why}"
        said = self._first_error_line(run)
        if said:  # e.g. a bad spec.json: `train --run-dir` refused it, naming the file
            message += f"; it said: {said}"
        run.update_status(state=FAILED, error=message, finished_at=time.time())
        run.log(message)

    def _first_error_line(self, run: RunDir, limit: int = 1 << 16) -> str | None:
        """The first `error: ...` line (how the CLI refuses) the run's worker wrote to log.txt, if any:
        after what log.txt held when we launched it (the whole file for a worker we did not start)."""
        start = self._log_starts.pop(run.run_id, 0)
        try:
            with open(run.log_path, "rb") as f:
                f.seek(start)
                raw = f.read(limit)  # a refusal comes first; an error met later, at the end
                end = f.seek(0, os.SEEK_END)
                if end > start + limit:
                    f.seek(max(start + limit, end - limit))
                    raw += b"\n" + f.read(limit)
        except OSError:
            return None
        text = raw.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("error: "):
                return line.removeprefix("error: ").strip()
        return None

    def _info(self, run: RunDir) -> RunInfo:
        status = run.read_status()
        try:
            spec = run.read_spec_dict()
        except (FileNotFoundError, RunFileError):
            spec = {}  # a queued run with a bad spec fails in its worker, with the file named
        model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
        return RunInfo(run_id=run.run_id, path=run.path, name=spec.get("name", ""),
                       model=model.get("name", ""), state=status.get("state", QUEUED),
                       step=status.get("step") or 0, total_steps=status.get("total_steps"),
                       started_at=status.get("started_at"), updated_at=status.get("updated_at"),
                       finished_at=status.get("finished_at"), error=status.get("error"), status=status)
