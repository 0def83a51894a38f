"""Bit allocation page: the whole model at a glance (blocks × layer types), then one layer's groups.

The overview colours each (block, layer type) by the layer's relative error, bits per weight
with overhead, or code bits; the drill-down shows one layer's groups (bits, salience, error).
Runs of any method open here (the overview needs only the per-layer table); the group plots are
GLVQ's. GLVQ runs without bit allocation (the RHT + E8P presets: 2 bits everywhere) are flat,
and the note says why and points at what does vary.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

import lvq

from . import Page, client_or_new, example_banner, figures, open_report, run_picker, runtable, texts, viewer

METRICS = list(figures.SUMMARY_METRICS)
N_FIGURES = 5  # overview, drill-down, histogram, salience, per-layer error


def _config(run_dir: str, who) -> dict[str, Any]:
    try:
        return dict(lvq.read_run_info(runtable.run_path(run_dir, who))["method"])
    except (ValueError, OSError):
        return {}


def allocation_note(cfg: dict[str, Any], summary: pd.DataFrame, groups: pd.DataFrame) -> str:
    """What the allocation did, or why it is flat and what to look at instead (pure; tested)."""
    method = str(cfg.get("method", "this")).upper()
    bpw = summary["bits_per_weight"].mean() if len(summary) else float("nan")
    code = summary["code_bits"].mean() if len(summary) else float("nan")
    size = (f"On average {bpw:.3f} bits per weight including overhead (scales, lattice scales, "
            f"rotation signs), {bpw - code:.3f} above the {code:.3f} bits in codes."
            if bpw == bpw and code == code else "")
    if groups.empty or "bits" not in groups:
        return (f"This {method} run has no per-group table: bit allocation is GLVQ's. The overview "
                f"shows where the error is, layer by layer. {size}")
    widths = sorted(groups["bits"].unique())
    n, layers = len(groups), groups["layer"].nunique()
    if len(widths) > 1:
        return (f"{n} groups in {layers} layers got {', '.join(f'{w:g}' for w in widths)} bits "
                f"(mean {groups['bits'].mean():.3f} in codes). {size}")
    why = []
    if not cfg.get("bit_allocation", False):
        why.append("its config turns bit allocation off")
    if str(cfg.get("lattice", "")) == "E8P":
        why.append("the E8P codebook of the presets is fixed at 2 bits per weight (2^16 points per "
                   "8 weights), so every group gets exactly 2 bits")
    because = f" because {' and '.join(why)}" if why else ""
    return (f"Every one of the {n} groups has {widths[0]:g} bits{because}: the allocation is flat. "
            f"What varies is the error: the overview coloured by relative error shows which "
            f"layers lose the most (the drill-down opens on the worst). {size}")


def _layers_of(summary: pd.DataFrame) -> list[str]:
    return list(summary["layer"]) if len(summary) else []


def _worst_layer(summary: pd.DataFrame) -> str | None:
    if summary.empty or not summary["rel_error"].notna().any():
        return summary["layer"].iloc[0] if len(summary) else None
    return str(summary.loc[summary["rel_error"].idxmax(), "layer"])


def figures_for_run(run_dir: str | None, metric: str = METRICS[0], client_id: Any = None,
                    request: gr.Request = None):
    """(layer dropdown, overview, drill-down, histogram, salience, per-layer error, note)."""
    who = viewer(client_id, request)
    report, nothing = open_report(run_dir, "quantized", N_FIGURES, who)
    if nothing:
        return (gr.update(choices=[], value=None), *nothing)
    groups = runtable.report_table(report, "groups")
    summary = figures.layer_summary(runtable.report_table(report, "layers"), groups)
    layer = _worst_layer(summary)
    note = example_banner(run_dir) + allocation_note(_config(run_dir, who), summary, groups)
    return (gr.update(choices=_layers_of(summary), value=layer),
            figures.block_summary(summary, metric), figures.layer_groups(groups, layer or ""),
            figures.bits_histogram(groups), figures.salience_vs_bits(groups),
            figures.layer_errors(runtable.report_table(report, "layers")), note)


def overview(run_dir: str | None, metric: str, client_id: Any = None, request: gr.Request = None):
    report, nothing = open_report(run_dir, "quantized", 1, viewer(client_id, request))
    if nothing:
        return nothing[0]
    groups = runtable.report_table(report, "groups")
    return figures.block_summary(figures.layer_summary(runtable.report_table(report, "layers"), groups), metric)


def drill(run_dir: str | None, layer: str | None, client_id: Any = None, request: gr.Request = None):
    report, nothing = open_report(run_dir, "quantized", 1, viewer(client_id, request))
    if nothing:
        return nothing[0]
    return figures.layer_groups(runtable.report_table(report, "groups"), layer or "")


def build(client: gr.BrowserState | None = None) -> Page:
    client = client_or_new(client)
    gr.Markdown(texts.BITALLOC_HELP)
    picker = run_picker("Run", None, "bitalloc-run", client, prefer=("glvq",))
    note = gr.Markdown(elem_id="bitalloc-note")
    metric = gr.Radio(METRICS, value=METRICS[0], label="Colour the overview by")
    heat = gr.Plot(label="Whole model: blocks × layer types")
    layer = gr.Dropdown([], value=None, allow_custom_value=True, label="Layer (its groups below)")
    groups = gr.Plot(label="One layer's groups")
    with gr.Row():
        hist = gr.Plot(label="Bit widths")
        scatter = gr.Plot(label="Salience vs bits")
    errs = gr.Plot(label="Error per layer")
    outs = [layer, heat, groups, hist, scatter, errs, note]
    run = picker.dropdown
    run.change(figures_for_run, [run, metric, client], outs, api_name="bitalloc")
    metric.input(overview, [run, metric, client], heat, api_name=False)
    layer.input(drill, [run, layer, client], groups, api_name=False)
    return picker.page(lambda value, cid, req: figures_for_run(value, METRICS[0], cid, req), outs)

