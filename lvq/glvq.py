"""GLVQ: learning grouped lattice vector quantizers (Zhang et al., NeurIPS 2025).

The math for one layer W [out, in] with input second moment H [in, in] (None = identity):

1. Column groups of ``group_size`` inputs spanning all rows (the last one may be partial). Each
   group g gets a width b_g from salience-driven bit allocation (lvq/bitalloc.py, paper §3.4).
2. Normalise: X_g = W_g / s_g with s_g [out, 1] the row-wise max |W_g| (stored in fp16).
3. Compand: Y_g = F_μg(X_g), the mu-law of lvq/companding.py (paper §3.3, eq. for F and F⁻¹).
4. Cut each row of Y_g into length-d vectors, V [ℓ, d] with ℓ = out·n_g/d.
5. Babai rounding-off with the group's generator (paper §3.2, lvq/lattice.py):
       Z = clamp(round(G_g⁻¹ v − ½), −2^{b−1}, 2^{b−1}−1),   v̂ = G_g (z + ½)
   with G_g = Δ_{b_g} · Ĝ_g, Ĝ_g the stored unit generator and Δ_b the Gaussian-optimal uniform
   step for b bits (a fixed table, not stored).
6. Learning (paper Algorithm 1): alternate the Babai encoding (G, μ fixed) with Adam steps on G
   and μ through the decode path for

       L(G, μ) = tr((W_g − Ŵ_g) H_g (W_g − Ŵ_g)ᵀ) / L₀  +  λ ‖G − G₀‖²_F / ‖G₀‖²_F,
       Ŵ_g = s_g · F⁻¹_μ(G (Z + ½)),

   where L₀ is the objective at initialisation; after each step the singular values of G are
   projected into [lo·σ_i(G₀), hi·σ_i(G₀)] (cfg.sv_band) and μ into [mu_min, mu_max]. No
   straight-through estimator: Z is recomputed at every step and held fixed for the gradient.
   The best (G, μ) seen is kept; learning stops after cfg.steps or when the best objective has
   not improved by a relative cfg.tol for cfg.patience steps.
7. Error feedback (optional, our addition; docs/algorithms.md shows it matters). With U the
   upper Cholesky factor of the damped H⁻¹, GPTQ's OBS update moves quantization error onto the
   columns not yet quantized. feedback_unit="vector" (default): the group is encoded one d-column
   slice at a time, E_j = (W_j − Ŵ_j) U_jj⁻¹ and W[:, later] −= E_j U[j, later]; learning (6)
   then scores Σ_j ‖E_j‖² (the targets each slice saw are held fixed for the gradient, like Z).
   feedback_unit="group": joint Babai per group in the metric (U_ggᵀU_gg)⁻¹ (the Schur
   complement), then one update of the later groups. Without feedback H_g = H[g, g].

Our decisions where the paper is silent: docs/algorithms.md, "GLVQ". The stored form and its
decoder are in lvq/glvq_weight.py, the per-group learner in lvq/glvq_learn.py.

Stored per layer (every bit counted in ``bit_breakdown``): codes packed at b_g bits per weight
(one uint8 buffer per width class), the unit generators Ĝ (fp16 [n_lattices, d, d], or one fp16
scale per lattice for the standard lattices Z/D/E8), μ (fp16, one per group or one per layer; 0 =
no companding), the scales s (fp16 [out, n_groups]) and a 3-bit width tag per group.
"""
from __future__ import annotations

from typing import Any

import torch

from .bitalloc import allocate_bits, code_bits
from .companding import compress, kurtosis
from .config import GLVQConfig
from .glvq_learn import (curve_rows, encode_vectorwise, eval_group, init_params, learn, make_group,
                         slice_metric, to_fp16)
from .glvq_weight import WIDTH_TAG_BITS, Codec, GLVQWeight, decode_group
from .groups import group_bounds
from .hessian import inverse_hessian_cholesky, layer_objective, objective
from .packing import pack
from .qweight import Method


