"""Learn page: the ideas behind the methods, each with a small live figure on toy 2-D data.

Every figure is a pure function of its slider values (numpy, milliseconds), so the page responds
at once; the lattice geometry comes from ``lvq.lattice`` and the companding from the same
formula as ``lvq.companding``.
"""
from __future__ import annotations

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

from lvq.lattice import GAUSS_UNIFORM_STEP, babai_cell, lattice_points_in_window, voronoi_cell

from . import Page, texts

_L = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=380)


def _generator(angle_deg: float, ratio: float) -> np.ndarray:
    """2-D generator with unit first column, second column at ``angle`` and length ``ratio``,
    rescaled to det 1 (same density for every shape)."""
    a = np.deg2rad(angle_deg)
    G = np.array([[1.0, ratio * np.cos(a)], [0.0, ratio * np.sin(a)]])
    return G / np.sqrt(abs(np.linalg.det(G)))


def _nearest(G: np.ndarray, X: np.ndarray, radius: int = 3) -> np.ndarray:
    """Exact nearest lattice point G z to each row of X (search around the Babai point)."""
    Ginv = np.linalg.inv(G)
    base = np.round(X @ Ginv.T)
    r = np.arange(-radius, radius + 1)
    offs = np.stack(np.meshgrid(r, r), -1).reshape(-1, 2)
    cand = (base[:, None, :] + offs[None]) @ G.T                       # (n, k, 2)
    best = ((cand - X[:, None]) ** 2).sum(-1).argmin(1)
    return cand[np.arange(len(X)), best]


def _babai(G: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.round(X @ np.linalg.inv(G).T) @ G.T


def _polygon(fig: go.Figure, P: np.ndarray, name: str, color: str) -> None:
    fig.add_trace(go.Scatter(x=P[:, 0], y=P[:, 1], mode="lines", name=name, line=dict(color=color, width=2)))


def lattice_figure(angle: float, ratio: float, rho: float) -> go.Figure:

    G = _generator(angle, ratio)
    Gt = torch.tensor(G)
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 400) * 0.9
    P = lattice_points_in_window(Gt, (-3, 3), (-3, 3), offset=0.0).numpy()
    mse = float(((_nearest(G, X) - X) ** 2).mean())
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=X[:, 0], y=X[:, 1], mode="markers", name="correlated data",
                             marker=dict(size=4, color="#d62728", opacity=0.35)))
    fig.add_trace(go.Scatter(x=P[:, 0], y=P[:, 1], mode="markers", name="lattice points",
                             marker=dict(size=7, color="#1f77b4")))
    _polygon(fig, voronoi_cell(Gt).numpy(), "Voronoi cell", "#2ca02c")
    _polygon(fig, babai_cell(Gt).numpy(), "Babai cell", "#ff7f0e")
    fig.update_layout(**_L, title=f"det G = 1 · nearest-point MSE on the data {mse:.4f}",
                      xaxis=dict(range=[-3, 3]), yaxis=dict(range=[-3, 3], scaleanchor="x"))
    return fig


def babai_figure(skew: float, tx: float, ty: float) -> go.Figure:
    G = _generator(90 - skew, 1.0)
    g = np.linspace(-2, 2, 81)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    wrong = np.abs(_babai(G, grid) - _nearest(G, grid)).sum(1) > 1e-9
    t = np.array([[tx, ty]])
    b, n = _babai(G, t)[0], _nearest(G, t)[0]
    P = _nearest(G, grid)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=grid[wrong, 0], y=grid[wrong, 1], mode="markers", name="Babai ≠ nearest",
                             marker=dict(size=4, color="#f4a6a6")))
    fig.add_trace(go.Scatter(x=P[:, 0], y=P[:, 1], mode="markers", name="lattice points",
                             marker=dict(size=8, color="#1f77b4")))
    fig.add_trace(go.Scatter(x=[tx], y=[ty], mode="markers", name="target w",
                             marker=dict(size=12, symbol="x", color="black")))
    fig.add_trace(go.Scatter(x=[tx, b[0]], y=[ty, b[1]], mode="lines+markers", name="Babai pick",
                             line=dict(color="#ff7f0e"), marker=dict(size=10)))
    fig.add_trace(go.Scatter(x=[tx, n[0]], y=[ty, n[1]], mode="lines+markers", name="nearest point",
                             line=dict(color="#2ca02c", dash="dot"), marker=dict(size=10)))
    fig.update_layout(**_L, title=f"Babai disagrees with the nearest point on {wrong.mean():.0%} of the square",
                      xaxis=dict(range=[-2, 2]), yaxis=dict(range=[-2, 2], scaleanchor="x"))
    return fig


