"""The page's components under stable ids, and its events wired by those ids (STYLE.md 15).

Each panel builder returns `{name: component}`; `Registry.add("run", ...)` files them as "run.status",
"run.chart", ... (the form's fields as "form.<dotted key>", e.g. "form.prefix.num_virtual_tokens").
`Registry.on` connects triggers named the same way ("run.select.change", "page.load") to a handler
that takes the event's inputs as `{id: value}` and returns `{id: value or update}` for the outputs it
changes, and nothing else: Gradio receives and is given dicts keyed by component (inputs passed as a
set), so no list's order has to match another's, and an output left out of the dict keeps its value.
This is LLaMA-Factory's webui Manager, plus the id <-> component translation at the event boundary,
which keeps the handlers (ui/handlers.py) free of components and testable with plain dicts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import gradio as gr
from gradio.blocks import Block

from prefixlab.ui.values import Values

Handler = Callable[..., Values]


class WiringError(ValueError):
    """An id that is not registered, registered twice, or a handler returning an output its event
    does not declare."""


@dataclass(frozen=True)
class Event:
    """One wired event: which triggers, which handler, and the ids it reads and may update."""

    triggers: tuple[str, ...]  # "<component id>.<event>", e.g. "run.select.change"
    handler: Handler  # (values by id[, progress]) -> updates by id
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn_id: int | None = field(default=None, compare=False)  # its function in the Blocks (`demo.fns[fn_id]`)

    @property
    def name(self) -> str:
        return getattr(self.handler, "__name__", repr(self.handler))

    def check(self, updates: Values) -> Values:
        """`updates` if every id in it is one of the outputs; else WiringError naming the strays."""
        stray = [key for key in updates if key not in self.outputs]
        if stray:
            raise WiringError(f"{self.name} returned {stray}, which its event does not declare as outputs "
                              f"({', '.join(self.outputs)}); add them to its outputs in ui/app.py")
        return updates


class Registry:
    """Components by id and ids by component; the events wired between them."""

    def __init__(self):
        self._by_id: dict[str, Block] = {}
        self._id_of: dict[Block, str] = {}
        self.events: list[Event] = []

    def register(self, id_: str, block: Block) -> None:
        if id_ in self._by_id:
            raise WiringError(f"{id_!r} is registered twice; give the component another name in its panel")
        self._by_id[id_] = block
        self._id_of[block] = id_

    def add(self, namespace: str, components: dict[str, Block]) -> None:
        """Register a panel's `{name: component}` as "<namespace>.<name>"."""
        for name, block in components.items():
            self.register(f"{namespace}.{name}", block)

    def __getitem__(self, id_: str) -> Block:
        try:
            return self._by_id[id_]
        except KeyError:
            near = [i for i in self._by_id if i.split(".", 1)[0] == id_.split(".", 1)[0]]
            raise WiringError(f"no component {id_!r} on the page; registered under that name: "
                              f"{', '.join(near) or 'none'}") from None

    def __contains__(self, id_: str) -> bool:
        return id_ in self._by_id

    def ids(self, prefix: str = "") -> list[str]:
        """Every registered id (starting with `prefix`), in the order the panels were built."""
        return [i for i in self._by_id if i.startswith(prefix)]

    def id_of(self, block: Block) -> str:
        return self._id_of[block]

    def trigger(self, name: str) -> Callable:
        """"run.select.change" -> the select dropdown's change event (something gr.on listens to)."""
        id_, _, event = name.rpartition(".")
        listener = getattr(self[id_], event, None)
        if not callable(listener) or not hasattr(listener, "event_name"):
            raise WiringError(f"{id_!r} has no event {event!r}")
        return listener

    def on(self, triggers: str | Iterable[str], handler: Handler, inputs: Iterable[str] = (),
           outputs: Iterable[str] = (), **options) -> Event:
        """Wire `handler` to `triggers` (ids + event names) with gr.on; `options` are gr.on's
        (trigger_mode, concurrency_id, show_progress, ...). Must be called inside the page's Blocks.

        Events are private to the page (api_visibility="private"): the browser calls them, but
        Gradio describes none of them as an API, so the page's HTML, /info and /config tell a
        visitor nothing of its handlers (with --auth, "/" is shown before logging in, and Gradio
        embeds the API's description in it). Scripts use the command line (python -m prefixlab)."""
        options.setdefault("api_visibility", "private")
        names = (triggers,) if isinstance(triggers, str) else tuple(triggers)
        inputs, outputs = tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(outputs))
        listeners = [self.trigger(name) for name in names]
        in_blocks, out_blocks = [self[i] for i in inputs], [self[o] for o in outputs]
        event = Event(names, handler, inputs, outputs)
        dependency = gr.on(listeners, self.event_function(event), inputs=set(in_blocks) if in_blocks else None,
                           outputs=out_blocks, **options)
        event = replace(event, fn_id=dependency["id"])
        self.events.append(event)
        return event

    def event_function(self, event: Event) -> Callable:
        """The function Gradio calls: component-keyed values in, component-keyed updates out (or one
        skip when nothing changes: an empty dict would be taken as a value). A handler with a
        `progress` parameter gets Gradio's progress tracker, which Gradio finds by that default."""

        def run(data: dict | None, **extra) -> Any:
            values = {self.id_of(block): value for block, value in (data or {}).items()}
            updates = event.check(event.handler(values, **extra))
            return {self[id_]: value for id_, value in updates.items()} or gr.skip()

        if "progress" in inspect.signature(event.handler).parameters:
            def fn(data=None, progress=gr.Progress()):
                return run(data, progress=progress)
        else:
            def fn(data=None):
                return run(data)
        fn.__name__ = event.name  # Gradio names the endpoint after the handler
        return fn
