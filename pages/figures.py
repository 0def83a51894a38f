"""Pure figure builders: report tables (pandas) or small arrays in, plotly figures out.

Nothing here reads files, loads models or knows about Gradio, so every builder can be tested on a
hand-made table. Column names follow the run report (see ``lvq.qweight`` and ``lvq.pipeline``).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

METHOD_COLORS = {"fp": "#444444", "rtn": "#8c8c8c", "gptq": "#1f77b4", "glvq": "#d62728",
                 "crvq": "#2ca02c", "aqlm": "#9467bd"}
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420)


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying a message (shown instead of a plot when there is nothing to draw)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=15, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(**{**_LAYOUT, "height": 260})
    return fig


def _ordered_layers(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["layer"].astype(str)))


def _col(df: pd.DataFrame, name: str, default: float = np.nan) -> np.ndarray:
    return df[name].to_numpy(dtype=float) if name in df else np.full(len(df), default)


# ----------------------------------------------------------------------------------------------
# Bit allocation (GLVQ "groups" table: layer, group, bits, salience, err_before, err_after, ...)
# ----------------------------------------------------------------------------------------------
def bits_heatmap(groups: pd.DataFrame) -> go.Figure:
    """Layers x groups heatmap of allocated bits; hover shows layer, group, bits, salience, error."""
    if groups.empty:
        return empty_figure("no bit-allocation table in this run")
    layers = _ordered_layers(groups)
    ngroups = int(groups["group"].max()) + 1
    z = np.full((len(layers), ngroups), np.nan)
    custom = np.full((len(layers), ngroups, 2), np.nan)
    row = {name: i for i, name in enumerate(layers)}
    err = _col(groups, "err_after")
    sal = _col(groups, "salience")
    for k, (layer, g, b) in enumerate(zip(groups["layer"].astype(str), groups["group"], groups["bits"])):
        i, j = row[layer], int(g)
        z[i, j] = b
        custom[i, j] = (sal[k], err[k])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(ngroups)), y=layers, customdata=custom, colorscale="Viridis",
        colorbar=dict(title="bits"),
        hovertemplate="layer %{y}<br>group %{x}<br>bits %{z}<br>salience %{customdata[0]:.3g}"
                      "<br>error %{customdata[1]:.3g}<extra></extra>"))
    fig.update_layout(**{**_LAYOUT, "height": max(360, 14 * len(layers) + 120)},
                      title="Allocated bits per group", xaxis_title="group (input columns)",
                      yaxis=dict(title="layer", autorange="reversed", tickfont=dict(size=9)))
    return fig


LAYER_TYPE_ORDER = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
                    "gate_up_proj", "down_proj")
SUMMARY_METRICS = {
    "relative error": ("rel_error", "relative output error ‖(W−Ŵ)X‖² / ‖WX‖²"),
    "bits per weight (incl. overhead)": ("bits_per_weight", "bits per weight, overhead included"),
    "code bits": ("code_bits", "mean bits in codes (what bit allocation moves)"),
}


def _layer_type(name: str) -> str:
    return str(name).rsplit(".", 1)[-1]


def layer_summary(layers: pd.DataFrame, groups: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per layer: layer, block, type, rel_error, bits_per_weight and code_bits (the mean
    code width over the layer's columns from the groups table, else the layer's stat)."""
    if layers.empty or "layer" not in layers:
        return pd.DataFrame(columns=["layer", "block", "type", "rel_error", "bits_per_weight", "code_bits"])
    names = layers["layer"].astype(str)
    block = (layers["block"] if "block" in layers else names.str.split(".").str[0]).astype(int)
    out = pd.DataFrame({"layer": names, "block": block.to_numpy(), "type": names.map(_layer_type),
                        "rel_error": _col(layers, "rel_error"),
                        "bits_per_weight": _col(layers, "bits_per_weight"),
                        "code_bits": _col(layers, "stat_code_bits")})
    if groups is not None and len(groups) and {"layer", "bits"} <= set(groups):
        g = groups.assign(_w=(groups["col_stop"] - groups["col_start"]) if {"col_start", "col_stop"} <= set(groups) else 1.0)
        g = g.assign(_wb=g["_w"] * g["bits"]).groupby(g["layer"].astype(str))[["_wb", "_w"]].sum()
        mean = (g["_wb"] / g["_w"]).to_dict()
        out["code_bits"] = [mean.get(n, c) for n, c in zip(out["layer"], out["code_bits"])]
    return out


