"""Lattice-code kernels (GLVQ): y = x Ŵᵀ in the code domain, through the grouped integer-code
product of lvq/kernels/scalar.py.

Stored form (lvq/glvq.py): column groups g of n_g inputs with width b_g, row scales s [out, G],
unsigned codes U_g [out, n_g], vector length d, and per group a decode that is affine in integer
codes times a per-group matrix A_g:

    babai:        ŵ_v = s · G_g (U_v − 2^{b−1} + ½)             A_g = G_g,   zero 2^{b−1} − ½
    nearest Z, D: ŵ_v = s · c (U_v − 2^{b−1} + ½)               A_g = c·I,   zero 2^{b−1} − ½
    nearest E8:   ŵ_v = s · c (y + ½·coset + ¼)  (lvq/lattice.py) re-coded at prepare time as
                  w' = 2y + coset + 2^b on b + 1 bits:          A_g = c/2·I, zero 2^b − ½
    nearest E8P:  ŵ_v = s · c (s⊙a ± ¼)  (lvq/e8p.py): each coordinate is an odd multiple of
                  ¼ with |4ŵ/(s·c)| <= 11, re-coded as
                  w' = (4ŵ/(s·c) + 11)/2 in 0..11 on 4 bits:    A_g = c/2·I, zero 5.5

so ⟨ŵ_v, x_v⟩ = s·(⟨U'_v, u_v⟩ − zero·Σu_v) with u_v = A_gᵀ x_v computed once per call (d
multiply-adds per input). Groups with μ > 0 go through the μ-law expansion, which is not
affine: they are decoded once at prepare time to fp16 X = F⁻¹_μ(decode(U)) (before the row scale,
|X| <= ~1, relative rounding 2⁻¹¹) and multiplied as dense columns by the same kernel.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from .. import lattice as lat
from ..companding import expand
from .scalar import (KIND_CODES, KIND_DENSE, XFORM_MATRIX, XFORM_NONE, XFORM_SCALAR, GroupedCodes,
                     grouped_matmul, pack_words)

DECODERS = ("babai", "nearest")


def _affine_codes(U: torch.Tensor, bits: int, gen: torch.Tensor, decoder: str, kind: str
                  ) -> tuple[np.ndarray, int, int, np.ndarray, float]:
    """(unsigned codes, code bits, transform kind, transform [d, d], zero) of one uncompanded group."""
    off = 1 << (bits - 1)
    if decoder == "babai":
        return U.numpy(), bits, XFORM_MATRIX, gen.to(torch.float32).numpy(), off - 0.5
    c = float(gen.reshape(-1)[0]) if gen.dim() < 2 else float(gen[0, 0])
    if kind == "E8P" and bits == 2:
        code = (U.reshape(-1, 8) << (2 * torch.arange(8))).sum(-1)  # the 16-bit codewords
        w = _e8p_nibbles()[code].reshape(U.shape)
        return w.numpy(), 4, XFORM_SCALAR, np.full((1, 1), c / 2, np.float32), 5.5
    if kind in ("E8", "E8P"):  # E8P above 2 bits is the E8 code
        v = lat.nearest_decode(U.reshape(-1, 8), "E8", bits, dtype=torch.float64).reshape(U.shape)
        w = torch.round(2.0 * (v - 0.25)).to(torch.int64) + (1 << bits)
        return w.numpy(), bits + 1, XFORM_SCALAR, np.full((1, 1), c / 2, np.float32), (1 << bits) - 0.5
    if kind not in ("Z", "D"):
        raise ValueError(f"nearest decoding needs lattice 'Z', 'D', 'E8' or 'E8P', got {kind!r}")
    return U.numpy(), bits, XFORM_SCALAR, np.full((1, 1), c, np.float32), off - 0.5


@functools.lru_cache(maxsize=1)
def _e8p_nibbles() -> torch.Tensor:
    """[65536, 8] uint8: every E8P codeword's coordinates v (odd multiples of ¼, |4v| <= 11)
    re-coded as (4v + 11)/2 in 0..11, so that preparing a layer is one table lookup (512 kB,
    kept for the process)."""
    fields = (torch.arange(1 << 16)[:, None] >> (2 * torch.arange(8))) & 3
    v = lat.nearest_decode(fields, "E8P", 2, dtype=torch.float64)
    w = (torch.round(4.0 * v).to(torch.int64) + 11) // 2
    if int(w.min()) < 0 or int(w.max()) > 15:
        raise ValueError("E8P coordinates outside the 4-bit kernel range")
    return w.to(torch.uint8)


def _decode_dense(U: torch.Tensor, bits: int, gen: torch.Tensor, decoder: str, kind: str,
                  mu: float, d: int) -> torch.Tensor:
    """F⁻¹_μ(decode(U)) for one companded group, [out, n] float32 (before the row scale)."""
    V = U.reshape(-1, d)
    if decoder == "babai":
        Y = lat.babai_decode(V - (1 << (bits - 1)), gen.to(torch.float32))
    else:
        c = float(gen.reshape(-1)[0]) if gen.dim() < 2 else float(gen[0, 0])
        Y = c * lat.nearest_decode(V, kind, bits, dtype=torch.float32)
    return expand(Y.reshape(U.shape), torch.tensor(mu, dtype=torch.float32))


def prepare_lattice(group_codes: Sequence[torch.Tensor], widths: Sequence[int], scales: torch.Tensor,
                    generators: Sequence[torch.Tensor], mus: Sequence[float], dim: int,
                    decoder: str = "babai", lattice: str = "learned") -> GroupedCodes:
    """GLVQ stored form -> kernel layout.

    group_codes[g]: unsigned codes [out, n_g] (``GLVQWeight.group_codes()``), consecutive groups
    covering the inputs; widths[g] in 1..8; scales [out, G]; generators[g]: the effective
    generator [d, d] of group g for the babai decoder, or its scale (a scalar, or c·I as
    ``GLVQWeight.generator(g)`` returns it) for the nearest decoder; mus[g]: μ (0 = no
    companding); lattice: "learned", "Z", "D" or "E8" (the nearest decoder's point set).
    Memory: uncompanded groups at ~b_g bits per weight (E8: b_g + 1) in uint32 words,
    companded ones at 16 bits per weight, plus 8 bytes per (row, group) and d² floats per group.
    """
    G = len(group_codes)
    if not (len(widths) == len(generators) == len(mus) == G) or G == 0:
        raise ValueError("group_codes, widths, generators and mus need one entry per group")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    out_f = int(group_codes[0].shape[0])
    in_f = sum(int(U.shape[1]) for U in group_codes)
    if tuple(scales.shape) != (out_f, G):
        raise ValueError(f"scales must be [{out_f}, {G}], got {tuple(scales.shape)}")
    xform = np.zeros((G, dim, dim), dtype=np.float32)
    words, dense, gtab, zeros = [], [], [], np.zeros(G, dtype=np.float32)
    w_row = d_row = c0 = 0
    for g, (U, b, gen, mu) in enumerate(zip(group_codes, widths, generators, mus)):
        U = U.detach().cpu().to(torch.int64)
        n = int(U.shape[1])
        if U.shape[0] != out_f or n % dim:
            raise ValueError(f"group {g}: codes [{U.shape[0]}, {n}] do not fit out={out_f}, d={dim}")
        if not 1 <= int(b) <= 8:
            raise ValueError(f"group {g}: width {b} is not in 1..8")
        gen = gen.detach().cpu().to(torch.float32)
        if float(mu) > 0:
            X = _decode_dense(U, int(b), gen, decoder, lattice, float(mu), dim)
            chunks = -(-n // 8)
            D = np.zeros((chunks * 8, out_f), dtype=np.float16)
            D[:n] = X.T.numpy()
            dense.append(D.view(np.uint16))
            gtab.append((KIND_DENSE, d_row, chunks, 0, c0, n, XFORM_NONE))
            d_row += chunks * 8
        else:
            q, bits, xf, A, zero = _affine_codes(U, int(b), gen, decoder, lattice)
            w = pack_words(q, bits)
            words.append(w)
            if xf == XFORM_MATRIX:
                xform[g] = A
            else:
                xform[g, 0, 0] = A[0, 0]
            zeros[g] = zero
            gtab.append((KIND_CODES, w_row, w.shape[0], bits, c0, n, xf))
            w_row += w.shape[0]
        c0 += n
    s = scales.detach().cpu().to(torch.float32).numpy().T
    return GroupedCodes(
        words=np.ascontiguousarray(np.concatenate(words)) if words else np.zeros((0, out_f), np.uint32),
        dense=np.ascontiguousarray(np.concatenate(dense)) if dense else np.zeros((0, out_f), np.uint16),
        gtab=np.asarray(gtab, dtype=np.int64), xform=xform,
        s=np.ascontiguousarray(s), sz=np.ascontiguousarray(s * zeros[:, None]),
        out_features=out_f, in_features=in_f)


def lattice_matmul(x: torch.Tensor, prepared: GroupedCodes, threads: int | None = None) -> torch.Tensor:
    """y = x Ŵᵀ for GLVQ codes; x [..., in] -> [..., out] float32 (no autograd; threads: see
    scalar.grouped_matmul)."""
    return grouped_matmul(x, prepared, threads)