def _check_shapes(W: torch.Tensor, cfg: GLVQConfig) -> list[tuple[int, int]]:
    if W.dim() != 2:
        raise ValueError(f"W must be [out, in], got shape {tuple(W.shape)}")
    bounds = group_bounds(W.shape[1], cfg.group_size)
    last = bounds[-1][1] - bounds[-1][0]
    if last % cfg.dim:
        raise ValueError(
            f"in_features={W.shape[1]} leaves a last group of {last} columns, which dim={cfg.dim} "
            f"does not divide; pick a dim that divides {last} or a group size that divides "
            f"{W.shape[1]}")
    return bounds


def quantize_glvq(W: torch.Tensor, H: torch.Tensor | None, cfg: GLVQConfig) -> GLVQWeight:
    """GLVQ for one layer. W: [out, in]; H: [in, in] = XᵀX/n or None (plain MSE)."""
    bounds = _check_shapes(W, cfg)
    W = W.detach().to(torch.float32)
    out_f, in_f = W.shape
    dev = W.device
    n_groups = len(bounds)
    codec = Codec(cfg.lattice, cfg.decoder, cfg.dim)
    Hf = None if H is None else H.detach().to(device=dev, dtype=torch.float32)

    alloc = allocate_bits(W, H, bounds, float(cfg.bits), search=cfg.bit_allocation, damp=cfg.damp)
    widths = alloc.widths
    lat_idx = [0] * n_groups if cfg.shared_lattice else list(range(n_groups))
    mu_idx = [0] * n_groups if cfg.shared_companding else list(range(n_groups))

    feedback = cfg.error_feedback and H is not None
    if feedback:
        U, _ = inverse_hessian_cholesky(H.to(dev), cfg.damp)
        U = U.to(torch.float32)

    curve: list[dict[str, Any]] = []
    if cfg.shared_lattice or cfg.shared_companding:
        # Phase A: tied parameters learned jointly on the original weights with metrics H[g, g].
        groups0 = [make_group(W[:, a:b], None if Hf is None else Hf[a:b, a:b], w)
                   for (a, b), w in zip(bounds, widths)]
        P_shared, _ = init_params(groups0, lat_idx, mu_idx, cfg, codec)
        _, curves = learn(groups0, P_shared, codec, cfg, learn_lattice=True, learn_mu=True)
        curve += curve_rows(curves, "joint")
        del groups0

    W_work = W.clone()
    lattice_out: list[torch.Tensor] = [torch.empty(0)] * (max(lat_idx) + 1)
    mu_out: list[float] = [0.0] * (max(mu_idx) + 1)
    codes_by_width: dict[int, list[torch.Tensor]] = {}
    W_hat = torch.empty_like(W)
    group_stats, curves_b, scale_cols = [], [], []
    vectorwise = feedback and cfg.feedback_unit == "vector"
    for g, (a, b) in enumerate(bounds):
        Wg = W_work[:, a:b]
        if vectorwise:
            Hm = slice_metric(U[a:b, a:b], cfg.dim)
        elif feedback:
            M = torch.linalg.solve_triangular(U[a:b, a:b], torch.eye(b - a, device=dev), upper=True)
            Hm = M @ M.T
        else:
            Hm = None if Hf is None else Hf[a:b, a:b]
        grp = make_group(Wg, Hm, widths[g], U[a:b, a:b] if vectorwise else None)
        P, err0 = init_params([grp], [0], [0], cfg, codec)
        if cfg.shared_lattice:
            P.lattice, P.lattice0 = [P_shared.lattice[0]], [P_shared.lattice[0]]
            err0 = [eval_group(grp, P, codec)]
        if cfg.shared_companding:
            P.log_mu = [P_shared.log_mu[0]]
            err0 = [eval_group(grp, P, codec)]
        if cfg.steps:
            _, curves = learn([grp], P, codec, cfg, learn_lattice=not cfg.shared_lattice,
                              learn_mu=not cfg.shared_companding)
        else:  # nothing to learn: G₀ and μ₀ as initialised (learn() would only re-score them)
            curves = [[err0[0]]]
        curves_b.append(curves[0])
        # Round what is stored to fp16, re-encode with exactly those values, decode as storage does.
        lat16 = to_fp16(P.lattice[0])
        mu16 = None if P.log_mu[0] is None else to_fp16(torch.exp(P.log_mu[0]))
        gen = codec.generator(lat16, widths[g])
        with torch.no_grad():
            Wg = Wg.clone()
            if vectorwise:
                codes, Wq, err1, _ = encode_vectorwise(W_work[:, a:], b - a, grp.s, gen, mu16,
                                                       codec, widths[g], U[a:, a:])
            else:
                Y = grp.X if mu16 is None else compress(grp.X, mu16)
                codes = codec.encode(Y.reshape(-1, cfg.dim), gen, widths[g]).reshape(out_f, b - a)
                Wq = decode_group(codes, widths[g], gen, mu16, grp.s, codec)
                if feedback and b < in_f:
                    W_work[:, b:] -= ((Wg - Wq) @ M) @ U[a:b, b:]
                err1 = float(objective(Wg - Wq, Hm))
        codes_by_width.setdefault(widths[g], []).append(codes.reshape(-1))
        lattice_out[lat_idx[g]] = lat16
        mu_out[mu_idx[g]] = 0.0 if mu16 is None else float(mu16)
        W_hat[:, a:b] = Wq
        scale_cols.append(grp.s[:, 0])
        group_stats.append({
            "group": g, "col_start": a, "col_stop": b, "bits": widths[g],
            "salience": alloc.salience[g], "mu": mu_out[mu_idx[g]],
            "kurtosis": kurtosis(grp.X), "scale_mean": float(grp.s.mean()),
            "scale_max": float(grp.s.max()), "err_before": err0[0], "err_after": err1,
            "steps": len(curves[0]) - 1,
            "lattice_cond": float(torch.linalg.cond(gen)) if gen.dim() == 2 else 1.0,
        })
    if any(len(c) > 1 for c in curves_b):
        curve += curve_rows(curves_b, "groups")

    lattice_params = torch.stack(lattice_out).to(torch.float16)
    diagnostics = {
        "alloc_moved": alloc.moved,
        "objective_init": sum(s["err_before"] for s in group_stats),
        "objective": sum(s["err_after"] for s in group_stats),
        "layer_objective": layer_objective(W, W_hat, H), "group_stats": group_stats,
        "curve": curve,
    }
    return GLVQWeight(
        codes=tuple(pack(torch.cat(cs), w) for w, cs in sorted(codes_by_width.items())),
        scales=torch.stack(scale_cols, 1).to(torch.float16),
        lattice_params=lattice_params if codec.learned else lattice_params.reshape(-1),
        mu=torch.tensor(mu_out, dtype=torch.float16, device=dev) if cfg.companding else None,
        widths=tuple(widths), lattice_index=tuple(lat_idx), mu_index=tuple(mu_idx),
        group_size=cfg.group_size, dim=cfg.dim, lattice=cfg.lattice, decoder=cfg.decoder,
        out_features=out_f, in_features=in_f, diagnostics=diagnostics)


def estimate_bits(out_features: int, in_features: int, cfg: GLVQConfig) -> float:
    """Bits per weight of a GLVQ layer from shapes alone (equals ``bits_per_weight()``):
    codes Σ_g b_g·n_g·out (moves of the allocation keep the sum) + fp16 scales out·n_groups +
    fp16 generators (d² each, or 1 scale for Z/D/E8) + fp16 μ + 3-bit width tags."""
    bounds = group_bounds(in_features, cfg.group_size)
    n = len(bounds)
    codes = out_features * code_bits([b - a for a, b in bounds], float(cfg.bits))
    n_lat = 1 if cfg.shared_lattice else n
    per_lat = cfg.dim * cfg.dim if cfg.lattice == "learned" else 1
    n_mu = (1 if cfg.shared_companding else n) if cfg.companding else 0
    total = codes + 16 * out_features * n + 16 * n_lat * per_lat + 16 * n_mu + WIDTH_TAG_BITS * n
    return total / (out_features * in_features)


METHODS = [
    Method("glvq", GLVQConfig, quantize_glvq, GLVQWeight,
           "GLVQ: learned lattice per column group, mu-law companding, salience bit allocation",
           estimate_bits=estimate_bits),
]
