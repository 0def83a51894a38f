"""Dashboard pages: one module per page, each exposing ``build() -> Page``.

``build()`` must be called inside a ``gr.Blocks`` context; it lays out the page and wires its own
events. The returned :class:`Page` tells ``app.py`` how to refresh the page when its tab is opened
(e.g. to list runs saved by another page or another session) and what to fill in once the
browser has loaded (work too slow for start-up). :func:`run_picker` is the run dropdown every
page that looks at a run uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from . import figures, runtable


@dataclass
class Page:
    refresh: Callable[..., Any] | None = None  # on tab select: f(*refresh_inputs) -> ``outputs``
    outputs: list = field(default_factory=list)
    refresh_inputs: list = field(default_factory=list)
    load: Callable[[], Any] | None = None      # on page load -> values for ``load_outputs``
    load_outputs: list = field(default_factory=list)


@dataclass
class RunPicker:
    """A run dropdown (runs of ``methods`` only, newest first) with its refresh button."""

    dropdown: gr.Dropdown
    methods: tuple[str, ...] | None

    def choices(self) -> list[tuple[str, str]]:
        return runtable.run_choices(self.methods)

    def refresh(self, current: str | None = None):
        """gr.update keeping the current run when it still exists, else the newest."""
        choices = self.choices()
        values = [v for _, v in choices]
        value = current if current in values else (values[0] if values else None)
        return gr.update(choices=choices, value=value)

    def newest(self) -> str | None:
        choices = self.choices()
        return choices[0][1] if choices else None

    def page(self, draw: Callable[[str | None], tuple] | None = None, outputs: list | None = None) -> Page:
        """The Page of a page built around this picker: the dropdown is refreshed when the tab
        opens; on load the newest run is picked and ``draw(run) -> values`` fills ``outputs``."""
        outputs = outputs or []

        def load():
            value = self.newest()
            return (self.refresh(value), *(draw(value) if draw else ()))

        return Page(refresh=self.refresh, outputs=[self.dropdown], refresh_inputs=[self.dropdown],
                    load=load, load_outputs=[self.dropdown, *outputs])


def run_picker(label: str, methods: tuple[str, ...] | None, elem_id: str) -> RunPicker:
    """Lay out the dropdown and the refresh button in one row and wire the button."""
    with gr.Row():
        dropdown = gr.Dropdown([], value=None, allow_custom_value=True, label=label, scale=4,
                               elem_id=elem_id)
        button = gr.Button("↻ Refresh runs", size="sm", scale=1)
    picker = RunPicker(dropdown, methods)
    button.click(picker.refresh, dropdown, dropdown, queue=False, api_name=False)
    return picker


def blank(n: int, message: str, note: str) -> tuple:
    """``n`` empty figures carrying ``message``, then the ``note``: what a figure function returns
    when there is nothing to draw."""
    empty = figures.empty_figure(message)
    return (*([empty] * n), note)


def open_report(run_dir: str | None, what: str, n: int):
    """(report, None) for a saved run, or (None, blank outputs) saying why there is none: no run
    selected (``what`` names the kind of run the page needs) or a folder that cannot be read."""
    if not run_dir:
        return None, blank(n, f"no {what} run yet: quantize one on the Quantize page",
                           f"No {what} run selected.")
    try:
        return runtable.load_report(run_dir), None
    except (ValueError, OSError) as e:
        return None, blank(n, "cannot read this run", f"❌ {e}")
