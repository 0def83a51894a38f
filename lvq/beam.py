"""Additive decoding and code search by beam search on the XᵀX objective (AQLM, Egiazarian et al. 2024).

The additive model (shapes: out rows, ``in`` input columns, vectors of d columns, G = in/d
vector-groups, M codebooks C_k [K_k, d], codebook k covering the first n_k groups):

    Ŵ[i, g·d:(g+1)·d] = s_i · Σ_{k : g < n_k} C_k[b_{i,k,g}]            (s: [out] per-row scales)

and the layer objective, summed over rows i (H = XᵀX/n, [in, in], symmetric PSD):

    L(Ŵ) = Σ_i r_i H r_iᵀ,      r_i = W_i − Ŵ_i.

**Closed-form candidate losses** (AQLM §3.2). Change one code b_{i,k,g} from c to c'. Keep the
row's "residual times H", p_i = r_i H [in], and its loss L_i. Removing the old contribution
u = s_i C_k[c] from group g's columns (r⁻ = r + u) gives

    L⁻_i = L_i + 2 u·p_{i,g} + u H_gg uᵀ,      p⁻_{i,g} = p_{i,g} + u H_gg,

and adding a candidate v = s_i C_k[c'] (r' = r⁻ − v) gives, for all K candidates at once,

    L_i(c') = L⁻_i − 2 s_i · p⁻_{i,g} · C_k[c'] + s_i² · C_k[c']ᵀ H_gg C_k[c'].

The last term is one [K] vector per (group, codebook) shared by all rows; the middle one is a
[out, d] × [d, K] matmul. After the choice, p_i += s_i (C_k[c] − C_k[c']) H_{g,:} (a rank-d
update), so every later candidate loss stays exact, including the cross-terms between groups.

**Beam search.** Positions are visited group by group (and, within a group, codebook by codebook),
all rows at once. Each row keeps ``beam_width`` hypotheses (complete code assignments with their
p and L); at each position every hypothesis is expanded with all K codes and the best
``beam_width`` of the B·K results survive. The best hypothesis always has the option to keep its
code, so the best loss never increases; with beam_width = 1 this is exact coordinate descent.
"""
from __future__ import annotations

import torch


def decode_additive(codebooks: list[torch.Tensor], codes: list[torch.Tensor], G: int) -> torch.Tensor:
    """Σ_k C_k[codes_k] laid out as a weight: codebooks C_k [K_k, d], codes_k [out, n_k] int64
    (n_k <= G, covering groups 0..n_k−1; codebook 0 must cover all G) -> [out, G·d].
    Differentiable in the codebooks."""
    out = codes[0].shape[0]
    d = codebooks[0].shape[1]
    if codes[0].shape[1] != G:
        raise ValueError(f"the first codebook must cover all {G} groups, got {codes[0].shape[1]}")
    total = codebooks[0][codes[0]]  # [out, G, d], a fresh tensor: safe to add into
    for C, b in zip(codebooks[1:], codes[1:]):
        total[:, : b.shape[1]] += C[b]
    return total.reshape(out, G * d)


