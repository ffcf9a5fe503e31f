"""The Gradio lab: fields (form metadata), form (controls), panels (layout), registry (components and
events by id), handlers and run_handlers (behaviour), values (pure), app (wiring).

`build_app` is imported on first use so that the pure modules (fields, values) load without
pulling in the whole page.
"""

__all__ = ["build_app"]


def __getattr__(name):
    if name == "build_app":
        from prefixlab.ui.app import build_app

        return build_app
    raise AttributeError(f"module 'prefixlab.ui' has no attribute {name!r}")
