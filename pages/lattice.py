"""Lattice page: one group of one GLVQ layer — its learned lattice, the weights over it, μ and G."""
from __future__ import annotations

import gradio as gr
import numpy as np
import torch

import lvq

from . import Page, blank, cache, figures, run_picker, runtable, texts

METHODS = ("glvq",)


def _original_weight(run_dir: str, layer: str) -> torch.Tensor | None:
    """The layer's weight in the original model (None when that model cannot be loaded)."""
    try:
        info = lvq.read_run_info(runtable.run_path(run_dir))
        full = next(n for n in info["layers"] if n == layer or n.endswith(f"layers.{layer}"))
        model, _ = cache.BASE_MODELS.get(str(info["model"].get("source") or ""))
        return model.get_submodule(full).weight.detach().cpu()
    except (ValueError, OSError, StopIteration, AttributeError):
        return None


def group_figures(run_dir: str | None, layer: str | None, group: float, coord_a: float, coord_b: float):
    """(learned lattice, integer grid, μ-law, G heatmap, note)."""
    if not run_dir or not layer:
        return blank(4, "no GLVQ run yet: quantize one on the Quantize page", "No GLVQ layer selected.")
    try:
        qw = lvq.load_layer(runtable.run_path(run_dir), layer)
        n_groups = len(qw.bounds())
        g = min(max(int(group), 0), n_groups - 1)
        view = qw.group_view(g, _original_weight(run_dir, layer))
    except (ValueError, OSError, KeyError, AttributeError) as e:
        return blank(4, "this layer has no lattice to show", f"❌ {e}")
    d = view.G.shape[0]
    mus = {f"group {g}": view.mu} if view.mu > 0 else {}
    if qw.decoder == "nearest":  # codes index a standard lattice, not G (z + ½)
        empty = figures.empty_figure(f"fixed {qw.lattice} lattice, nearest-point decoding")
        note = (f"Group {g} of {n_groups} · d = {d} · {view.bits} bits · μ = {view.mu:.3g}. This run "
                f"uses the fixed {qw.lattice} lattice (scaled per group) with exact nearest-point "
                f"decoding: its cells are Voronoi cells in {d} dimensions, not the Babai parallelograms "
                f"this page draws for learned lattices.")
        return empty, empty, figures.mu_law_curve(mus), empty, note
    i, j = min(int(coord_a), d - 1), min(int(coord_b), d - 1)
    if i == j:
        j = (i + 1) % d
    idx = [i, j]
    G, Y, Z = view.G.numpy(), view.Y.numpy(), view.Z.numpy()
    G2 = G[np.ix_(idx, idx)]
    V, Z2 = Y[:, idx], Z[:, idx]
    extent = max(float(np.abs(V).max()) * 1.1, 0.05)
    learned = figures.lattice_figure(G2, V, f"Learned lattice, coords ({i}, {j}) of group {g} · {view.bits} bits",
                                     offset=0.5, extent=extent, codes=Z2)
    step = float(np.sqrt(abs(np.linalg.det(G2)))) or 1.0
    grid = figures.lattice_figure(step * np.eye(2), V, "Integer grid with the same cell area",
                                  offset=0.5, extent=extent)
    source = "original weights" if view.from_original else "decoded weights (original model unavailable)"
    note = (f"Group {g} of {n_groups} · d = {d} · {view.bits} bits · μ = {view.mu:.3g}"
            f"{' (no companding)' if view.mu == 0 else ''} · {len(V)} vectors from the {source}, "
            f"normalised by the stored row scales and companded. With error feedback on, the group was "
            f"quantized after earlier groups' errors were pushed onto it, so the vectors sit near — not "
            f"on — their points.")
    return learned, grid, figures.mu_law_curve(mus), figures.matrix_heatmap(G, f"G of group {g} (d × d)"), note


def select_run(run_dir: str | None):
    layers = []
    if run_dir:
        try:
            df = runtable.report_table(runtable.load_report(run_dir), "layers")
            layers = list(df["layer"].astype(str)) if "layer" in df else []
        except (ValueError, OSError):
            layers = []
    layer = layers[0] if layers else None
    return gr.update(choices=layers, value=layer)


def select_layer(run_dir: str | None, layer: str | None):
    """Group slider and coordinate sliders sized for the layer."""
    groups, d = 1, 2
    if run_dir and layer:
        try:
            df = runtable.report_table(runtable.load_report(run_dir), "groups")
            groups = int((df["layer"].astype(str) == layer).sum()) or 1
            layers = runtable.report_table(runtable.load_report(run_dir), "layers")
            row = layers[layers["layer"].astype(str) == layer]
            d = int(row["stat_dim"].iloc[0]) if "stat_dim" in row and len(row) else 8
        except (ValueError, OSError, KeyError):
            pass
    return (gr.update(maximum=max(groups - 1, 1), value=0), gr.update(maximum=d - 1, value=0),
            gr.update(maximum=d - 1, value=1))


def build() -> Page:
    gr.Markdown(texts.LATTICE_HELP)
    picker = run_picker("GLVQ run", METHODS, "lattice-run")
    with gr.Row():
        layer = gr.Dropdown([], value=None, allow_custom_value=True, label="Layer", scale=2)
        group = gr.Slider(0, 1, value=0, step=1, label="Group")
        coord_a = gr.Slider(0, 7, value=0, step=1, label="Coordinate a")
        coord_b = gr.Slider(0, 7, value=1, step=1, label="Coordinate b")
    note = gr.Markdown()
    empty = figures.empty_figure("no GLVQ run yet: quantize one on the Quantize page")
    with gr.Row():
        learned = gr.Plot(empty, label="Learned lattice")
        grid = gr.Plot(empty, label="Integer grid")
    with gr.Row():
        mu = gr.Plot(empty, label="μ-law")
        gen = gr.Plot(empty, label="Generator G")
    outs = [learned, grid, mu, gen, note]
    run = picker.dropdown
    sel = [run, layer, group, coord_a, coord_b]

    run.change(select_run, run, [layer], api_name=False)
    layer.change(select_layer, [run, layer], [group, coord_a, coord_b], api_name=False).then(
        group_figures, sel, outs, api_name="lattice")
    gr.on([group.release, coord_a.release, coord_b.release], group_figures, sel, outs,
          trigger_mode="always_last", api_name=False)
    return picker.page()