def _source(kind: str, n: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = {"Gaussian": rng.standard_normal, "Laplace": lambda k: rng.laplace(size=k),
         "Student-t (3)": lambda k: rng.standard_t(3, size=k)}[kind](n)
    return x / np.abs(x).max()


def _compand_quantize(x: np.ndarray, mu: float, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform 2^bits levels on F(x) in [-1, 1] (mid-rise), mapped back; returns (x̂, levels)."""
    F = (lambda v: v) if mu <= 0 else (lambda v: np.sign(v) * np.log1p(mu * np.abs(v)) / np.log1p(mu))
    Fi = (lambda v: v) if mu <= 0 else (lambda v: np.sign(v) * np.expm1(np.abs(v) * np.log1p(mu)) / mu)
    n = 2 ** bits
    step = 2.0 / n
    y = np.clip(np.floor(F(x) / step), -n // 2, n // 2 - 1)
    levels = Fi((np.arange(-n // 2, n // 2) + 0.5) * step)
    return Fi((y + 0.5) * step), levels


def companding_figure(mu: float, bits: int, source: str) -> go.Figure:
    x = _source(source)
    xq, levels = _compand_quantize(x, mu, int(bits))
    xu, _ = _compand_quantize(x, 0.0, int(bits))
    mse, mse_u = float(((x - xq) ** 2).mean()), float(((x - xu) ** 2).mean())
    fig = go.Figure(go.Histogram(x=x, nbinsx=120, name=f"{source} weights (÷ max)",
                                 marker_color="#9ecae1"))
    for lv in levels:
        fig.add_vline(x=float(lv), line=dict(color="#d62728", width=1))
    fig.update_layout(**_L, title=f"{2 ** int(bits)} levels (red) · MSE with μ={mu:g}: {mse:.2e} · "
                                  f"uniform: {mse_u:.2e}", xaxis_title="x", bargap=0)
    return fig


def _kmeans(X: np.ndarray, k: int, iters: int = 15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = X[rng.choice(len(X), k, replace=False)]
    for _ in range(iters):
        a = ((X[:, None] - C[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (a == j).any():
                C[j] = X[a == j].mean(0)
    return C


def additive_codebooks(X: np.ndarray, m: int, k: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Greedy residual k-means: M codebooks of K entries; returns (codebooks, reconstruction)."""
    R, books, Xh = X.copy(), [], np.zeros_like(X)
    for i in range(m):
        C = _kmeans(R, k, seed=i)
        a = ((R[:, None] - C[None]) ** 2).sum(-1).argmin(1)
        books.append(C)
        Xh += C[a]
        R = X - Xh
    return books, Xh


def additive_figure(m: int, k: int) -> go.Figure:
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(c, 0.35, (150, 2)) for c in ([-1.5, 0], [1.2, 1.0], [0.5, -1.4])])
    books, Xh = additive_codebooks(X, int(m), int(k))
    sums = books[0]
    for C in books[1:]:
        sums = (sums[:, None] + C[None]).reshape(-1, 2)
        if len(sums) > 4096:
            sums = sums[:4096]
    mse = float(((X - Xh) ** 2).mean())
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=X[:, 0], y=X[:, 1], mode="markers", name="vectors",
                             marker=dict(size=4, color="#9ecae1")))
    fig.add_trace(go.Scatter(x=sums[:, 0], y=sums[:, 1], mode="markers", name="reachable sums",
                             marker=dict(size=5, color="#d62728", symbol="diamond")))
    fig.update_layout(**_L, title=f"M={int(m)} codebooks × K={int(k)}: {int(m) * np.log2(k):.0f} bits/vector, "
                                  f"MSE {mse:.4f}", yaxis=dict(scaleanchor="x"))
    return fig


def critical_figure(outlier: float, ratio: float) -> go.Figure:
    rng = np.random.default_rng(3)
    W = rng.standard_normal((32, 128))
    hot = rng.choice(128, 4, replace=False)
    W[:, hot] *= outlier
    step = np.abs(W).max() / 4                               # coarse 3-bit-ish grid for the basic code
    R = W - np.round(W / step) * step
    imp = (R ** 2).mean(0)
    order = np.argsort(-imp)
    n_crit = int(np.floor(ratio * 128))
    fine = R.copy()
    crit = order[:n_crit]
    fine[:, crit] = R[:, crit] - np.round(R[:, crit] / (step / 8)) * (step / 8)  # extra codebook
    base_err, full_err = float((R ** 2).sum()), float((fine ** 2).sum())
    colors = np.where(np.isin(order, crit), "#d62728", "#9ecae1")
    fig = go.Figure(go.Bar(x=np.arange(128), y=imp[order], marker_color=colors))
    if n_crit:
        fig.add_vline(x=n_crit - 0.5, line=dict(color="#d62728", dash="dash"))
    extra = 3 * n_crit / 128
    fig.update_layout(**_L, title=f"error {base_err:.0f} → {full_err:.0f} with {n_crit} critical channels "
                                  f"(+{extra:.2f} bits/weight)",
                      xaxis_title="channel rank", yaxis_title="importance", yaxis_type="log", bargap=0)
    return fig


