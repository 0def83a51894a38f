"""Compare page: perplexity against size for every saved run and the benchmark table."""
from __future__ import annotations

import time
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from . import Page, client_or_new, figures, runtable, texts, viewer

FP_METHODS = ("fp", "fp16", "fp32", "bf16", "none")
TABLE_COLUMNS = ["source", "label", "method", "bits_per_weight", "model_mb", "ppl", "ppl_fp",
                 "seqlen", "windows", "quant_time_s", "peak_rss_mb", "ppl_min", "ppl_max", "n_seeds"]
SOURCES = ["benchmark table", "my runs"]
SWEEP_COLUMNS = ["sweep", "swept"]  # a run's sweep name and grid point (JSON); empty otherwise
GROUPS = ["method", "sweep"]


def combined_table(bench: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Benchmark rows and saved runs in one table with ``TABLE_COLUMNS`` (pure; tested)."""
    parts = []
    if len(bench):
        b = bench.copy()
        b["source"] = "benchmark"
        parts.append(b)
    if len(runs):
        r = runs.rename(columns={"run": "label"}).copy()
        r["source"] = "run"
        parts.append(r)
    if not parts:
        return pd.DataFrame(columns=TABLE_COLUMNS + SWEEP_COLUMNS)
    df = pd.concat([p.reindex(columns=TABLE_COLUMNS + SWEEP_COLUMNS) for p in parts], ignore_index=True)
    for c in TABLE_COLUMNS[3:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["method"] = df["method"].astype(str)
    df[SWEEP_COLUMNS] = df[SWEEP_COLUMNS].fillna("").astype(str)
    return df


def fp_reference(df: pd.DataFrame) -> float | None:
    """The unquantized perplexity: a benchmark fp row if there is one, else the runs' ppl_fp."""
    fp_rows = df[df["method"].str.lower().isin(FP_METHODS)]["ppl"].dropna()
    if len(fp_rows):
        return float(fp_rows.iloc[0])
    vals = df["ppl_fp"].dropna()
    return float(vals.median()) if len(vals) else None


def view(sources: list[str], x: str, log_y: bool, group_by: str = "method", client_id: Any = None,
         request: gr.Request = None):
    """(figure, table, csv path) for the chosen sources and axis; group_by "sweep" draws each
    sweep as one line (benchmark rows and single runs as grey markers). "my runs" are the runs
    this visitor may see (their own and shared ones; pages/sessions.py)."""
    bench = runtable.load_bench() if "benchmark table" in sources else pd.DataFrame()
    runs = runtable.list_runs(viewer(client_id, request)) if "my runs" in sources else pd.DataFrame()
    df = combined_table(bench, runs)
    ref = fp_reference(df) if len(df) else None
    points = df[~df["method"].str.lower().isin(FP_METHODS)] if len(df) else df
    fig = (figures.sweep_figure(points, x=x, ppl_fp=ref, log_y=log_y) if group_by == "sweep"
           else figures.compare_figure(points, x=x, ppl_fp=ref, log_y=log_y))
    shown = df.copy()
    if len(shown):
        num = shown.select_dtypes(include=[np.number]).columns
        shown[num] = shown[num].round(3)
        shown = shown.sort_values(["ppl"], na_position="last")
    out = runtable.runs_root() / ".exports"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lvq-compare-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    shown.to_csv(path, index=False)
    return fig, shown, str(path)


def build(client: gr.BrowserState | None = None) -> Page:
    client = client_or_new(client)
    gr.Markdown(texts.COMPARE_HELP)
    with gr.Row():
        sources = gr.CheckboxGroup(SOURCES, value=SOURCES, label="Show")
        x = gr.Radio([("bits per weight", "bits_per_weight"), ("model size (MB)", "model_mb")],
                     value="bits_per_weight", label="Size axis")
        log_y = gr.Checkbox(value=True, label="log perplexity axis")
        group_by = gr.Dropdown(GROUPS, value="method", label="group runs by",
                               info="sweep: one line per `lvq sweep`, in the order of its setting")
        refresh = gr.Button("↻ Refresh", size="sm")
    plot = gr.Plot(label="Perplexity vs size", elem_id="compare-plot")
    table = gr.Dataframe(interactive=False, label="All runs (click a header to sort)", wrap=True)
    download = gr.DownloadButton("Download CSV", size="sm")
    inputs, outs = [sources, x, log_y, group_by, client], [plot, table, download]
    gr.on([sources.change, x.change, log_y.change, group_by.change, refresh.click], view, inputs, outs,
          api_name="compare")

    def load(client_id: Any = None, request: gr.Request = None):
        return view(SOURCES, "bits_per_weight", True, "method", client_id, request)

    return Page(refresh=view, outputs=outs, refresh_inputs=inputs, load=load, load_inputs=[client],
                load_outputs=outs)
