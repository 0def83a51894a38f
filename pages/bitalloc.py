"""Bit allocation page: where a GLVQ run spent its bits (layers x groups), and why (salience)."""
from __future__ import annotations

import gradio as gr

from . import Page, figures, open_report, run_picker, runtable, texts


def figures_for_run(run_dir: str | None):
    """(heatmap, histogram, salience scatter, per-layer error, note) for one saved run."""
    report, nothing = open_report(run_dir, "GLVQ", 4)
    if nothing:
        return nothing
    groups = runtable.report_table(report, "groups")
    layers = runtable.report_table(report, "layers")
    note = (f"{len(groups)} groups in {groups['layer'].nunique()} layers · mean "
            f"{groups['bits'].mean():.3f} bits in codes" if len(groups) else
            "This run has no per-group table (bit allocation needs a GLVQ run).")
    return (figures.bits_heatmap(groups), figures.bits_histogram(groups),
            figures.salience_vs_bits(groups), figures.layer_errors(layers), note)


def build() -> Page:
    gr.Markdown(texts.BITALLOC_HELP)
    picker = run_picker("GLVQ run", ("glvq",), "bitalloc-run")
    note = gr.Markdown()
    heat = gr.Plot(label="Allocated bits (layers × groups)")
    with gr.Row():
        hist = gr.Plot(label="Bit widths")
        scatter = gr.Plot(label="Salience vs bits")
    errs = gr.Plot(label="Error per layer")
    outs = [heat, hist, scatter, errs, note]
    picker.dropdown.change(figures_for_run, picker.dropdown, outs, api_name="bitalloc")
    return picker.page(figures_for_run, outs)
