"""Lattice page: one group of one GLVQ layer — its lattice or codebook, the weights over it, μ, G,
and for rotated layers the same weights before and after the rotation.

A real run is drawn from its weights (``lvq.load_layer`` plus the original model's weight); a
report-only example from its ``report/lattice_view.csv`` (lvq/bench/examples.py), which holds the
same ``group_data`` for a few groups.
"""
from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import numpy as np
import torch

import lvq
from lvq.bench import examples

from . import Page, blank, cache, client_or_new, example_banner, figures, run_picker, runtable, texts, viewer

LOG = logging.getLogger(__name__)

METHODS = ("glvq",)
N_FIGURES = 6  # lattice, grid, μ-law, G, rotation scatter, rotation histogram


def _original_weight(run_dir: str, layer: str, who) -> torch.Tensor | None:
    """The layer's weight in the original model (None when that model cannot be loaded)."""
    try:
        info = lvq.read_run_info(runtable.run_path(run_dir, who))
        full = next(n for n in info["layers"] if n == layer or n.endswith(f"layers.{layer}"))
        model, _ = cache.BASE_MODELS.get(str(info["model"].get("source") or ""))
        return model.get_submodule(full).weight.detach().cpu()
    except (ValueError, OSError, StopIteration, AttributeError):
        return None


def _view_table(run_dir: str, who):
    return runtable.report_table(runtable.load_report(run_dir, who), examples.VIEW_TABLE)


def available_groups(run_dir: str | None, layer: str | None, who) -> list[int]:
    """Groups that can be drawn: all of a real run's layer, the stored few of an example's."""
    if not run_dir or not layer:
        return []
    try:
        if runtable.is_example(run_dir):
            return examples.view_groups(_view_table(run_dir, who), layer)
        df = runtable.report_table(runtable.load_report(run_dir, who), "groups")
        n = int((df["layer"].astype(str) == layer).sum()) if "layer" in df else 0
        return list(range(n))
    except (ValueError, OSError, KeyError):
        return []


def load_group(run_dir: str, layer: str, g: int, who) -> dict[str, Any]:
    """``examples.group_data`` of group g: from an example's table or from the run's weights."""
    if runtable.is_example(run_dir):
        return examples.view_group(_view_table(run_dir, who), layer, g)
    qw = lvq.load_layer(runtable.run_path(run_dir, who), layer)
    return examples.group_data(qw, g, _original_weight(run_dir, layer, who))


def _rel_err(Y: np.ndarray, Q: np.ndarray) -> float:
    return float(((Y - Q) ** 2).sum() / max((Y ** 2).sum(), 1e-30))


def _rotation_text(before: np.ndarray, after: np.ndarray) -> str:
    def peak(M):
        return float(np.abs(M).max() / max(np.sqrt((M ** 2).mean()), 1e-30))
    return (f" **Rotated layer:** these are the vectors of W′ = U W Vᵀ, as quantized; the last two "
            f"plots put them beside the same slice of the original W (each row scaled to the same "
            f"RMS): kurtosis {figures.kurtosis(before):.1f} → {figures.kurtosis(after):.1f} "
            f"(3 for a Gaussian), largest |w| / RMS {peak(before):.1f} → {peak(after):.1f}.")


def draw_group(data: dict[str, Any], g_label: str, i: int, j: int) -> tuple:
    """(lattice, grid, μ-law, G, rotation scatter, rotation histogram, note) of one group (pure)."""
    G, Z = np.asarray(data["G"], dtype=float), np.asarray(data["Z"])
    d, bits, mu = G.shape[0], data["bits"], data["mu"]
    i, j = min(i, d - 1), min(j, d - 1)
    if i == j:
        j = (i + 1) % d
    idx = [i, j]
    Q = examples.decoded_points(data)
    Y = data["Y"] if data["Y"] is not None else Q
    source = "original weights" if data["Y"] is not None else "decoded weights (original model unavailable)"
    mus = {g_label: mu} if mu > 0 else {}
    gen = figures.matrix_heatmap(G, f"G of {g_label} (d × d)")
    coords = f"coords ({i}, {j}) of {g_label}"
    if data["decoder"] == "nearest":
        lat = figures.quantized_points_figure(Y[:, idx], Q[:, idx],
                                              f"Fixed {data['lattice']} codebook, {coords} · {bits} bits")
        grid = figures.empty_figure(f"fixed {data['lattice']} codebook: its cells are Voronoi cells "
                                    f"in {d} dimensions, not parallelograms")
        kind = (f"the fixed {data['lattice']} codebook (scaled per group, G = scale × I) with exact "
                f"nearest-point decoding: each vector is joined to the point its code decodes to")
    else:
        G2 = G[np.ix_(idx, idx)]
        extent = max(float(np.abs(Y[:, idx]).max()) * 1.1, 0.05)
        lat = figures.lattice_figure(G2, Y[:, idx], f"Lattice, {coords} · {bits} bits", offset=0.5,
                                     extent=extent, codes=Z[:, idx])
        step = float(np.sqrt(abs(np.linalg.det(G2)))) or 1.0
        grid = figures.lattice_figure(step * np.eye(2), Y[:, idx], "Integer grid with the same cell area",
                                      offset=0.5, extent=extent)
        kind = f"a {data['lattice']} lattice with Babai rounding-off"
    note = (f"{g_label[0].upper()}{g_label[1:]} of {data['n_groups']} · d = {d} · {bits} bits · μ = {mu:.3g}"
            f"{' (no companding)' if mu == 0 else ''} · {kind}. {len(Y)} of its {data['vectors_total']} "
            f"vectors (evenly spaced) from the {source}, normalised by the stored row scales; their "
            f"relative quantization error is {_rel_err(Y, Q):.3f}.")
    if data["before"] is not None and data["Y"] is not None:
        before = np.asarray(data["before"], dtype=float)
        rot = figures.rotation_scatter(before[:, idx], Y[:, idx], f"Before and after rotation, {coords}")
        hist = figures.rotation_histogram(before, Y)
        note += _rotation_text(before, Y)
    else:
        why = ("original model unavailable: no weights before rotation to show" if data["rotated"]
               else "this layer was not rotated (incoherence processing off)")
        rot = hist = figures.empty_figure(why)
    return lat, grid, figures.mu_law_curve(mus), gen, rot, hist, note


