"""Bit allocation page: where a GLVQ run spent its bits (layers x groups), and why (salience)."""
from __future__ import annotations

import gradio as gr

from . import Page, figures, run_dropdown_update, run_page_load, state, texts


def figures_for_run(run_dir: str | None):
    """(heatmap, histogram, salience scatter, per-layer error, note) for one saved run."""
    if not run_dir:
        empty = figures.empty_figure("no GLVQ run yet: quantize one on the Quantize page")
        return empty, empty, empty, empty, "No GLVQ run selected."
    try:
        report = state.load_report(run_dir)
    except (ValueError, OSError) as e:
        empty = figures.empty_figure("cannot read this run")
        return empty, empty, empty, empty, f"❌ {e}"
    groups = state.report_table(report, "groups")
    layers = state.report_table(report, "layers")
    note = (f"{len(groups)} groups in {groups['layer'].nunique()} layers · mean "
            f"{groups['bits'].mean():.3f} bits in codes" if len(groups) else
            "This run has no per-group table (bit allocation needs a GLVQ run).")
    return (figures.bits_heatmap(groups), figures.bits_histogram(groups),
            figures.salience_vs_bits(groups), figures.layer_errors(layers), note)


def build() -> Page:
    gr.Markdown(texts.BITALLOC_HELP)
    with gr.Row():
        run = gr.Dropdown([], value=None, allow_custom_value=True, label="GLVQ run",
                          scale=4, elem_id="bitalloc-run")
        refresh = gr.Button("↻ Refresh runs", size="sm", scale=1)
    note = gr.Markdown()
    heat = gr.Plot(label="Allocated bits (layers × groups)")
    with gr.Row():
        hist = gr.Plot(label="Bit widths")
        scatter = gr.Plot(label="Salience vs bits")
    errs = gr.Plot(label="Error per layer")
    outs = [heat, hist, scatter, errs, note]

    def refresh_runs(current=None):
        return run_dropdown_update(state.run_choices("glvq"), current)

    run.change(figures_for_run, run, outs, api_name="bitalloc")
    refresh.click(refresh_runs, run, run, queue=False, api_name=False)
    return Page(refresh=refresh_runs, outputs=[run], refresh_inputs=[run],
                load=lambda: run_page_load("glvq", figures_for_run), load_outputs=[run, *outs])