def block_summary(summary: pd.DataFrame, metric: str = "relative error") -> go.Figure:
    """Blocks x layer types heatmap of one per-layer ``metric`` (a SUMMARY_METRICS key): the
    whole model at a glance; relative error on a log colour scale."""
    column, title = SUMMARY_METRICS.get(metric, SUMMARY_METRICS["relative error"])
    if summary.empty or not np.isfinite(summary[column].to_numpy(dtype=float)).any():
        return empty_figure(f"no {metric} in this run's report")
    present = list(dict.fromkeys(summary["type"]))
    types = [t for t in LAYER_TYPE_ORDER if t in present] + [t for t in present if t not in LAYER_TYPE_ORDER]
    blocks = sorted(summary["block"].unique())
    z = np.full((len(blocks), len(types)), np.nan)
    names = np.full(z.shape, "", dtype=object)
    bi, ti = {b: i for i, b in enumerate(blocks)}, {t: j for j, t in enumerate(types)}
    for r in summary.itertuples(index=False):
        z[bi[r.block], ti[r.type]] = getattr(r, column)
        names[bi[r.block], ti[r.type]] = r.layer
    log = column == "rel_error"
    shown = np.log10(np.where(z > 0, z, np.nan)) if log else z
    fig = go.Figure(go.Heatmap(
        z=shown, x=types, y=[str(b) for b in blocks], customdata=np.dstack([names, z]),
        colorscale="Viridis", colorbar=dict(title="log10" if log else "bits"),
        hovertemplate="%{customdata[0]}<br>" + metric + " %{customdata[1]:.4g}<extra></extra>"))
    fig.update_layout(**{**_LAYOUT, "height": max(320, 16 * len(blocks) + 140)},
                      title=f"{title}: blocks × layer types", xaxis_title="layer type",
                      yaxis=dict(title="block", autorange="reversed", type="category",
                                 tickfont=dict(size=9)))
    return fig


