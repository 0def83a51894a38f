"""Dashboard pages: one module per page, each exposing ``build() -> Page``.

``build()`` must be called inside a ``gr.Blocks`` context; it lays out the page and wires its own
events. The returned :class:`Page` tells ``app.py`` how to refresh the page when its tab is opened
(e.g. to list runs saved by another page or another session) and what to fill in once the
browser has loaded (work too slow for start-up).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Page:
    refresh: Callable[..., Any] | None = None  # on tab select: f(*refresh_inputs) -> ``outputs``
    outputs: list = field(default_factory=list)
    refresh_inputs: list = field(default_factory=list)
    load: Callable[[], Any] | None = None      # on page load -> values for ``load_outputs``
    load_outputs: list = field(default_factory=list)


def run_page_load(method: str | None, draw: Callable[[str | None], tuple]) -> tuple:
    """On page load: the run dropdown filled with the newest run, and that run drawn."""
    from . import state

    choices = state.run_choices(method)
    value = choices[0][1] if choices else None
    return (run_dropdown_update(choices, value), *draw(value))


def run_dropdown_update(choices: list[tuple[str, str]], current: str | None):
    """gr.update for a run dropdown: keep the current run when it still exists, else the newest."""
    import gradio as gr

    values = [v for _, v in choices]
    value = current if current in values else (values[0] if values else None)
    return gr.update(choices=choices, value=value)