def bound_figure(rate: float) -> go.Figure:

    R = np.linspace(0.25, 4, 200)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=R, y=2.0 ** (-2 * R), mode="lines", name="bound D(R) = 2^(−2R)",
                             line=dict(color="#333")))
    rng = np.random.default_rng(4)
    x = rng.standard_normal(200_000)
    uni = []
    for b, s in GAUSS_UNIFORM_STEP.items():
        if b > 4:
            break
        n = 2 ** b
        q = (np.clip(np.floor(x / s), -n // 2, n // 2 - 1) + 0.5) * s
        uni.append((b, float(((x - q) ** 2).mean())))
    fig.add_trace(go.Scatter(x=[u[0] for u in uni], y=[u[1] for u in uni], mode="lines+markers",
                             name="uniform scalar (best step)", line=dict(color="#8c8c8c")))
    fig.add_trace(go.Scatter(x=[1, 2, 3], y=[0.3634, 0.1175, 0.0346], mode="markers", name="Lloyd–Max",
                             marker=dict(size=9, color="#1f77b4")))
    fig.add_trace(go.Scatter(x=[2, 2], y=[0.0906, 0.068], mode="markers+text", name="E8 / trellis (QTIP)",
                             text=["E8", "QTIP"], textposition="middle right",
                             marker=dict(size=10, color="#d62728", symbol="diamond")))
    d = 2.0 ** (-2 * rate)
    fig.add_trace(go.Scatter(x=[rate], y=[d], mode="markers", name=f"R = {rate:g}",
                             marker=dict(size=14, color="#ff7f0e", symbol="star")))
    fig.update_layout(**_L, title=f"At R = {rate:g} bits: D ≥ {d:.4f} (SNR ≤ {10 * np.log10(1 / d):.2f} dB)",
                      xaxis_title="bits per dimension R", yaxis_title="MSE per dimension", yaxis_type="log")
    return fig


SECTIONS = [
    ("lattice", lattice_figure, [("angle between basis vectors (°)", 20, 90, 60, 1),
                                 ("length ratio", 0.4, 2.5, 1.0, 0.05), ("data correlation ρ", -0.95, 0.95, 0.7, 0.05)]),
    ("babai", babai_figure, [("skew (°)", 0, 70, 45, 1), ("target x", -1.9, 1.9, 0.6, 0.05),
                             ("target y", -1.9, 1.9, 0.35, 0.05)]),
    ("companding", companding_figure, [("μ (0 = none)", 0, 255, 10, 1), ("bits", 1, 4, 2, 1)]),
    ("additive", additive_figure, [("codebooks M", 1, 4, 2, 1), ("entries per codebook K", 2, 16, 4, 1)]),
    ("critical", critical_figure, [("outlier strength", 1, 20, 8, 0.5), ("critical ratio λ", 0, 0.25, 0.03, 0.01)]),
    ("bound", bound_figure, [("rate R (bits per dimension)", 0.5, 4, 2, 0.25)]),
]


def build(client=None) -> Page:
    """``client`` (the visitor id) is unused: this page shows no runs."""
    plots = []
    for key, fn, sliders in SECTIONS:
        with gr.Column(elem_classes=["learn-section"]):
            gr.Markdown(texts.LEARN[key])
            with gr.Row():
                with gr.Column(scale=1):
                    controls = [gr.Slider(lo, hi, value=v, step=s, label=label) for label, lo, hi, v, s in sliders]
                    if key == "companding":
                        controls.append(gr.Radio(["Gaussian", "Laplace", "Student-t (3)"], value="Student-t (3)",
                                                 label="weight distribution"))
                with gr.Column(scale=3):
                    plot = gr.Plot(label=key, elem_id=f"learn-{key}")
        gr.on([c.change for c in controls], fn, controls, plot, trigger_mode="always_last",
              show_progress="hidden", api_name=False, queue=False)
        plots.append((fn, controls, plot))

    def load():
        return tuple(fn(*[c.value for c in controls]) for fn, controls, _ in plots)

    return Page(load=load, load_outputs=[p for _, _, p in plots])