def layer_groups(groups: pd.DataFrame, layer: str) -> go.Figure:
    """One layer's groups: the bits each got (bars) and their error after quantization (markers,
    right axis); hover shows the salience."""
    rows = groups[groups["layer"].astype(str) == layer] if len(groups) and "layer" in groups else groups
    if rows.empty:
        return empty_figure("no per-group table for this layer (bit allocation is GLVQ's)")
    rows = rows.sort_values("group")
    sal = _col(rows, "salience")
    fig = go.Figure(go.Bar(x=rows["group"], y=rows["bits"], name="bits", marker_color="#d62728",
                           customdata=sal,
                           hovertemplate="group %{x}<br>%{y} bits<br>salience %{customdata:.3g}<extra></extra>"))
    if "err_after" in rows:
        fig.add_trace(go.Scatter(x=rows["group"], y=rows["err_after"], yaxis="y2", mode="markers+lines",
                                 name="error after", marker=dict(color="#1f77b4"),
                                 hovertemplate="group %{x}<br>error %{y:.3g}<extra></extra>"))
    fig.update_layout(**_LAYOUT, title=f"Groups of {layer}",
                      xaxis=dict(title="group (input columns)", dtick=1),
                      yaxis=dict(title="bits", rangemode="tozero"),
                      yaxis2=dict(title="error", overlaying="y", side="right", type="log", showgrid=False),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def bits_histogram(groups: pd.DataFrame) -> go.Figure:
    """How many groups got each bit width."""
    if groups.empty:
        return empty_figure("no bit-allocation table in this run")
    counts = groups["bits"].value_counts().sort_index()
    fig = go.Figure(go.Bar(x=[f"{b:g}" for b in counts.index], y=counts.to_numpy(),
                           marker_color="#d62728",
                           hovertemplate="%{x} bits: %{y} groups<extra></extra>"))
    mean = float(groups["bits"].mean())
    fig.update_layout(**_LAYOUT, title=f"Bit widths (mean {mean:.3f} bits/weight in codes)",
                      xaxis_title="bits per weight", yaxis_title="groups")
    return fig


def salience_vs_bits(groups: pd.DataFrame) -> go.Figure:
    """Group salience against allocated bits (jittered), coloured by the group's error."""
    if groups.empty:
        return empty_figure("no bit-allocation table in this run")
    rng = np.random.default_rng(0)
    bits = groups["bits"].to_numpy(dtype=float)
    err = _col(groups, "err_after")
    custom = np.stack([groups["layer"].astype(str).to_numpy(), groups["group"].to_numpy(),
                       bits, err], axis=1)
    fig = go.Figure(go.Scatter(
        x=_col(groups, "salience"), y=bits + rng.uniform(-0.15, 0.15, len(bits)), mode="markers",
        customdata=custom,
        marker=dict(size=7, color=np.log10(np.maximum(err, 1e-12)) if np.isfinite(err).any() else None,
                    colorscale="Inferno", showscale=bool(np.isfinite(err).any()),
                    colorbar=dict(title="log10 err")),
        hovertemplate="layer %{customdata[0]}<br>group %{customdata[1]}<br>bits %{customdata[2]}"
                      "<br>salience %{x:.3g}<br>error %{customdata[3]:.3g}<extra></extra>"))
    fig.update_layout(**_LAYOUT, title="Salience drives the allocation", xaxis_type="log",
                      xaxis_title="salience Σ W² / U_jj² (log)", yaxis_title="bits (jittered)")
    return fig


def layer_errors(layers: pd.DataFrame) -> go.Figure:
    """Relative output error per quantized layer, in model order."""
    if layers.empty or "rel_error" not in layers:
        return empty_figure("no per-layer errors in this run")
    fig = go.Figure(go.Bar(
        x=layers["layer"].astype(str), y=layers["rel_error"], marker_color="#1f77b4",
        customdata=np.stack([_col(layers, "bits_per_weight")], axis=1),
        hovertemplate="%{x}<br>rel. error %{y:.3g}<br>%{customdata[0]:.3f} bits/weight<extra></extra>"))
    fig.update_layout(**_LAYOUT, title="Relative output error ‖(W−Ŵ)X‖² / ‖WX‖² per layer",
                      yaxis_type="log", xaxis=dict(showticklabels=len(layers) <= 40))
    return fig


# ----------------------------------------------------------------------------------------------
# Lattice (one GLVQ group)
# ----------------------------------------------------------------------------------------------
def lattice_points(G2: np.ndarray, extent: float, offset: float = 0.0, max_points: int = 4000):
    """Points G2 (z + offset) of a 2-D lattice inside the box [-extent, extent]^2, and their z."""
    G2 = np.asarray(G2, dtype=float)
    Ginv = np.linalg.inv(G2)
    corners = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=float) * extent
    zc = corners @ Ginv.T
    lo, hi = np.floor(zc.min(0)) - 1, np.ceil(zc.max(0)) + 1
    n = (hi - lo + 1).prod()
    if n > max_points:  # cell much smaller than the box: thin the view instead of drawing a blur
        scale = np.sqrt(n / max_points)
        lo, hi = np.floor(lo / scale), np.ceil(hi / scale)
    Z = np.stack(np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1)), -1).reshape(-1, 2)
    P = (Z + offset) @ G2.T
    keep = (np.abs(P) <= extent * 1.05).all(1)
    return P[keep], Z[keep]


def _cell_outlines(G2: np.ndarray, centers: np.ndarray):
    """Babai rounding-off cells: the parallelograms G2 ([-1/2, 1/2]^2) around each point."""
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]]) @ G2.T
    xs, ys = [], []
    for c in centers:
        xs += list(c[0] + corners[:, 0]) + [None]
        ys += list(c[1] + corners[:, 1]) + [None]
    return xs, ys


