"""GLVQ's per-group learning: the group problem, Algorithm 1, initialisation, and the encoding
with vector-wise error feedback (docs/algorithms.md, "GLVQ").

For one column group with target W_g [out, n], row scales s [out, 1] and metric Hm [n, n]:

    L(G, μ) = tr((W_g − Ŵ_g) Hm (W_g − Ŵ_g)ᵀ),     Ŵ_g = s · F⁻¹_μ(decode(encode(F_μ(W_g / s))))

``learn`` alternates the encoding (G, μ fixed; no gradient) with Adam steps on G and ln μ through
the decode path (the paper's Algorithm 1, no straight-through estimator), keeps the best
parameters seen, and stops early. ``encode_vectorwise`` is GPTQ's OBS update over d-column
slices (our addition; the ablation in BENCHMARKS.md shows GLVQ collapses without it).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import lattice as lat
from .companding import compress, init_mu
from .config import GLVQConfig
from .glvq_weight import Codec, decode_group
from .hessian import objective

SCALE_SEARCH = (0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5)  # multiples of G₀ tried at init
SCALE_SAMPLE = 8192  # vectors per group the nearest-point decoder's scale search scores


# ----------------------------------------------------------------------------------------------
# One group's problem and the learner (Algorithm 1)
# ----------------------------------------------------------------------------------------------
@dataclass
class Group:
    """W [out, n] target, s [out, 1] fp16-exact scales, X = W / s, Hm [n, n] metric or None."""

    W: torch.Tensor
    s: torch.Tensor
    X: torch.Tensor
    Hm: torch.Tensor | None
    bits: int
    Ub: torch.Tensor | None = None  # U[g, g] when encoding slice by slice with feedback


def make_group(Wg: torch.Tensor, Hm: torch.Tensor | None, bits: int,
                Ub: torch.Tensor | None = None) -> Group:
    s = Wg.abs().amax(dim=1, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s)).clamp(max=65504.0)
    s = s.to(torch.float16).to(Wg.dtype).clamp_min(2.0**-24)
    return Group(W=Wg, s=s, X=Wg / s, Hm=Hm, bits=bits, Ub=Ub)


def group_objective(grp: Group, gen: torch.Tensor, mu: torch.Tensor | None, codec: Codec
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, codes). The encoding step runs under no_grad: joint Babai/nearest encoding of
    the group, or — with vector-wise feedback (grp.Ub set) — the slice-by-slice encoding, which
    also yields each slice's feedback-updated target T_j. The decode (with gradients) is then
    scored against those targets: tr((T − Ŵ) Hm (T − Ŵ)ᵀ), which equals the sequential cost
    Σ_j ‖E_j‖² at the current parameters (targets held fixed for the gradient, like the codes)."""
    with torch.no_grad():
        if grp.Ub is None:
            Y = grp.X if mu is None else compress(grp.X, mu.detach())
            U = codec.encode(Y.reshape(-1, codec.d), gen.detach(), grp.bits)
            T = grp.W
        else:
            mu_d = None if mu is None else mu.detach()
            U, _, _, T = encode_vectorwise(grp.W.clone(), grp.W.shape[1], grp.s, gen.detach(),
                                            mu_d, codec, grp.bits, grp.Ub)
    W_hat = decode_group(U.reshape(grp.X.shape), grp.bits, gen, mu, grp.s, codec)
    return objective(T - W_hat, grp.Hm), U


