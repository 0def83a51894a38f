"""Channels page: CRVQ's critical channels, permutation, codebook usage and per-channel error."""
from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

import lvq

from . import Page, client_or_new, example_banner, figures, open_report, run_picker, runtable, texts, viewer

LOG = logging.getLogger(__name__)

METHODS = ("crvq", "aqlm")


def _layers(report) -> list[str]:
    for name in ("channels", "codebooks", "layers"):
        df = runtable.report_table(report, name)
        if len(df) and "layer" in df:
            return list(dict.fromkeys(df["layer"].astype(str)))
    return []


def _critical_ratio(run_dir: str, who) -> float | None:
    try:
        return float(lvq.read_run_info(runtable.run_path(run_dir, who))["method"].get("critical_ratio"))
    except (ValueError, TypeError, KeyError, OSError):
        return None


def finetune_note(rows: pd.DataFrame) -> str:
    """One sentence on the block fine-tuning of this layer's block, "" when the run had none."""
    if not len(rows) or "finetune_val_after" not in rows or pd.isna(rows["finetune_val_after"].iloc[0]):
        return ""
    r = rows.iloc[0]
    before, after = float(r["finetune_val_before"]), float(r["finetune_val_after"])
    head = f" Block fine-tuning of block {int(r['block']) + 1}"
    best, ran = int(r["finetune_best_step"]), int(r["finetune_steps_run"])
    if best == 0:
        return (f"{head}: no pass of {ran} lowered the held-out relative output error ({before:.4g}), "
                "so the codebooks from quantization were kept.")
    change = f"{(after / before - 1):+.1%}" if before > 0 else "n/a"
    return (f"{head}: held-out relative output error {before:.4g} → {after:.4g} ({change}; best after "
            f"pass {best} of {ran} run).")


def layer_figures(run_dir: str | None, layer: str | None, client_id: Any = None, request: gr.Request = None):
    """(importance, permutation, codebook usage, per-channel error, note) for one layer of a run."""
    who = viewer(client_id, request)
    report, nothing = open_report(run_dir if layer else None, "CRVQ", 4, who)
    if nothing:
        return nothing

    def of_layer(name: str) -> pd.DataFrame:
        df = runtable.report_table(report, name)
        return df[df["layer"].astype(str) == layer] if len(df) and "layer" in df else df

    ch, cb = of_layer("channels"), of_layer("codebooks")
    n_crit = int(ch["critical"].astype(bool).sum()) if "critical" in ch else 0
    note = f"Layer `{layer}`: {len(ch)} input channels, {n_crit} critical." if len(ch) else \
        "This layer has no channel table (AQLM runs have no critical channels)."
    note = example_banner(run_dir) + note + finetune_note(of_layer("layers"))
    return (figures.channel_importance(ch, _critical_ratio(run_dir, who)), figures.channel_permutation(ch),
            figures.codebook_usage(cb), figures.channel_error(ch), note)


def select_run(run_dir: str | None, client_id: Any = None, request: gr.Request = None):
    """Layer dropdown for a run, then that layer's figures."""
    layers = []
    if run_dir:
        try:
            layers = _layers(runtable.load_report(run_dir, viewer(client_id, request)))
        except (ValueError, OSError) as e:
            LOG.warning("Channels page: no layers listed for %s: %s", run_dir, e)
            layers = []
    layer = layers[0] if layers else None
    return (gr.update(choices=layers, value=layer), *layer_figures(run_dir, layer, client_id, request))


def build(client: gr.BrowserState | None = None) -> Page:
    client = client_or_new(client)
    gr.Markdown(texts.CHANNELS_HELP)
    picker = run_picker("CRVQ / AQLM run", METHODS, "channels-run", client)
    layer = gr.Dropdown([], value=None, allow_custom_value=True, label="Layer")
    note = gr.Markdown(elem_id="channels-note")
    imp = gr.Plot(label="Channel importance")
    with gr.Row():
        perm = gr.Plot(label="Permutation")
        usage = gr.Plot(label="Codebook usage")
    err = gr.Plot(label="Per-channel error")
    outs = [imp, perm, usage, err, note]
    picker.dropdown.change(select_run, [picker.dropdown, client], [layer, *outs], api_name="channels")
    layer.input(layer_figures, [picker.dropdown, layer, client], outs, api_name=False)
    return picker.page(select_run, [layer, *outs])