def lattice_figure(G2: np.ndarray, vectors: np.ndarray | None, title: str, offset: float = 0.0,
                   extent: float | None = None, codes: np.ndarray | None = None) -> go.Figure:
    """A 2-D lattice G2 with its Babai cells, and weight vectors (rows of ``vectors``) over it.

    ``codes`` (integer coordinates per vector) marks which lattice points the group uses.
    """
    G2 = np.asarray(G2, dtype=float)
    if vectors is not None and len(vectors):
        extent = extent or float(np.abs(vectors).max()) * 1.15
    extent = extent or float(np.abs(G2).sum()) * 3
    P, _ = lattice_points(G2, extent, offset)
    xs, ys = _cell_outlines(G2, P)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#bbbbbb", width=1),
                             name="Babai cells", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=P[:, 0], y=P[:, 1], mode="markers", name="lattice points G(z+o)",
                             marker=dict(size=6, color="#1f77b4"),
                             hovertemplate="(%{x:.3f}, %{y:.3f})<extra>lattice point</extra>"))
    if vectors is not None and len(vectors):
        V = np.asarray(vectors, dtype=float)
        fig.add_trace(go.Scatter(x=V[:, 0], y=V[:, 1], mode="markers", name="weight vectors",
                                 marker=dict(size=5, color="#d62728", opacity=0.6),
                                 hovertemplate="(%{x:.3f}, %{y:.3f})<extra>weight</extra>"))
    if codes is not None and len(codes):
        U = (np.unique(np.asarray(codes, dtype=float), axis=0) + offset) @ G2.T
        fig.add_trace(go.Scatter(x=U[:, 0], y=U[:, 1], mode="markers", name="used points",
                                 marker=dict(size=11, symbol="circle-open", color="#ff7f0e",
                                             line=dict(width=2))))
    fig.update_layout(**_LAYOUT, title=title, xaxis=dict(range=[-extent, extent], title="coord a"),
                      yaxis=dict(range=[-extent, extent], title="coord b", scaleanchor="x"),
                      legend=dict(orientation="h", y=-0.18))
    return fig


def quantized_points_figure(vectors: np.ndarray, points: np.ndarray, title: str) -> go.Figure:
    """Weight vectors (coords a, b) joined to the points their codes decode to: what a fixed
    codebook with nearest-point decoding does, drawn without cells."""
    V, P = np.asarray(vectors, dtype=float), np.asarray(points, dtype=float)
    xs, ys = [], []
    for v, p in zip(V, P):
        xs += [v[0], p[0], None]
        ys += [v[1], p[1], None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#cccccc", width=1),
                             name="quantization error", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=P[:, 0], y=P[:, 1], mode="markers", name="decoded points",
                             marker=dict(size=8, symbol="circle-open", color="#1f77b4", line=dict(width=2)),
                             hovertemplate="(%{x:.3f}, %{y:.3f})<extra>decoded point</extra>"))
    fig.add_trace(go.Scatter(x=V[:, 0], y=V[:, 1], mode="markers", name="weight vectors",
                             marker=dict(size=5, color="#d62728", opacity=0.6),
                             hovertemplate="(%{x:.3f}, %{y:.3f})<extra>weight</extra>"))
    lim = float(np.abs(np.concatenate([V, P])).max()) * 1.1 if len(V) else 1.0
    fig.update_layout(**_LAYOUT, title=title, xaxis=dict(range=[-lim, lim], title="coord a"),
                      yaxis=dict(range=[-lim, lim], title="coord b", scaleanchor="x"),
                      legend=dict(orientation="h", y=-0.18))
    return fig


def kurtosis(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float).ravel()
    v = x.var()
    return float(((x - x.mean()) ** 4).mean() / v ** 2) if v > 0 else float("nan")


def rotation_scatter(before: np.ndarray, after: np.ndarray, title: str) -> go.Figure:
    """The same weight vectors (coords a, b) before and after the rotation W' = U W Vᵀ."""
    fig = go.Figure()
    for name, M, color in (("before rotation", before, "#ff7f0e"), ("after rotation", after, "#1f77b4")):
        M = np.asarray(M, dtype=float)
        fig.add_trace(go.Scatter(x=M[:, 0], y=M[:, 1], mode="markers", name=name,
                                 marker=dict(size=5, color=color, opacity=0.55),
                                 hovertemplate="(%{x:.3f}, %{y:.3f})<extra>" + name + "</extra>"))
    fig.update_layout(**_LAYOUT, title=title, xaxis_title="coord a",
                      yaxis=dict(title="coord b", scaleanchor="x"), legend=dict(orientation="h", y=-0.18))
    return fig


