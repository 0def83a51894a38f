"""Channels page: CRVQ's critical channels, permutation, codebook usage and per-channel error."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from . import Page, figures, run_dropdown_update, state, texts

METHODS = ("crvq", "aqlm")


def _layers(report) -> list[str]:
    for name in ("channels", "codebooks", "layers"):
        df = state.report_table(report, name)
        if len(df) and "layer" in df:
            return list(dict.fromkeys(df["layer"].astype(str)))
    return []


def _critical_ratio(run_dir: str) -> float | None:
    import lvq

    try:
        return float(lvq.read_run_info(state.run_path(run_dir))["method"].get("critical_ratio"))
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


def layer_figures(run_dir: str | None, layer: str | None):
    """(importance, permutation, codebook usage, per-channel error, note) for one layer of a run."""
    if not run_dir or not layer:
        empty = figures.empty_figure("no CRVQ run yet: quantize one on the Quantize page")
        return empty, empty, empty, empty, "No CRVQ layer selected."
    try:
        report = state.load_report(run_dir)
    except (ValueError, OSError) as e:
        empty = figures.empty_figure("cannot read this run")
        return empty, empty, empty, empty, f"❌ {e}"

    def of_layer(name: str) -> pd.DataFrame:
        df = state.report_table(report, name)
        return df[df["layer"].astype(str) == layer] if len(df) and "layer" in df else df

    ch, cb = of_layer("channels"), of_layer("codebooks")
    n_crit = int(ch["critical"].astype(bool).sum()) if "critical" in ch else 0
    note = f"Layer `{layer}`: {len(ch)} input channels, {n_crit} critical." if len(ch) else \
        "This layer has no channel table (AQLM runs have no critical channels)."
    note += finetune_note(of_layer("layers"))
    return (figures.channel_importance(ch, _critical_ratio(run_dir)), figures.channel_permutation(ch),
            figures.codebook_usage(cb), figures.channel_error(ch), note)


def select_run(run_dir: str | None):
    """Layer dropdown for a run, then that layer's figures."""
    layers = []
    if run_dir:
        try:
            layers = _layers(state.load_report(run_dir))
        except (ValueError, OSError):
            layers = []
    layer = layers[0] if layers else None
    return (gr.update(choices=layers, value=layer), *layer_figures(run_dir, layer))


def _run_choices():
    return sum((state.run_choices(m) for m in METHODS), [])


def build() -> Page:
    gr.Markdown(texts.CHANNELS_HELP)
    with gr.Row():
        run = gr.Dropdown([], value=None, allow_custom_value=True, label="CRVQ / AQLM run", scale=3, elem_id="channels-run")
        layer = gr.Dropdown([], value=None, allow_custom_value=True, label="Layer", scale=3)
        refresh = gr.Button("↻ Refresh runs", size="sm", scale=1)
    note = gr.Markdown()
    imp = gr.Plot(label="Channel importance")
    with gr.Row():
        perm = gr.Plot(label="Permutation")
        usage = gr.Plot(label="Codebook usage")
    err = gr.Plot(label="Per-channel error")
    outs = [imp, perm, usage, err, note]

    def refresh_runs(current=None):
        return run_dropdown_update(_run_choices(), current)

    def load():
        choices = _run_choices()
        value = choices[0][1] if choices else None
        return (run_dropdown_update(choices, value), *select_run(value))

    run.change(select_run, run, [layer, *outs], api_name="channels")
    layer.input(layer_figures, [run, layer], outs, api_name=False)
    refresh.click(refresh_runs, run, run, queue=False, api_name=False)
    return Page(refresh=refresh_runs, outputs=[run], refresh_inputs=[run], load=load,
                load_outputs=[run, layer, *outs])

