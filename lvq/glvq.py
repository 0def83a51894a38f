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
7. Error feedback (optional, our addition; ALGORITHMS.md measured that it matters). With U the
   upper Cholesky factor of the damped H⁻¹, GPTQ's OBS update moves quantization error onto the
   columns not yet quantized. feedback_unit="vector" (default): the group is encoded one d-column
   slice at a time, E_j = (W_j − Ŵ_j) U_jj⁻¹ and W[:, later] −= E_j U[j, later]; learning (6)
   then scores Σ_j ‖E_j‖² (the targets each slice saw are held fixed for the gradient, like Z).
   feedback_unit="group": joint Babai per group in the metric (U_ggᵀU_gg)⁻¹ (the Schur
   complement), then one update of the later groups. Without feedback H_g = H[g, g].

Our decisions where the paper is silent are listed in GLVQConfig's docstring (lvq/config.py).

Stored per layer (every bit counted in ``bit_breakdown``): codes packed at b_g bits per weight
(one uint8 buffer per width class), the unit generators Ĝ (fp16 [n_lattices, d, d], or one fp16
scale per lattice for the standard lattices Z/D/E8), μ (fp16, one per group or one per layer; 0 =
no companding), the scales s (fp16 [out, n_groups]) and a 3-bit width tag per group.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import lattice as lat
from .baselines import inverse_hessian_cholesky
from .bitalloc import allocate_bits, code_bits
from .companding import compress, expand, init_mu, kurtosis
from .config import GLVQConfig
from .groups import group_bounds
from .methods import Method
from .packing import pack, unpack
from .qweight import QuantizedWeight, fp16_bits, layer_objective

WIDTH_TAG_BITS = 3  # a width in 1..8
SCALE_SEARCH = (0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5)  # multiples of G₀ tried at init