def rotation_histogram(before: np.ndarray, after: np.ndarray) -> go.Figure:
    """Distribution of every coordinate before and after rotation (log counts; kurtosis in the
    legend: 3 for a Gaussian, larger with outliers)."""
    b, a = np.asarray(before, dtype=float).ravel(), np.asarray(after, dtype=float).ravel()
    lim = float(max(np.abs(b).max(), np.abs(a).max())) if len(b) else 1.0
    bins = dict(start=-lim, end=lim, size=2 * lim / 80 if lim > 0 else 0.1)
    fig = go.Figure()
    for name, x, color in (("before rotation", b, "#ff7f0e"), ("after rotation", a, "#1f77b4")):
        fig.add_trace(go.Histogram(x=x, xbins=bins, name=f"{name} (kurtosis {kurtosis(x):.1f})",
                                   marker_color=color, opacity=0.55))
    fig.update_layout(**_LAYOUT, barmode="overlay", title="Weights before and after rotation",
                      xaxis_title="normalised weight", yaxis=dict(title="count", type="log"),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def mu_law_curve(mus: dict[str, float]) -> go.Figure:
    """F(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu) on [-1, 1] for each named mu (mu <= 0: identity)."""
    x = np.linspace(-1, 1, 401)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=x, mode="lines", name="no companding",
                             line=dict(dash="dot", color="#888")))
    for name, mu in mus.items():
        y = x if mu <= 0 else np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{name} (μ={mu:.3g})"))
    fig.update_layout(**_LAYOUT, title="μ-law companding F(x)", xaxis_title="x (normalised weight)",
                      yaxis_title="F(x)")
    return fig


def matrix_heatmap(M: np.ndarray, title: str) -> go.Figure:
    """A small matrix (e.g. a generator G) as a diverging heatmap with values on hover."""
    M = np.asarray(M, dtype=float)
    lim = float(np.abs(M).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=M, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                               hovertemplate="row %{y}, col %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(**{**_LAYOUT, "height": 380}, title=title,
                      yaxis=dict(autorange="reversed", scaleanchor="x"))
    return fig


# ----------------------------------------------------------------------------------------------
# Channels (CRVQ "channels" table: layer, channel, importance, critical, rank, err_basic, err_full)
# ----------------------------------------------------------------------------------------------
def channel_importance(channels: pd.DataFrame, critical_ratio: float | None = None) -> go.Figure:
    """Importance of each input channel, sorted descending; critical channels in red, λ cut marked."""
    if channels.empty:
        return empty_figure("no channel table for this layer")
    df = channels.sort_values("importance", ascending=False).reset_index(drop=True)
    crit = df["critical"].astype(bool).to_numpy() if "critical" in df else np.zeros(len(df), bool)
    fig = go.Figure(go.Bar(
        x=np.arange(len(df)), y=df["importance"], marker_color=np.where(crit, "#d62728", "#9ecae1"),
        customdata=np.stack([df["channel"], crit], axis=1),
        hovertemplate="rank %{x}<br>channel %{customdata[0]}<br>importance %{y:.3g}"
                      "<br>critical %{customdata[1]}<extra></extra>"))
    cut = int(crit.sum())
    if cut:
        label = f"λ cut: {cut} critical" + (f" (λ={critical_ratio:g})" if critical_ratio else "")
        fig.add_vline(x=cut - 0.5, line=dict(color="#d62728", dash="dash"),
                      annotation_text=label, annotation_position="top right")
    fig.update_layout(**_LAYOUT, title="Channel importance, sorted (critical in red)",
                      xaxis_title="rank", yaxis_title="importance", yaxis_type="log", bargap=0)
    return fig


def channel_permutation(channels: pd.DataFrame) -> go.Figure:
    """The stored permutation: original channel index against its rank after sorting."""
    if channels.empty or "rank" not in channels:
        return empty_figure("no permutation for this layer")
    crit = channels["critical"].astype(bool).to_numpy() if "critical" in channels else None
    fig = go.Figure(go.Scatter(
        x=channels["channel"], y=channels["rank"], mode="markers",
        marker=dict(size=5, color=np.where(crit, "#d62728", "#1f77b4") if crit is not None else "#1f77b4"),
        hovertemplate="channel %{x} → position %{y}<extra></extra>"))
    fig.update_layout(**_LAYOUT, title="Permutation: channel → sorted position",
                      xaxis_title="original input channel", yaxis_title="position after sorting")
    return fig


