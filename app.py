"""The prefixlab web page: `python app.py` and open the URL it prints.

Training never runs in this process: Train writes runs/<id>/spec.json and the job queue (a daemon
thread here) starts `python -m prefixlab train` as a child process; the page reads the run
directory about once a second.
"""

from __future__ import annotations

import argparse
import signal
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="prefixlab: an interactive lab for prefix tuning")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                        help="require this user name and password to open the page")
    parser.add_argument("--runs-dir", default="runs", help="where runs are written and found")
    parser.add_argument("--presets-dir", default=None, help="preset folder (default: the repository's presets/)")
    args = parser.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        parser.error(f"--auth {args.auth!r} must be USER:PASSWORD, e.g. --auth alice:s3cret")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # Imported after parsing so that --help answers at once.
    from prefixlab.engine.runs import JobQueue
    from prefixlab.ui import build_app
    from prefixlab.ui.app import CSS, REPO_PRESETS

    try:
        queue = JobQueue(args.runs_dir)
    except OSError as err:
        sys.exit(f"error: --runs-dir {args.runs_dir}: cannot create it ({err.strerror or err}); "
                 "pass a folder you can write to")
    demo, _ = build_app(queue, args.presets_dir or REPO_PRESETS)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    try:
        _, local_url, share_url = demo.queue(default_concurrency_limit=4).launch(
            server_name=args.host, server_port=args.port, share=args.share, auth=auth,
            prevent_thread_lock=True, quiet=True, css=CSS)
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