# ----------------------------------------------------------------------------------------------
# Codec: how a group's codes map to vectors (learned/standard lattice, Babai/nearest decoder)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Codec:
    """kind: "learned", "Z", "D" or "E8"; decoder: "babai" or "nearest"; d: vector length."""

    kind: str
    decoder: str
    d: int

    @property
    def learned(self) -> bool:
        return self.kind == "learned"

    def generator(self, param: torch.Tensor, bits: int) -> torch.Tensor:
        """Effective generator of a b-bit group from its stored parameter.

        learned: param = unit generator Ĝ [d, d] -> Δ_b Ĝ. Standard lattice: param = unit scale c
        (scalar) -> Δ_b c B / |det B|^{1/d} (babai, [d, d]) or Δ_b c / |det B|^{1/d} (nearest, scalar),
        so that c = RMS of the companded values is the natural starting point for every lattice.
        """
        step = lat.width_step(bits)
        if self.learned:
            return step * param
        B = lat.standard_generator(self.kind, self.d, dtype=param.dtype, device=param.device)
        vol = abs(float(torch.linalg.det(B.to(torch.float64)))) ** (1.0 / self.d)
        if self.decoder == "nearest":
            return step * param / vol
        return (step / vol) * param * B

    def encode(self, V: torch.Tensor, gen: torch.Tensor, bits: int,
               gen_inv: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned codes [ℓ, d] in [0, 2^b) for vectors V [ℓ, d] (gen_inv: optional G⁻¹)."""
        if self.decoder == "nearest":
            return lat.nearest_encode(V / gen, self.kind, bits)
        return lat.babai_encode(V, gen, bits, gen_inv) + (1 << (bits - 1))

    def inverse(self, gen: torch.Tensor) -> torch.Tensor | None:
        """G⁻¹ for the Babai decoder (computed once per encoding pass), None otherwise."""
        return None if self.decoder == "nearest" else torch.linalg.inv(gen.to(torch.float64))

    def decode(self, U: torch.Tensor, gen: torch.Tensor, bits: int) -> torch.Tensor:
        """Vectors [ℓ, d] of unsigned codes U [ℓ, d]; differentiable in ``gen``."""
        if self.decoder == "nearest":
            return gen * lat.nearest_decode(U, self.kind, bits, dtype=gen.dtype)
        return lat.babai_decode(U - (1 << (bits - 1)), gen)


def _decode_group(U: torch.Tensor, bits: int, gen: torch.Tensor, mu: torch.Tensor | None,
                  s: torch.Tensor, codec: _Codec) -> torch.Tensor:
    """Ŵ_g = s · F⁻¹_μ(decode(U)) for codes U [out, n_g] -> [out, n_g] (one matmul per group)."""
    out_f, n = U.shape
    Y = codec.decode(U.reshape(-1, codec.d), gen, bits).reshape(out_f, n)
    X = Y if mu is None else expand(Y, mu)
    return s * X


def _objective(D: torch.Tensor, Hm: torch.Tensor | None) -> torch.Tensor:
    """tr(D Hm Dᵀ) for D [out, n] (Hm None: ‖D‖²)."""
    return (D * D).sum() if Hm is None else ((D @ Hm) * D).sum()


# ----------------------------------------------------------------------------------------------
# One group's problem and the learner (Algorithm 1)
# ----------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """W [out, n] target, s [out, 1] fp16-exact scales, X = W / s, Hm [n, n] metric or None."""

    W: torch.Tensor
    s: torch.Tensor
    X: torch.Tensor
    Hm: torch.Tensor | None
    bits: int
    Ub: torch.Tensor | None = None  # U[g, g] when encoding slice by slice with feedback


def _make_group(Wg: torch.Tensor, Hm: torch.Tensor | None, bits: int,
                Ub: torch.Tensor | None = None) -> _Group:
    s = Wg.abs().amax(dim=1, keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s)).clamp(max=65504.0)
    s = s.to(torch.float16).to(Wg.dtype).clamp_min(2.0**-24)
    return _Group(W=Wg, s=s, X=Wg / s, Hm=Hm, bits=bits, Ub=Ub)


def _group_objective(grp: _Group, gen: torch.Tensor, mu: torch.Tensor | None, codec: _Codec
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
            U, _, _, T = _encode_vectorwise(grp.W.clone(), grp.W.shape[1], grp.s, gen.detach(),
                                            mu_d, codec, grp.bits, grp.Ub)
    W_hat = _decode_group(U.reshape(grp.X.shape), grp.bits, gen, mu, grp.s, codec)
    return _objective(T - W_hat, grp.Hm), U


@dataclass
class _Params:
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


def _learn(groups: list[_Group], P: _Params, codec: _Codec, cfg: GLVQConfig,
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
            obj, _ = _group_objective(grp, gen, P.mu(g), codec)
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
def _unit_lattice(groups: list[_Group], mus: list[torch.Tensor | None], codec: _Codec) -> torch.Tensor:
    """G₀ for a slot: Cholesky of the pooled companded vectors (learned) or their RMS (standard)."""
    Ys = [g.X if m is None else compress(g.X, m) for g, m in zip(groups, mus)]
    V = torch.cat([Y.reshape(-1, codec.d) for Y in Ys])
    if codec.learned:
        return lat.cholesky_generator(V).to(V.dtype)
    return V.pow(2).mean().sqrt().clamp_min(1e-12).to(V.dtype)


def _best_scale(groups: list[_Group], mus: list[torch.Tensor | None], L0: torch.Tensor,
                codec: _Codec) -> tuple[torch.Tensor, float]:
    """Multiply G₀ by the factor in SCALE_SEARCH with the lowest summed objective. For speed the
    search scores the joint encoding (slice-wise feedback left out, targets held at W_g)."""
    groups = [dataclasses.replace(g, Ub=None) for g in groups]
    best = (math.inf, L0)
    with torch.no_grad():
        for f in SCALE_SEARCH:
            total = sum(float(_group_objective(g, codec.generator(f * L0, g.bits), m, codec)[0])
                        for g, m in zip(groups, mus))
            if total < best[0]:
                best = (total, f * L0)
    return best[1], best[0]


def _init_mu(groups: list[_Group], cfg: GLVQConfig, codec: _Codec) -> torch.Tensor | None:
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
        scores.append(_best_scale(groups, mus, _unit_lattice(groups, mus, codec), codec)[1])
    return None if scores[0] <= scores[1] else mu0.log()


def _init_params(groups: list[_Group], lat_idx: list[int], mu_idx: list[int], cfg: GLVQConfig,
                 codec: _Codec) -> tuple[_Params, list[float]]:
    """Initial parameters for ``groups`` with the given slot maps; returns (params, per-group
    objective at G₀, μ₀)."""
    n_mu, n_lat = max(mu_idx) + 1, max(lat_idx) + 1
    log_mu = [_init_mu([g for g, k in zip(groups, mu_idx) if k == j], cfg, codec) for j in range(n_mu)]
    mus = [None if log_mu[k] is None else torch.exp(log_mu[k]) for k in mu_idx]
    lattice = []
    for j in range(n_lat):
        members = [i for i, k in enumerate(lat_idx) if k == j]
        gs, ms = [groups[i] for i in members], [mus[i] for i in members]
        lattice.append(_best_scale(gs, ms, _unit_lattice(gs, ms, codec), codec)[0])
    P = _Params(lattice=lattice, log_mu=log_mu, lat_idx=lat_idx, mu_idx=mu_idx,
                lattice0=[p.clone() for p in lattice])
    with torch.no_grad():
        err0 = [float(_group_objective(g, codec.generator(lattice[lat_idx[i]], g.bits), mus[i], codec)[0])
                for i, g in enumerate(groups)]
    return P, err0


def _encode_vectorwise(Wr: torch.Tensor, n: int, s: torch.Tensor, gen: torch.Tensor,
                       mu: torch.Tensor | None, codec: _Codec, bits: int, Ur: torch.Tensor
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
        wq = _decode_group(c, bits, gen, mu, s, codec)
        codes[:, j:k], Wq[:, j:k] = c, wq
        E = (w - wq) @ Uinv[j:k, j:k]
        err += float((E * E).sum())
        if k < Wr.shape[1]:
            Wr[:, k:] -= E @ Ur[j:k, k:]
    return codes, Wq, err, T


def _slice_metric(Ub: torch.Tensor, d: int) -> torch.Tensor:
    """Block-diagonal metric of the vector-wise feedback: blockdiag_j(M_j M_jᵀ), M_j = U_jj⁻¹
    [n, n] — the cost ‖(W_j − Ŵ_j) U_jj⁻¹‖² of each slice, summed (targets held fixed)."""
    n = Ub.shape[0]
    Hm = torch.zeros_like(Ub)
    for j in range(0, n, d):
        M = torch.linalg.solve_triangular(Ub[j:j + d, j:j + d], torch.eye(d, dtype=Ub.dtype,
                                          device=Ub.device), upper=True)
        Hm[j:j + d, j:j + d] = M @ M.T
    return Hm


def _eval(grp: _Group, P: _Params, codec: _Codec) -> float:
    """Objective of one group (slot 0 of P) without gradients."""
    with torch.no_grad():
        return float(_group_objective(grp, codec.generator(P.lattice[0], grp.bits), P.mu(0), codec)[0])


def _curve_rows(curves: list[list[float]], phase: str) -> list[dict[str, Any]]:
    """Summed best-so-far objective per step over groups (a group that stopped early keeps its
    final value) -> [{phase, step, loss, rel_loss}], rel_loss relative to step 0."""
    n = max(len(c) for c in curves)
    totals = [sum(c[min(t, len(c) - 1)] for c in curves) for t in range(n)]
    return [{"phase": phase, "step": t, "loss": v, "rel_loss": v / max(totals[0], 1e-30)}
            for t, v in enumerate(totals)]


def _to_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float16).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Stored form
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GLVQWeight(QuantizedWeight):
    """Stored GLVQ layer.

    tensors: ``codes_b{w}`` uint8 (codes of all groups of width w, group order, each [out, n_g]
    row-major, offset to unsigned), ``scales`` fp16 [out, n_groups], ``generators`` fp16
    [n_lattices, d, d] (learned) or ``lattice_scale`` fp16 [n_lattices] (Z/D/E8), ``mu`` fp16
    [n_mu] (absent when companding is off; 0 = no companding for the groups using that entry).
    meta: shapes, widths, lattice/μ slot of each group, per-group statistics and the loss curve.
    The generators are read from the state (``generator(g)`` gives group g's effective G_g); they
    are not repeated in ``stats()``.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    method: str = "glvq"  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.meta["out_features"], self.meta["in_features"])

    @property
    def codec(self) -> _Codec:
        return _Codec(self.meta["lattice"], self.meta["decoder"], self.meta["dim"])

    def bounds(self) -> list[tuple[int, int]]:
        return group_bounds(self.meta["in_features"], self.meta["group_size"])

    def _lattice_param(self, j: int) -> torch.Tensor:
        if self.meta["lattice"] == "learned":
            return self.tensors["generators"][j].to(torch.float32)
        return self.tensors["lattice_scale"][j].to(torch.float32)

    def _mu(self, g: int) -> torch.Tensor | None:
        if "mu" not in self.tensors:
            return None
        mu = self.tensors["mu"][self.meta["mu_index"][g]].to(torch.float32)
        return None if float(mu) == 0.0 else mu

    def generator(self, g: int) -> torch.Tensor:
        """Effective generator G_g [d, d] of group g (Δ_b·Ĝ; c·B for a standard lattice with the
        Babai decoder; for the nearest decoder, the scale times I)."""
        gen = self.codec.generator(self._lattice_param(self.meta["lattice_index"][g]),
                                   self.meta["widths"][g])
        if gen.dim() == 0:
            return gen * torch.eye(self.meta["dim"])
        return gen

    def group_codes(self) -> list[torch.Tensor]:
        """Unsigned codes of every group, [out, n_g] int64 each."""
        out_f = self.meta["out_features"]
        bounds, widths = self.bounds(), self.meta["widths"]
        out: list[torch.Tensor] = [torch.empty(0)] * len(bounds)
        for w in sorted(set(widths)):
            members = [g for g, b in enumerate(widths) if b == w]
            n_total = sum(bounds[g][1] - bounds[g][0] for g in members)
            flat = unpack(self.tensors[f"codes_b{w}"], w, (out_f * n_total,))
            pos = 0
            for g in members:
                n = bounds[g][1] - bounds[g][0]
                out[g] = flat[pos:pos + out_f * n].view(out_f, n)
                pos += out_f * n
        return out

    def dequantize(self) -> torch.Tensor:
        out_f, in_f = self.shape
        scales = self.tensors["scales"].to(torch.float32)
        W = torch.empty(out_f, in_f, dtype=torch.float32, device=scales.device)
        codec, widths = self.codec, self.meta["widths"]
        for g, ((a, b), U) in enumerate(zip(self.bounds(), self.group_codes())):
            gen = codec.generator(self._lattice_param(self.meta["lattice_index"][g]), widths[g])
            W[:, a:b] = _decode_group(U, widths[g], gen, self._mu(g), scales[:, g:g + 1], codec)
        return W

    def bit_breakdown(self) -> dict[str, int]:
        out_f = self.meta["out_features"]
        code = sum(out_f * (b - a) * w for (a, b), w in zip(self.bounds(), self.meta["widths"]))
        lattice_t = self.tensors.get("generators", self.tensors.get("lattice_scale"))
        return {
            "codes": code,
            "generators": fp16_bits(lattice_t),
            "mu": fp16_bits(self.tensors["mu"]) if "mu" in self.tensors else 0,
            "scales": fp16_bits(self.tensors["scales"]),
            "width_tags": WIDTH_TAG_BITS * len(self.meta["widths"]),
        }

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.tensors), dict(self.meta)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "GLVQWeight":
        return cls(tensors=dict(tensors), meta=dict(meta))

    def stats(self) -> dict[str, Any]:
        m = self.meta
        groups = m["group_stats"]
        return {
            "bits_per_weight": self.bits_per_weight(),
            "code_bits": sum((b - a) * w for (a, b), w in zip(self.bounds(), m["widths"])) / m["in_features"],
            "dim": m["dim"],
            "group_size": m["group_size"],
            "lattice": m["lattice"],
            "decoder": m["decoder"],
            "alloc_moved": m["alloc_moved"],
            "objective_init": m["objective_init"],
            "objective": m["objective"],
            "objective_ratio": m["objective"] / max(m["objective_init"], 1e-30),
            "mean_mu": sum(g["mu"] for g in groups) / len(groups),
            "groups_without_companding": sum(1 for g in groups if g["mu"] == 0.0),
            "groups": [dict(g) for g in groups],
            "curve": [dict(c) for c in m["curve"]],
        }