def row_objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per-row objective L_i = r_i H r_iᵀ, r = W − Ŵ: W, Ŵ [out, in], H [in, in] -> [out]."""
    R = W - W_hat
    return ((R @ H) * R).sum(1)


def candidate_losses(W: torch.Tensor, H: torch.Tensor, s: torch.Tensor, codebooks: list[torch.Tensor],
                     codes: list[torch.Tensor], g: int, k: int) -> torch.Tensor:
    """Closed-form L_i(c') for every row i and every code c' of codebook k at group g, all other
    codes fixed: -> [out, K_k]. (The beam search computes the same quantities incrementally.)"""
    d = codebooks[0].shape[1]
    G = W.shape[1] // d
    C = codebooks[k]
    W_hat = s[:, None] * decode_additive(codebooks, codes, G)
    R = W - W_hat
    P = R @ H  # [out, in]
    L = (P * R).sum(1)  # [out]
    cols = slice(g * d, (g + 1) * d)
    Hgg = H[cols, cols]
    u = s[:, None] * C[codes[k][:, g]]  # [out, d]
    uH = u @ Hgg
    L_minus = L + 2.0 * (u * P[:, cols]).sum(1) + (uH * u).sum(1)
    Pg_minus = P[:, cols] + uH
    q = ((C @ Hgg) * C).sum(1)  # [K]
    return L_minus[:, None] - 2.0 * s[:, None] * (Pg_minus @ C.T) + (s * s)[:, None] * q[None, :]


def beam_search(W: torch.Tensor, H: torch.Tensor, s: torch.Tensor, codebooks: list[torch.Tensor],
                codes: list[torch.Tensor], beam_width: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One pass of beam search over every code position, minimising Σ_i r_i H r_iᵀ.

    W: [out, in] target (float32); H: [in, in]; s: [out] row scales; codebooks: C_k [K_k, d];
    codes: current codes_k [out, n_k] int64 (the starting point; n_0 = G = in/d, n_k non-increasing
    is not required). Returns (new codes, per-row loss [out] of the returned codes, recomputed
    exactly).
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    out, n_in = W.shape
    d = codebooks[0].shape[1]
    G = n_in // d
    if G * d != n_in:
        raise ValueError(f"in_features={n_in} is not a multiple of the vector dimension d={d}")
    W = W.to(torch.float32)
    H = H.to(W)
    s = s.to(W)
    books = [C.to(W) for C in codebooks]
    R = W - s[:, None] * decode_additive(books, codes, G)
    P = (R @ H)[:, None, :]  # [out, B, in], B = 1 until the first expansion
    L = (P[:, 0] * R).sum(1)[:, None]  # [out, B]
    beams = [b[:, None, :].clone() for b in codes]  # codes_k per hypothesis: [out, B, n_k]
    s3 = s[:, None, None]
    for g in range(G):
        cols = slice(g * d, (g + 1) * d)
        Hgg = H[cols, cols]
        Hg = H[cols, :]
        for k, C in enumerate(books):
            if g >= beams[k].shape[2]:
                continue
            K = C.shape[0]
            B = P.shape[1]
            old = beams[k][:, :, g].clone()  # [out, B] (a copy: the slot is overwritten below)
            u = s3 * C[old]  # [out, B, d]
            uH = (u.reshape(-1, d) @ Hgg).view(out, B, d)
            L_minus = L + 2.0 * (u * P[:, :, cols]).sum(-1) + (uH * u).sum(-1)
            Pg_minus = P[:, :, cols] + uH
            q = ((C @ Hgg) * C).sum(1)  # [K]
            cross = (Pg_minus.reshape(-1, d) @ C.T).view(out, B, K)
            scores = L_minus[..., None] - 2.0 * s3 * cross + (s3 * s3) * q  # [out, B, K]
            width = min(beam_width, B * K)
            if width == 1:
                best, flat = scores.reshape(out, B * K).min(1, keepdim=True)
            else:
                best, flat = scores.reshape(out, B * K).topk(width, dim=1, largest=False)
            parent, new = flat // K, flat % K  # [out, width]
            if B > 1 or width > 1:
                P = P.gather(1, parent[..., None].expand(-1, -1, n_in))
                beams = [b.gather(1, parent[..., None].expand(-1, -1, b.shape[2])) for b in beams]
                old = old.gather(1, parent)
            beams[k][:, :, g] = new
            # r changes by s (C[old] − C[new]) on group g's columns -> p changes by that times H_{g,:}
            delta = (s3 * (C[old] - C[new])).reshape(-1, d)
            P = P.reshape(-1, n_in).addmm_(delta, Hg).view(out, width, n_in)
            L = best
    pick = L.argmin(1)  # [out]
    new_codes = [b[torch.arange(out, device=b.device), pick] for b in beams]
    loss = row_objective(W, s[:, None] * decode_additive(books, new_codes, G), H)
    return new_codes, loss