def codebook_usage(codebooks: pd.DataFrame) -> go.Figure:
    """Code counts per codebook, sorted descending (a flat curve = every code is used)."""
    if codebooks.empty:
        return empty_figure("no codebook table for this layer")
    fig = go.Figure()
    for cb, df in codebooks.groupby("codebook", sort=True):
        counts = np.sort(df["count"].to_numpy(dtype=float))[::-1]
        p = counts / max(counts.sum(), 1)
        nz = p[p > 0]
        ent = float(-(nz * np.log2(nz)).sum())
        fig.add_trace(go.Scatter(x=np.arange(len(counts)), y=counts, mode="lines",
                                 name=f"codebook {cb} ({ent:.2f} of {np.log2(len(counts)):.0f} bits)"))
    fig.update_layout(**_LAYOUT, title="Codebook usage (codes sorted by count; entropy in legend)",
                      xaxis_title="code (sorted)", yaxis_title="count", yaxis_type="log")
    fig.update_yaxes(dtick=1)  # ticks at powers of ten only (plotly's "2", "5" minor labels crowd)
    return fig


def channel_error(channels: pd.DataFrame) -> go.Figure:
    """Per-channel error with the basic codebook only and with the extended codebooks, by rank."""
    if channels.empty or "err_basic" not in channels:
        return empty_figure("no per-channel errors for this layer")
    df = channels.sort_values("rank" if "rank" in channels else "channel")
    x = df["rank"] if "rank" in df else df["channel"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=df["err_basic"], mode="markers", name="basic codebook only",
                             marker=dict(size=5, color="#9ecae1")))
    if "err_full" in df:
        fig.add_trace(go.Scatter(x=x, y=df["err_full"], mode="markers", name="with extended codebooks",
                                 marker=dict(size=5, color="#d62728")))
    fig.update_layout(**_LAYOUT, title="Per-channel error, by importance rank",
                      xaxis_title="rank (0 = most important)", yaxis_title="error", yaxis_type="log")
    return fig


# ----------------------------------------------------------------------------------------------
# Compare (run table + benchmark table)
# ----------------------------------------------------------------------------------------------
def pareto_front(df: pd.DataFrame, x: str, y: str = "ppl") -> pd.DataFrame:
    """Rows not dominated by any other (smaller-or-equal x and y, one strictly smaller), by x."""
    d = df.dropna(subset=[x, y]).sort_values([x, y])
    keep, best = [], np.inf
    for idx, yv in zip(d.index, d[y]):
        if yv < best:
            keep.append(idx)
            best = yv
    return d.loc[keep]


def _seed_range(g: pd.DataFrame) -> dict | None:
    """Error bars from the median to the [min, max] over calibration seeds (benchmark rows with
    ``ppl_min``/``ppl_max``); None when no row has a range."""
    if "ppl_min" not in g or "ppl_max" not in g:
        return None
    lo = (g["ppl"] - pd.to_numeric(g["ppl_min"], errors="coerce")).clip(lower=0).fillna(0)
    hi = (pd.to_numeric(g["ppl_max"], errors="coerce") - g["ppl"]).clip(lower=0).fillna(0)
    if not (lo.gt(0).any() or hi.gt(0).any()):
        return None
    return dict(type="data", symmetric=False, array=hi.tolist(), arrayminus=lo.tolist(), thickness=1.5)


def compare_figure(df: pd.DataFrame, x: str = "bits_per_weight", ppl_fp: float | None = None,
                   log_y: bool = True) -> go.Figure:
    """Perplexity against size: one colour per method (error bars: the [min, max] over calibration
    seeds of benchmark rows), the Pareto front, and the fp reference."""
    d = df.dropna(subset=[x, "ppl"]) if not df.empty else df
    if d.empty:
        return empty_figure("no runs with a perplexity yet: quantize a model or run `make bench`")
    fig = go.Figure()
    for method, g in d.groupby(d["method"].astype(str), sort=True):
        labels = g["label"].astype(str) if "label" in g else g.index.astype(str)
        fig.add_trace(go.Scatter(
            x=g[x], y=g["ppl"], mode="markers", name=method, error_y=_seed_range(g),
            marker=dict(size=10, color=METHOD_COLORS.get(method.lower())),
            text=labels, hovertemplate="%{text}<br>" + x + " %{x:.3f}<br>ppl %{y:.2f}<extra>"
                                       + method + "</extra>"))
    front = pareto_front(d, x)
    fig.add_trace(go.Scatter(x=front[x], y=front["ppl"], mode="lines", name="Pareto front",
                             line=dict(color="#333", dash="dash", shape="hv"), hoverinfo="skip"))
    return _size_axes(fig, x, ppl_fp, log_y, "Perplexity vs size (lower-left is better)")