# ----------------------------------------------------------------------------------------------
# quantize
# ----------------------------------------------------------------------------------------------
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
    torch.manual_seed(cfg.seed)
    W = W.detach().to(torch.float32)
    out_f, in_f = W.shape
    dev = W.device
    n_groups = len(bounds)
    codec = _Codec(cfg.lattice, cfg.decoder, cfg.dim)
    Hf = None if H is None else H.detach().to(device=dev, dtype=torch.float32)

    alloc = allocate_bits(W, H, bounds, float(cfg.bits), search=cfg.bit_allocation, damp=cfg.damp)
    widths = alloc.widths
    lat_idx = [0] * n_groups if cfg.shared_lattice else list(range(n_groups))
    mu_idx = [0] * n_groups if cfg.shared_companding else list(range(n_groups))

    feedback = cfg.error_feedback and H is not None
    if feedback:
        U, _ = inverse_hessian_cholesky(H.to(dev), cfg.damp)
        U = U.to(torch.float32)

    shared = cfg.shared_lattice or cfg.shared_companding
    curve: list[dict[str, Any]] = []
    if shared:
        # Phase A: tied parameters learned jointly on the original weights with metrics H[g, g].
        groups0 = [_make_group(W[:, a:b], None if Hf is None else Hf[a:b, a:b], w)
                   for (a, b), w in zip(bounds, widths)]
        P_shared, _ = _init_params(groups0, lat_idx, mu_idx, cfg, codec)
        _, curves = _learn(groups0, P_shared, codec, cfg, learn_lattice=True, learn_mu=True)
        curve += _curve_rows(curves, "joint")
        del groups0

    W_work = W.clone()
    lattice_out: list[torch.Tensor] = [torch.empty(0)] * (max(lat_idx) + 1)
    mu_out: list[float] = [0.0] * (max(mu_idx) + 1)
    codes_by_width: dict[int, list[torch.Tensor]] = {}
    W_hat = torch.empty_like(W)
    group_stats, curves_b, scale_cols = [], [], []
    for g, (a, b) in enumerate(bounds):
        Wg = W_work[:, a:b]
        vectorwise = feedback and cfg.feedback_unit == "vector"
        if vectorwise:
            Hm = _slice_metric(U[a:b, a:b], cfg.dim)
        elif feedback:
            M = torch.linalg.solve_triangular(U[a:b, a:b], torch.eye(b - a, device=dev), upper=True)
            Hm = M @ M.T
        else:
            Hm = None if Hf is None else Hf[a:b, a:b]
        grp = _make_group(Wg, Hm, widths[g], U[a:b, a:b] if vectorwise else None)
        P, err0 = _init_params([grp], [0], [0], cfg, codec)
        if cfg.shared_lattice:
            P.lattice, P.lattice0 = [P_shared.lattice[0]], [P_shared.lattice[0]]
            err0 = [_eval(grp, P, codec)]
        if cfg.shared_companding:
            P.log_mu = [P_shared.log_mu[0]]
            err0 = [_eval(grp, P, codec)]
        _, curves = _learn([grp], P, codec, cfg, learn_lattice=not cfg.shared_lattice,
                           learn_mu=not cfg.shared_companding)
        curves_b.append(curves[0])
        # Round what is stored to fp16, re-encode with exactly those values, decode as storage does.
        lat16 = _to_fp16(P.lattice[0])
        mu16 = None if P.log_mu[0] is None else _to_fp16(torch.exp(P.log_mu[0]))
        gen = codec.generator(lat16, widths[g])
        with torch.no_grad():
            Wg = Wg.clone()
            if vectorwise:
                codes, Wq, err1, _ = _encode_vectorwise(W_work[:, a:], b - a, grp.s, gen, mu16,
                                                        codec, widths[g], U[a:, a:])
            else:
                Y = grp.X if mu16 is None else compress(grp.X, mu16)
                codes = codec.encode(Y.reshape(-1, cfg.dim), gen, widths[g]).reshape(out_f, b - a)
                Wq = _decode_group(codes, widths[g], gen, mu16, grp.s, codec)
                if feedback and b < in_f:
                    W_work[:, b:] -= ((Wg - Wq) @ M) @ U[a:b, b:]
                err1 = float(_objective(Wg - Wq, Hm))
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
        curve += _curve_rows(curves_b, "groups")

    tensors: dict[str, torch.Tensor] = {
        f"codes_b{w}": pack(torch.cat(cs), w) for w, cs in sorted(codes_by_width.items())}
    tensors["scales"] = torch.stack(scale_cols, 1).to(torch.float16)
    if codec.learned:
        tensors["generators"] = torch.stack(lattice_out).to(torch.float16)
    else:
        tensors["lattice_scale"] = torch.stack(lattice_out).reshape(-1).to(torch.float16)
    if cfg.companding:
        tensors["mu"] = torch.tensor(mu_out, dtype=torch.float16, device=dev)
    meta = {
        "out_features": out_f, "in_features": in_f, "group_size": cfg.group_size, "dim": cfg.dim,
        "lattice": cfg.lattice, "decoder": cfg.decoder, "widths": widths,
        "lattice_index": lat_idx, "mu_index": mu_idx, "alloc_moved": alloc.moved,
        "objective_init": sum(s["err_before"] for s in group_stats),
        "objective": sum(s["err_after"] for s in group_stats),
        "layer_objective": layer_objective(W, W_hat, H), "group_stats": group_stats,
        "curve": curve,
    }
    return GLVQWeight(tensors=tensors, meta=meta)


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


METHOD_ENTRIES = [
    Method("glvq", GLVQConfig, quantize_glvq, GLVQWeight,
           "GLVQ: learned lattice per column group, mu-law companding, salience bit allocation",
           estimate_bits=estimate_bits),
]
