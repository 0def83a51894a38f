"""The Quantize page's run table and the visitor's own runs: share, unshare, delete.

The table lists the runs this visitor may see (pages/sessions.py) with whose they are; below it
one picks one of their own runs to share or unshare it, or to delete it (Delete, then confirm).
``runtable.delete_run`` checks ownership again, so the API endpoint ``delete_run`` is as safe as
the button.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from . import runtable, sessions, viewer

RUN_TABLE_COLUMNS = ["run", "model", "method", "bits_per_weight", "model_mb", "ppl", "ppl_fp",
                     "quant_time_s", "created", "access"]


def run_table(who: sessions.Viewer) -> pd.DataFrame:
    """The runs this visitor may see, newest first, with whose they are (``access``)."""
    df = runtable.list_runs(who)
    df = df[[c for c in RUN_TABLE_COLUMNS if c in df]].copy()
    for c in ("bits_per_weight", "model_mb", "ppl", "ppl_fp", "quant_time_s"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").round(3)
    return df.sort_values("created", ascending=False) if "created" in df and len(df) else df


def own_runs(who: sessions.Viewer) -> list[tuple[str, str]]:
    """(label, path) of the runs this visitor may delete, newest first."""
    df = runtable.list_runs(who)
    if not len(df):
        return []
    out = []
    for _, r in df.sort_values("created", ascending=False).iterrows():
        if who.may_delete(sessions.read_owner(r["path"])):
            out.append((f"{r['run']} ({r['access']})", str(r["path"])))
    return out


def shared_state(run_dir: str | None, client_id: Any = None, request: gr.Request = None):
    """The "shared" checkbox for a picked run: its state, editable only by its owner."""
    record = sessions.read_owner(run_dir) if run_dir and not runtable.is_example(run_dir) else None
    who = viewer(client_id, request)
    return gr.update(value=bool(record and record.get("shared")), interactive=who.owns(record))


def choices(current: str | None = None, client_id: Any = None, request: gr.Request = None):
    """(own-run dropdown, shared checkbox), keeping the current pick when it is still there."""
    options = own_runs(viewer(client_id, request))
    values = [v for _, v in options]
    value = current if current in values else (values[0] if values else None)
    return gr.update(choices=options, value=value), shared_state(value, client_id, request)


def set_sharing(run_dir: str | None, shared: bool, client_id: Any = None, request: gr.Request = None):
    """(status, run table) after sharing or unsharing one's own run."""
    who = viewer(client_id, request)
    try:
        sessions.set_shared(runtable.run_path(run_dir, who), who, bool(shared))
    except ValueError as e:
        return f"❌ {e}", run_table(who)
    name = Path(str(run_dir)).name
    return (f"`{name}` is now {'shared with other visitors' if shared else 'visible to you only'}.",
            run_table(who))


def ask_delete(run_dir: str | None):
    """(confirmation row, its text) for the picked run."""
    if not run_dir:
        return gr.update(visible=False), "Pick one of your runs first."
    return gr.update(visible=True), f"Delete **`{Path(str(run_dir)).name}`** for good?"


def delete_run(run_dir: str | None, client_id: Any = None, request: gr.Request = None):
    """(status, run table, own-run dropdown, shared checkbox, confirmation row) after deleting."""
    who = viewer(client_id, request)
    try:
        msg = f"🗑 Deleted `{runtable.delete_run(run_dir, who)}`."
    except (ValueError, OSError) as e:
        msg = f"❌ {e}"
    return (msg, run_table(who), *choices(None, client_id, request), gr.update(visible=False))


@dataclass
class RunsPanel:
    """The laid-out panel: ``table``, the own-run dropdown ``mine`` and its ``shared`` box."""

    table: gr.Dataframe
    mine: gr.Dropdown
    shared: gr.Checkbox

    @property
    def outputs(self) -> list:
        return [self.table, self.mine, self.shared]

    def fill(self, client_id: Any = None, request: gr.Request = None) -> tuple:
        """Values for ``outputs`` (page load, tab select)."""
        return (run_table(viewer(client_id, request)), *choices(None, client_id, request))

    @staticmethod
    def after_run(current: str | None, client_id: Any = None, request: gr.Request = None):
        """(dropdown, shared box) after a run was saved: the new run is the first of one's own."""
        return choices(None, client_id, request)


def build(client: gr.BrowserState) -> RunsPanel:
    """Lay out the run table and the own-run controls, and wire them."""
    table = gr.Dataframe(pd.DataFrame(columns=RUN_TABLE_COLUMNS), interactive=False,
                         elem_id="run-table", wrap=True)
    with gr.Row():
        mine = gr.Dropdown([], value=None, allow_custom_value=True, label="Your run", scale=3,
                           elem_id="manage-run")
        shared = gr.Checkbox(False, label="shared with other visitors", elem_id="manage-shared")
        delete = gr.Button("Delete run…", variant="stop", size="sm", elem_id="delete-button")
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown()
        yes = gr.Button("Yes, delete it", variant="stop", size="sm", elem_id="delete-confirm")
        no = gr.Button("Keep it", size="sm", elem_id="delete-keep")
    status = gr.Markdown(elem_id="manage-status")
    mine.input(shared_state, [mine, client], shared, queue=False, api_name=False)
    shared.input(set_sharing, [mine, shared, client], [status, table], api_name=False)
    delete.click(ask_delete, mine, [confirm_row, confirm_text], queue=False, api_name=False)
    no.click(lambda: gr.update(visible=False), None, confirm_row, queue=False, api_name=False)
    yes.click(delete_run, [mine, client], [status, table, mine, shared, confirm_row], api_name="delete_run")
    return RunsPanel(table, mine, shared)
