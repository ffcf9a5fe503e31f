"""What the page may read from the server's disk, and where Gradio keeps the files it receives.

Anyone who can open the page names a task and a model by typing, so a typed server path would let
them read any file the app can (naming a password file as the task showed its lines as the run's
"references"). The page therefore reads only:

- the built-in tasks, model presets, Hub dataset ids and Hub model ids (never a local path);
- files uploaded through the page, stored under the runs folder (runs/uploads);
- folders the person who started the app allowed with `python app.py --allow-path DIR`.

Paths are resolved (symlinks, `..`, `~`) before they are compared. The command line reads any local
path its user names; only the page is confined. Pure: no Gradio.

The page's own temporary folder (`private_temp_dir`) is where Gradio receives uploads and serves
downloads from (GRADIO_TEMP_DIR): one folder per app process, readable by its user only, removed
when the process exits, so two apps on one host no longer share /tmp/gradio (an app served another
app's adapter zip and exported spec to anyone given their path).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prefixlab.core.hub import local_folder
from prefixlab.engine.data import BUILTIN_TASKS, resolve_source
from prefixlab.engine.limits import clip
from prefixlab.engine.zoo import MODEL_PRESETS

_private_dir: Path | None = None
NAMED_CHARS = 300  # of a refused path, in its message


def private_temp_dir() -> Path:
    """This process's own folder for Gradio's uploads and the page's downloads, made on first use
    (mode 0700, under the system's temp folder: TMPDIR) and removed when the process exits.

    Sets GRADIO_TEMP_DIR to it, which Gradio reads when a component is created and when the app
    launches: call this before building the page (app.py calls it before importing Gradio)."""
    global _private_dir
    if _private_dir is None or not _private_dir.is_dir():
        _private_dir = Path(tempfile.mkdtemp(prefix="prefixlab-gradio-")).resolve()
        atexit.register(shutil.rmtree, _private_dir, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(_private_dir)
    return _private_dir


def resolved(path: str | Path) -> Path:
    """`path` made absolute with `~`, `..` and every symlink resolved (what would really be read)."""
    return Path(path).expanduser().resolve()


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path`, resolved, is `folder` (resolved) or lies under it."""
    return resolved(path).is_relative_to(resolved(folder))


class PageAccess:
    """The folders the page may read beyond presets and Hub ids: `uploads` (the runs folder's
    uploads) and every `allowed` folder (app.py --allow-path)."""

    def __init__(self, uploads: str | Path, allowed: Iterable[str | Path] = ()):
        self.uploads = resolved(uploads)
        self.allowed = tuple(resolved(folder) for folder in allowed)

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.uploads, *self.allowed)

    def readable(self, path: str | Path) -> bool:
        try:
            return any(is_inside(path, root) for root in self.roots)
        except (OSError, ValueError):  # a name too long for a path, a NUL byte: nothing to read
            return False

    def _how(self, path: str) -> str:
        try:
            folder = resolved(path)
            folder = folder if folder.is_dir() else folder.parent
        except (OSError, ValueError):
            folder = "DIR"
        return f"restart the app with `python app.py --allow-path {folder}` (the person who started it can)"

    def data_source_error(self, source: str | None) -> str | None:
        """Why the page may not read the task `source`, or None (built-in task, Hub dataset id, an
        upload, a file under an --allow-path folder)."""
        if not source or source in BUILTIN_TASKS:
            return None
        try:
            kind, where = resolve_source(source)
        except (OSError, ValueError):  # not a usable path (too long, a NUL byte): read as one, refused
            kind, where = "file", source
        if kind != "file" or self.readable(where):
            return None
        return (f"{clip(source, NAMED_CHARS)} is a path on the server, which this page does not read: it reads the built-in tasks "
                f"({', '.join(BUILTIN_TASKS)}), files uploaded here, Hub dataset ids, and folders the app was "
                f"started with --allow-path. Upload the file with the button above, or {self._how(where)}")

    def model_error(self, name: str | None) -> str | None:
        """Why the page may not load the model `name`, or None (a preset, a Hub id, a folder under an
        --allow-path folder)."""
        if not name or name in MODEL_PRESETS:
            return None
        try:
            folder = local_folder(name)
        except (OSError, ValueError):  # not a usable path (too long, a NUL byte): read as one, refused
            folder = Path("DIR")
        if folder is None or self.readable(folder):
            return None
        return (f"{clip(name, NAMED_CHARS)} is a folder on the server, which this page does not read: it loads the model presets, Hub "
                f"ids, and folders the app was started with --allow-path. Choose a preset or a Hub id, or "
                f"{self._how(str(folder))}")

    def errors(self, model_name: str | None, data_source: str | None) -> dict[str, str]:
        """{"model.name": ..., "data.source": ...} for the values the page may not read."""
        found = {"model.name": self.model_error(model_name), "data.source": self.data_source_error(data_source)}
        return {key: message for key, message in found.items() if message}