def _size_axes(fig: go.Figure, x: str, ppl_fp: float | None, log_y: bool, title: str) -> go.Figure:
    """The fp reference line with its label, axis titles and scales of a perplexity-vs-size plot."""
    if ppl_fp is not None and np.isfinite(ppl_fp):
        fig.add_hline(y=ppl_fp, line=dict(color="#444", dash="dot"))
        # Annotations on a log axis take log10(y) (shapes take y): the label must not stretch the axis.
        fig.add_annotation(x=1, xref="paper", xanchor="right", yanchor="top", showarrow=False,
                           y=float(np.log10(ppl_fp)) if log_y else ppl_fp, text=f"fp32 {ppl_fp:.2f}")
    titles = {"bits_per_weight": "bits per weight (all overhead counted)", "model_mb": "model size (MB)"}
    fig.update_layout(**{**_LAYOUT, "height": 480}, title=title, xaxis_title=titles.get(x, x),
                      yaxis_title="perplexity", yaxis_type="log" if log_y else "linear")
    return fig


# ----------------------------------------------------------------------------------------------
# Compare, grouped by sweep (runs carry "sweep" = name and "swept" = JSON {setting: value})
# ----------------------------------------------------------------------------------------------
def _swept_key(v) -> tuple:
    """Sort key for swept values: numbers by value, then anything else by its text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, json.dumps(v))


def sweep_series(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One (label, rows) line per sweep in ``df`` (columns ``sweep``, ``swept``; rows without a
    sweep are left out), its points sorted by the sweep's first setting that varies. With several
    varying settings, one line per value of the others, labelled ``name · k=v, ...``."""
    if df.empty or "sweep" not in df:
        return []
    d = df[df["sweep"].fillna("").astype(str) != ""]
    out = []
    for name, g in d.groupby(d["sweep"].astype(str), sort=True):
        points = [json.loads(s) if isinstance(s, str) and s else {} for s in g.get("swept", [""] * len(g))]
        keys = list(dict.fromkeys(k for p in points for k in p))
        varying = [k for k in keys if len({json.dumps(p.get(k)) for p in points}) > 1]
        along, split = (varying[0], varying[1:]) if varying else (None, [])
        g = g.assign(_along=[_swept_key(p.get(along)) for p in points],
                     _split=[json.dumps([p.get(k) for k in split]) for p in points])
        parts = sorted(g.groupby("_split", sort=False),
                       key=lambda kv: [_swept_key(v) for v in json.loads(kv[0])])
        for part, rows in parts:
            label = name if not split else name + " · " + ", ".join(
                f"{k}={v}" for k, v in zip(split, json.loads(part)))
            out.append((label, rows.sort_values("_along").drop(columns=["_along", "_split"])))
    return out


def sweep_figure(df: pd.DataFrame, x: str = "bits_per_weight", ppl_fp: float | None = None,
                 log_y: bool = True) -> go.Figure:
    """Perplexity against size with each sweep as one line through its points (in the order of
    the swept setting); runs outside any sweep as grey markers; the fp reference."""
    d = df.dropna(subset=[x, "ppl"]) if not df.empty else df
    if d.empty:
        return empty_figure("no runs with a perplexity yet: run `python -m lvq sweep ...`")
    fig = go.Figure()
    lone = d[d["sweep"].fillna("").astype(str) == ""] if "sweep" in d else d
    if len(lone):
        labels = lone["label"].astype(str) if "label" in lone else lone.index.astype(str)
        fig.add_trace(go.Scatter(x=lone[x], y=lone["ppl"], mode="markers", name="not in a sweep",
                                 marker=dict(size=8, color="#bbbbbb"), text=labels,
                                 hovertemplate="%{text}<br>" + x + " %{x:.3f}<br>ppl %{y:.2f}<extra></extra>"))
    for label, rows in sweep_series(d):
        text = [f"{r}<br>{s}" for r, s in zip(rows.get("label", rows.index).astype(str), rows["swept"])]
        fig.add_trace(go.Scatter(x=rows[x], y=rows["ppl"], mode="lines+markers", name=label, text=text,
                                 marker=dict(size=9),
                                 hovertemplate="%{text}<br>" + x + " %{x:.3f}<br>ppl %{y:.2f}<extra></extra>"))
    return _size_axes(fig, x, ppl_fp, log_y, "Perplexity vs size, one line per sweep")
