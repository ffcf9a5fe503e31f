"""The prefixlab web page: `python app.py` and open the URL it prints.

Training never runs in this process: Train writes runs/<id>/spec.json and the job queue (a daemon
thread here) starts `python -m prefixlab train` as a child process; the page reads the run
directory about once a second.

The page reads from the server's disk only the built-in tasks and models, its own uploads and the
folders named with --allow-path; Gradio's files (uploads, downloads) live in a folder of this
process's own, removed on exit. Listening beyond this machine without --auth prints a warning.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

# Anyone who can open the page uploads at most this much per file (engine/limits.py; read by Gradio).
from prefixlab.engine.limits import MAX_UPLOAD_MB


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="prefixlab: an interactive lab for prefix tuning")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                        help="require this user name and password to open the page")
    parser.add_argument("--runs-dir", default="runs", help="where runs are written and found")
    parser.add_argument("--presets-dir", default=None,
                        help="the shipped presets folder (default: the repository's presets/); presets saved on the "
                             "page go to RUNS_DIR/presets")
    parser.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                        help="a folder whose files the page may name as a task file or model folder (besides the "
                             "uploads under --runs-dir); repeat for several. Without it the page reads no path "
                             "typed into it")
    args = parser.parse_args(argv)
    for folder in args.allow_path:
        if not os.path.isdir(os.path.expanduser(folder)):
            parser.error(f"--allow-path {folder!r} is not a folder; name an existing folder")
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        parser.error(f"--auth {args.auth!r} must be USER:PASSWORD, e.g. --auth alice:s3cret")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # Gradio's uploads and the page's downloads go to a folder of this process's own (not the
    # /tmp/gradio every app on the host shares), set before Gradio is imported.
    from prefixlab.ui.access import private_temp_dir
    from prefixlab.ui.exposure import LoginGuard, exposure_warning

    private_temp_dir()
    # Imported after parsing so that --help answers at once.
    from prefixlab.engine.runs import JobQueue
    from prefixlab.ui import build_app
    from prefixlab.ui.app import CSS, REPO_PRESETS, THEME

    try:
        queue = JobQueue(args.runs_dir)
    except OSError as err:
        sys.exit(f"error: --runs-dir {args.runs_dir}: cannot create it ({err.strerror or err}); "
                 "pass a folder you can write to")
    demo, _ = build_app(queue, args.presets_dir or REPO_PRESETS, allow_paths=args.allow_path)
    # A login is checked in constant time, and guessing is slowed down after a few failures.
    auth = LoginGuard(*args.auth.split(":", 1)).check if args.auth else None
    warning = exposure_warning(args.host, args.share, auth is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        # api_open=False: an event is run only through the queue (its concurrency limits hold), never
        # by a direct POST to /gradio_api/run/<name>.
        _, local_url, share_url = demo.queue(default_concurrency_limit=4, api_open=False).launch(
            server_name=args.host, server_port=args.port, share=args.share, auth=auth,
            prevent_thread_lock=True, quiet=True, css=CSS, theme=THEME, max_file_size=f"{MAX_UPLOAD_MB}mb",
            # No "Use via API" link (the page's events are not an API: ui/registry.py) and no run
            # history page, which Gradio serves before a login.
            footer_links=["gradio", "settings"], run_history=False)
    except OSError as err:  # gradio's advice names its own settings; ours is --port / --host
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        sys.exit(f"error: cannot listen on {args.host}:{args.port} ({detail.split('. ')[0]}); is another app "
                 "using the port? Pass another --port, or stop the other app")
    # Only a page that is up runs the queue (a failed start must not start workers), and SIGTERM
    # (a service manager, `kill`) exits like Ctrl-C, removing the page's temporary downloads.
    queue.start_background()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"prefixlab running at {local_url}", flush=True)
    if share_url:
        print(f"public link: {share_url}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