@dataclass
class Params:
    """Learnable state. lattice[j]: unit generator [d, d] (learned) or unit scale [] (standard);
    log_mu[k]: ln μ or None (no companding); lat_idx / mu_idx map groups to slots."""

    lattice: list[torch.Tensor]
    log_mu: list[torch.Tensor | None]
    lat_idx: list[int]
    mu_idx: list[int]
    lattice0: list[torch.Tensor] = field(default_factory=list)

    def mu(self, g: int) -> torch.Tensor | None:
        lm = self.log_mu[self.mu_idx[g]]
        return None if lm is None else torch.exp(lm)

    def snapshot(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        return ([p.detach().clone() for p in self.lattice],
                [None if m is None else m.detach().clone() for m in self.log_mu])


def learn(groups: list[Group], P: Params, codec: Codec, cfg: GLVQConfig,
           learn_lattice: bool, learn_mu: bool) -> tuple[list[float], list[list[float]]]:
    """Algorithm 1 on ``groups`` jointly (tied slots share parameters). Updates P in place to the
    best parameters seen. Returns (per-group objective at the best step, per-group curves of the
    best-so-far objective, one value per step)."""
    lat_params = [p.requires_grad_(learn_lattice) for p in P.lattice]
    mu_params = [m.requires_grad_(learn_mu) for m in P.log_mu if m is not None]
    opt_groups = []
    if learn_lattice:
        for p, p0 in zip(lat_params, P.lattice0):
            scale = float(p0.pow(2).mean().sqrt()) if codec.learned else float(p0)
            opt_groups.append({"params": [p], "lr": cfg.lr * max(scale, 1e-12)})
    if learn_mu and mu_params:
        opt_groups.append({"params": mu_params, "lr": cfg.lr_log})
    steps = cfg.steps if opt_groups else 0
    opt = torch.optim.Adam(opt_groups) if opt_groups else None
    sv0 = [torch.linalg.svdvals(p0) for p0 in P.lattice0] if codec.learned else []
    g0_norm = [float(p0.pow(2).sum()) for p0 in P.lattice0]
    lo_mu, hi_mu = math.log(cfg.mu_min), math.log(cfg.mu_max)

    best_total, best_objs, best_state = math.inf, [], P.snapshot()
    curves: list[list[float]] = [[] for _ in groups]
    norm, since_best = None, 0
    for t in range(steps + 1):
        objs = []
        for g, grp in enumerate(groups):
            gen = codec.generator(P.lattice[P.lat_idx[g]], grp.bits)
            obj, _ = group_objective(grp, gen, P.mu(g), codec)
            objs.append(obj)
        total = float(sum(o.detach() for o in objs))
        if norm is None:
            norm = max(total, 1e-30)
        if total < best_total * (1 - cfg.tol):
            since_best = 0
        else:
            since_best += 1
        if total < best_total:
            best_total, best_objs, best_state = total, [float(o.detach()) for o in objs], P.snapshot()
        for g in range(len(groups)):
            curves[g].append(best_objs[g])
        if t == steps or since_best >= cfg.patience:
            break
        loss = sum(objs) / norm
        if learn_lattice and codec.learned and cfg.lattice_reg > 0:
            loss = loss + cfg.lattice_reg * sum((p - p0).pow(2).sum() / n0 for p, p0, n0
                                                in zip(P.lattice, P.lattice0, g0_norm))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if learn_lattice and codec.learned:
                for p, s0 in zip(P.lattice, sv0):
                    p.copy_(lat.clamp_singular_values(p, s0, cfg.sv_band))
            for m in mu_params:
                m.clamp_(lo_mu, hi_mu)
    lat_best, mu_best = best_state
    P.lattice = [p.detach() for p in lat_best]
    P.log_mu = [None if m is None else m.detach() for m in mu_best]
    return best_objs, curves


# ----------------------------------------------------------------------------------------------
# Initialisation: μ₀ by kurtosis (or none), G₀ by Cholesky, then a scale search
# ----------------------------------------------------------------------------------------------
def unit_lattice(groups: list[Group], mus: list[torch.Tensor | None], codec: Codec) -> torch.Tensor:
    """G₀ for a slot: Cholesky of the pooled companded vectors (learned) or their RMS (standard)."""
    Ys = [g.X if m is None else compress(g.X, m) for g, m in zip(groups, mus)]
    V = torch.cat([Y.reshape(-1, codec.d) for Y in Ys])
    if codec.learned:
        return lat.cholesky_generator(V).to(V.dtype)
    return V.pow(2).mean().sqrt().clamp_min(1e-12).to(V.dtype)


def _sample_rows(grp: Group, d: int) -> Group:
    """The group on evenly spaced rows, at most SCALE_SAMPLE vectors of d (all when fewer)."""
    out, n = grp.W.shape
    keep = max(1, SCALE_SAMPLE * d // n)
    if keep >= out:
        return grp
    rows = torch.linspace(0, out - 1, keep, device=grp.W.device).round().long()
    return dataclasses.replace(grp, W=grp.W[rows], s=grp.s[rows], X=grp.X[rows])


def best_scale(groups: list[Group], mus: list[torch.Tensor | None], L0: torch.Tensor,
               codec: Codec) -> tuple[torch.Tensor, float]:
    """Multiply G₀ by the factor in SCALE_SEARCH with the lowest summed objective. For speed the
    search scores the joint encoding (slice-wise feedback left out, targets held at W_g), and
    for a standard lattice's exact decoder (its search is the costly part) on at most
    SCALE_SAMPLE vectors of each group."""
    groups = [dataclasses.replace(g, Ub=None) for g in groups]
    if codec.decoder == "nearest":
        groups = [_sample_rows(g, codec.d) for g in groups]
    best = (math.inf, L0)
    with torch.no_grad():
        for f in SCALE_SEARCH:
            total = sum(float(group_objective(g, codec.generator(f * L0, g.bits), m, codec)[0])
                        for g, m in zip(groups, mus))
            if total < best[0]:
                best = (total, f * L0)
    return best[1], best[0]


def init_mu_slot(groups: list[Group], cfg: GLVQConfig, codec: Codec) -> torch.Tensor | None:
    """ln μ₀ for a μ slot (kurtosis law), or None when the slot goes without companding: either
    companding is off, or identity_companding is on and μ = 0 gives the lower initial objective."""
    if not cfg.companding:
        return None
    X = torch.cat([g.X.reshape(-1) for g in groups])
    mu0 = torch.tensor(init_mu(X, cfg.mu_min, cfg.mu_max), dtype=X.dtype, device=X.device)
    if not cfg.identity_companding:
        return mu0.log()
    scores = []
    for mu in (None, mu0):
        mus = [mu] * len(groups)
        scores.append(best_scale(groups, mus, unit_lattice(groups, mus, codec), codec)[1])
    return None if scores[0] <= scores[1] else mu0.log()


def init_params(groups: list[Group], lat_idx: list[int], mu_idx: list[int], cfg: GLVQConfig,
                 codec: Codec) -> tuple[Params, list[float]]:
    """Initial parameters for ``groups`` with the given slot maps; returns (params, per-group
    objective at G₀, μ₀)."""
    n_mu, n_lat = max(mu_idx) + 1, max(lat_idx) + 1
    log_mu = [init_mu_slot([g for g, k in zip(groups, mu_idx) if k == j], cfg, codec) for j in range(n_mu)]
    mus = [None if log_mu[k] is None else torch.exp(log_mu[k]) for k in mu_idx]
    lattice = []
    for j in range(n_lat):
        members = [i for i, k in enumerate(lat_idx) if k == j]
        gs, ms = [groups[i] for i in members], [mus[i] for i in members]
        lattice.append(best_scale(gs, ms, unit_lattice(gs, ms, codec), codec)[0])
    P = Params(lattice=lattice, log_mu=log_mu, lat_idx=lat_idx, mu_idx=mu_idx,
                lattice0=[p.clone() for p in lattice])
    with torch.no_grad():
        err0 = [float(group_objective(g, codec.generator(lattice[lat_idx[i]], g.bits), mus[i], codec)[0])
                for i, g in enumerate(groups)]
    return P, err0


def encode_vectorwise(Wr: torch.Tensor, n: int, s: torch.Tensor, gen: torch.Tensor,
                       mu: torch.Tensor | None, codec: Codec, bits: int, Ur: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """GPTQ over d-column slices: encode the group held in the first n columns of Wr [out, m]
    one slice at a time (vector j of every row together) and feed each slice's error onto all
    later columns of Wr, in place, by the OBS update (Ur = U[a:, a:], the rows/columns of the
    inverse-Hessian Cholesky factor from the group's first column on):

        E_j = (W_j − Ŵ_j) U_jj⁻¹,     W[:, later] −= E_j U[j, later]

    Returns (codes [out, n], Ŵ_g [out, n], Σ_j ‖E_j‖², T [out, n]): the third is the group's
    exact share of the layer objective under the damped H, T the targets the slices saw."""
    d, out_f = codec.d, Wr.shape[0]
    codes = torch.empty(out_f, n, dtype=torch.int64, device=Wr.device)
    Wq = torch.empty(out_f, n, dtype=Wr.dtype, device=Wr.device)
    err = 0.0
    gen_inv = codec.inverse(gen)
    Uinv = torch.linalg.inv(Ur[:n, :n].to(torch.float64)).to(Wr.dtype)  # diagonal blocks = U_jj⁻¹
    T = Wr[:, :n].clone()
    for j in range(0, n, d):
        k = j + d
        w = Wr[:, j:k]
        T[:, j:k] = w
        Y = w / s if mu is None else compress(w / s, mu)
        c = codec.encode(Y, gen, bits, gen_inv)
        wq = decode_group(c, bits, gen, mu, s, codec)
        codes[:, j:k], Wq[:, j:k] = c, wq
        E = (w - wq) @ Uinv[j:k, j:k]
        err += float((E * E).sum())
        if k < Wr.shape[1]:
            Wr[:, k:] -= E @ Ur[j:k, k:]
    return codes, Wq, err, T


def slice_metric(Ub: torch.Tensor, d: int) -> torch.Tensor:
    """Block-diagonal metric of the vector-wise feedback: blockdiag_j(M_j M_jᵀ), M_j = U_jj⁻¹
    [n, n] — the cost ‖(W_j − Ŵ_j) U_jj⁻¹‖² of each slice, summed (targets held fixed)."""
    n = Ub.shape[0]
    Hm = torch.zeros_like(Ub)
    for j in range(0, n, d):
        M = torch.linalg.solve_triangular(Ub[j:j + d, j:j + d], torch.eye(d, dtype=Ub.dtype,
                                          device=Ub.device), upper=True)
        Hm[j:j + d, j:j + d] = M @ M.T
    return Hm


def eval_group(grp: Group, P: Params, codec: Codec) -> float:
    """Objective of one group (slot 0 of P) without gradients."""
    with torch.no_grad():
        return float(group_objective(grp, codec.generator(P.lattice[0], grp.bits), P.mu(0), codec)[0])


def curve_rows(curves: list[list[float]], phase: str) -> list[dict[str, Any]]:
    """Summed best-so-far objective per step over groups (a group that stopped early keeps its
    final value) -> [{phase, step, loss, rel_loss}], rel_loss relative to step 0."""
    n = max(len(c) for c in curves)
    totals = [sum(c[min(t, len(c) - 1)] for c in curves) for t in range(n)]
    return [{"phase": phase, "step": t, "loss": v, "rel_loss": v / max(totals[0], 1e-30)}
            for t, v in enumerate(totals)]


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float16).to(torch.float32)
