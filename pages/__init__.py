"""Dashboard pages: one module per page, each exposing ``build() -> Page``.

``build()`` must be called inside a ``gr.Blocks`` context; it lays out the page and wires its own
events. The returned :class:`Page` tells ``app.py`` how to refresh the page when its tab is opened
(e.g. to list runs saved by another page or another session) and what to fill in once the
browser has loaded (work too slow for start-up). :func:`run_picker` is the run dropdown every
page that looks at a run uses.

Every page takes the visitor-id component (``sessions.client_state()``, one per app) and passes
it, with the request, to whatever lists or opens runs: ``viewer(client_id, request)`` is who is
looking, and ``runtable`` shows and opens only what that visitor may see.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from . import figures, runtable, sessions


@dataclass
class Page:
    refresh: Callable[..., Any] | None = None  # on tab select: f(*refresh_inputs) -> ``outputs``
    outputs: list = field(default_factory=list)
    refresh_inputs: list = field(default_factory=list)
    load: Callable[..., Any] | None = None     # on page load: f(*load_inputs) -> ``load_outputs``
    load_outputs: list = field(default_factory=list)
    load_inputs: list = field(default_factory=list)


def viewer(client_id: Any = None, request: Any = None) -> sessions.Viewer:
    """Who is asking (see pages/sessions.py)."""
    return sessions.viewer(client_id, request)


def client_or_new(client: gr.BrowserState | None) -> gr.BrowserState:
    """The app's visitor-id component, or a new one for a page built on its own (tests)."""
    return client if client is not None else sessions.client_state()


@dataclass
class RunPicker:
    """A run dropdown (the visitor's runs of ``methods``, then other visible runs, then the
    examples when ``examples``) with its refresh button."""

    dropdown: gr.Dropdown
    methods: tuple[str, ...] | None
    client: gr.BrowserState
    examples: bool = True
    prefer: tuple[str, ...] = ()

    def choices(self, who: sessions.Viewer) -> list[tuple[str, str]]:
        return runtable.run_choices(who, self.methods, examples=self.examples, prefer=self.prefer)

    def refresh(self, current: str | None = None, client_id: Any = None, request: gr.Request = None):
        """gr.update keeping the current run when it is still listed, else the first listed; an
        example gives way to the visitor's newest run once they have one."""
        return self._update(current, self.choices(viewer(client_id, request)))[0]

    def _update(self, current: str | None, choices: list[tuple[str, str]]) -> tuple[Any, bool]:
        """(dropdown update, whether the current run stays selected)."""
        values = [v for _, v in choices]
        first = values[0] if values else None
        keep = current in values and not (runtable.is_example(current) and not runtable.is_example(first))
        return gr.update(choices=choices, value=current if keep else first), keep

    def page(self, draw: Callable[..., tuple] | None = None, outputs: list | None = None) -> Page:
        """The Page of a page built around this picker: on load the first listed run (the
        visitor's newest, else an example) is picked and ``draw(run, client_id, request) -> values``
        fills ``outputs``; when the tab opens the dropdown is refreshed, and a page whose note
        (the last of ``outputs``) says nothing is drawn while a run is selected is drawn again
        (a page left empty by an event that raced the first load heals on the next visit)."""
        outputs = outputs or []

        def load(client_id: Any = None, request: gr.Request = None):
            choices = self.choices(viewer(client_id, request))
            value = choices[0][1] if choices else None
            return (gr.update(choices=choices, value=value),
                    *(draw(value, client_id, request) if draw else ()))

        if draw is None or not outputs:
            return Page(refresh=self.refresh, outputs=[self.dropdown],
                        refresh_inputs=[self.dropdown, self.client], load=load,
                        load_inputs=[self.client], load_outputs=[self.dropdown, *outputs])

        def refresh(current: str | None, note: str | None, client_id: Any = None,
                    request: gr.Request = None):
            update, keep = self._update(current, self.choices(viewer(client_id, request)))
            if keep and shows_nothing(note):  # the run stays: no change event will draw it
                return (update, *draw(current, client_id, request))
            return (update, *(gr.skip() for _ in outputs))

        return Page(refresh=refresh, outputs=[self.dropdown, *outputs],
                    refresh_inputs=[self.dropdown, outputs[-1], self.client], load=load,
                    load_inputs=[self.client], load_outputs=[self.dropdown, *outputs])


def shows_nothing(note: Any) -> bool:
    """Whether a page's note is empty or one of ``blank``'s "nothing drawn" notes."""
    text = str(note or "").strip()
    return not text or text.startswith(NOTHING_NOTES)


def run_picker(label: str, methods: tuple[str, ...] | None, elem_id: str, client: gr.BrowserState,
               examples: bool = True, prefer: tuple[str, ...] = ()) -> RunPicker:
    """Lay out the dropdown and the refresh button in one row and wire the button; examples of
    the ``prefer`` methods are listed before the other examples."""
    with gr.Row():
        dropdown = gr.Dropdown([], value=None, allow_custom_value=True, label=label, scale=4,
                               elem_id=elem_id)
        button = gr.Button("↻ Refresh runs", size="sm", scale=1)
    picker = RunPicker(dropdown, methods, client, examples, prefer)
    button.click(picker.refresh, [dropdown, client], dropdown, queue=False, api_name=False)
    return picker


NOTHING_NOTES = ("No ", "❌")  # how the note of ``blank`` starts: nothing selected, or an error


def blank(n: int, message: str, note: str) -> tuple:
    """``n`` empty figures carrying ``message``, then the ``note`` (starting with one of
    ``NOTHING_NOTES``): what a figure function returns when there is nothing to draw."""
    empty = figures.empty_figure(message)
    return (*([empty] * n), note)


def open_report(run_dir: str | None, what: str, n: int, who: sessions.Viewer):
    """(report, None) for a saved run the visitor may see, or (None, blank outputs) saying why
    there is none: no run selected (``what`` names the kind of run the page needs) or a folder
    that cannot be read."""
    if not run_dir:
        return None, blank(n, f"no {what} run yet: quantize one on the Quantize page",
                           f"No {what} run selected.")
    try:
        return runtable.load_report(run_dir, who), None
    except (ValueError, OSError) as e:
        return None, blank(n, "cannot read this run", f"❌ {e}")


def example_banner(run_dir: str | None) -> str:
    """The label every page puts above an example's plots ("" for a real run)."""
    if not runtable.is_example(run_dir):
        return ""
    return (f"**{runtable.EXAMPLE_TAG[0].upper()}{runtable.EXAMPLE_TAG[1:]}.** These plots come "
            "from a run saved with the project (its tables, not its weights); your own runs appear "
            "in the list beside it.\n\n")