def group_figures(run_dir: str | None, layer: str | None, group: float, coord_a: float, coord_b: float,
                  client_id: Any = None, request: gr.Request = None):
    """(lattice, grid, μ-law, G, rotation scatter, rotation histogram, note); ``group`` indexes
    the layer's drawable groups."""
    who = viewer(client_id, request)
    if not run_dir or not layer:
        return blank(N_FIGURES, "no GLVQ run yet: quantize one on the Quantize page", "No GLVQ layer selected.")
    try:
        groups = available_groups(run_dir, layer, who)
        if not groups:
            raise ValueError(f"layer {layer!r} has no lattice groups to show")
        g = groups[min(max(int(group), 0), len(groups) - 1)]
        data = load_group(run_dir, layer, g, who)
    except (ValueError, OSError, KeyError, AttributeError) as e:  # LvqError is a ValueError
        return blank(N_FIGURES, "this layer has no lattice to show", f"❌ {e}")
    out = draw_group(data, f"group {g}", int(coord_a), int(coord_b))
    kept = "" if len(groups) == data["n_groups"] else \
        f" This example keeps groups {', '.join(map(str, groups))} of this layer."
    return (*out[:-1], example_banner(run_dir) + out[-1] + kept)


def layers_of(run_dir: str | None, who) -> list[str]:
    if not run_dir:
        return []
    try:
        if runtable.is_example(run_dir):
            return examples.view_layers(_view_table(run_dir, who))
        df = runtable.report_table(runtable.load_report(run_dir, who), "layers")
        return list(df["layer"].astype(str)) if "layer" in df else []
    except (ValueError, OSError) as e:
        LOG.warning("Lattice page: no layers listed for %s: %s", run_dir, e)
        return []


def _sliders(run_dir: str | None, layer: str | None, who) -> tuple:
    """Group and coordinate sliders sized for the layer."""
    n, d = len(available_groups(run_dir, layer, who)) or 1, 8
    try:
        layers = runtable.report_table(runtable.load_report(run_dir, who), "layers")
        row = layers[layers["layer"].astype(str) == layer]
        d = int(row["stat_dim"].iloc[0]) if "stat_dim" in row and len(row) else 8
    except (ValueError, OSError, KeyError):
        pass
    return (gr.update(maximum=max(n - 1, 1), value=0), gr.update(maximum=d - 1, value=0),
            gr.update(maximum=d - 1, value=1))


def select_layer(run_dir: str | None, layer: str | None, client_id: Any = None, request: gr.Request = None):
    """(group, coordinate a, coordinate b sliders, figures..., note) for a newly picked layer."""
    who = viewer(client_id, request)
    return (*_sliders(run_dir, layer, who), *group_figures(run_dir, layer, 0, 0, 1, client_id, request))


def select_run(run_dir: str | None, client_id: Any = None, request: gr.Request = None):
    """(layer dropdown, sliders, figures..., note) for a newly picked run: its first layer drawn.
    One event, not a chain: the values a chain's next step reads may be stale on a tab that is not
    shown yet."""
    layers = layers_of(run_dir, viewer(client_id, request))
    layer = layers[0] if layers else None
    return (gr.update(choices=layers, value=layer), *select_layer(run_dir, layer, client_id, request))


def build(client: gr.BrowserState | None = None) -> Page:
    client = client_or_new(client)
    gr.Markdown(texts.LATTICE_HELP)
    picker = run_picker("GLVQ run", METHODS, "lattice-run", client)
    with gr.Row():
        layer = gr.Dropdown([], value=None, allow_custom_value=True, label="Layer", scale=2)
        group = gr.Slider(0, 1, value=0, step=1, label="Group")
        coord_a = gr.Slider(0, 7, value=0, step=1, label="Coordinate a")
        coord_b = gr.Slider(0, 7, value=1, step=1, label="Coordinate b")
    note = gr.Markdown(elem_id="lattice-note")
    empty = figures.empty_figure("no GLVQ run yet: quantize one on the Quantize page")
    with gr.Row():
        learned = gr.Plot(empty, label="Lattice or codebook")
        grid = gr.Plot(empty, label="Integer grid")
    with gr.Row():
        mu = gr.Plot(empty, label="μ-law")
        gen = gr.Plot(empty, label="Generator G")
    with gr.Row():
        rot = gr.Plot(empty, label="Before / after rotation")
        hist = gr.Plot(empty, label="Weights before / after rotation")
    outs = [learned, grid, mu, gen, rot, hist, note]
    run = picker.dropdown
    sel = [run, layer, group, coord_a, coord_b, client]

    sliders = [group, coord_a, coord_b]
    run.change(select_run, [run, client], [layer, *sliders, *outs], api_name=False)
    layer.input(select_layer, [run, layer, client], [*sliders, *outs], api_name="lattice")
    gr.on([group.release, coord_a.release, coord_b.release], group_figures, sel, outs,
          trigger_mode="always_last", api_name=False)
    return picker.page(select_run, [layer, *sliders, *outs])
