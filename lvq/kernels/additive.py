"""Additive-code kernels (AQLM, CRVQ): y = x Ŵᵀ from codebooks and codes, no dense Ŵ.

Stored form (lvq/crvq.py): M codebooks C_k [2^e_k, d]; codes b_k [out, n_k] where codebook k
covers the first n_k vector-groups (d consecutive input columns each) of the permuted columns
(n_0 = in/d); row scales s [out]; optional permutation P (position p holds input channel P[p]).
With x_p = x[..., P]:

    y_ti = s_i Σ_k Σ_{g<n_k} ⟨x_p[t, g], C_k[b_ikg]⟩

Two paths, picked per call by a cost estimate (``use_lut``):
* lookup tables (few tokens): T_k[t, g, c] = ⟨x_p[t, g], C_k[c]⟩ for every code c (T·Σn_k·K_k·d
  multiply-adds, vectorised over c), then one table read per code and token;
* row decode (more tokens, or codebooks too large for tables): each row is decoded into an
  L1-resident buffer (d-wide copies from the codebooks) and dotted with the T tokens.

Prepared layout (``AdditivePrepared``): all codebooks stacked (float32, and transposed for the
table build), the codes of one row for all codebooks side by side (uint8 when every e_k <= 8,
else uint16), float32 scales, the permutation as int64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

import numpy as np
import torch
from numba import prange

from ..packing import unpack
from ._common import (DENSE_MIN_TOKENS, all_row_blocks, call_layout, from_rows, jit, one_token_call,
                      prefetch_rows, to_numpy)

DIMS = (2, 4, 8, 16)
LUT_ROWS = 4  # code rows per pass of the lookup kernel; the next pass's rows are prefetched


@dataclass(frozen=True)
class AdditivePrepared:
    """cb: float32 [ΣK_k, d]; cbT: float32 [d, ΣK_k]; codes: uint8/uint16 [Σn_k, out]
    (code-major: one row per (codebook, group), contiguous over output rows);
    tab: int64 [M, 5] per codebook (n_k, K_k, first codebook row, first code column, first
    table entry); lrows: int64 [Σn_k, 4] per table row (first entry, K_k, codebook row, input
    column); s: float32 [out]; perm: int64 [in] or [0] (none)."""

    cb: np.ndarray
    cbT: np.ndarray
    codes: np.ndarray
    tab: np.ndarray
    lrows: np.ndarray
    s: np.ndarray
    perm: np.ndarray
    dim: int
    out_features: int
    in_features: int
    blocks: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", all_row_blocks(self.out_features))

    @property
    def lut_size(self) -> int:
        """Table entries per token: Σ_k n_k·K_k."""
        return int((self.tab[:, 0] * self.tab[:, 1]).sum())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.cb, self.cbT, self.codes, self.tab, self.lrows, self.s,
                                      self.perm))


def prepare_additive(codes, codebooks, scales: torch.Tensor, perm: torch.Tensor | None,
                     code_bits, out_features: int, in_features: int) -> AdditivePrepared:
    """AQLM/CRVQ stored form -> kernel layout.

    codes: per codebook k, either the packed uint8 buffer (lvq.packing, [out, n_k] at
    code_bits[k] bits; n_k is then read from its length) or unpacked integer codes [out, n_k];
    codebooks: per k, [2^e_k, d] (fp16 as stored); scales [out]; perm: the unpacked input
    permutation [in] (``CRVQWeight.perm_index``) or None. Memory: 1 byte per code (2 when some
    e_k > 8), the codebooks twice in float32, 4 bytes per row and per input channel.
    """
    M = len(codebooks)
    if M == 0 or len(codes) != M or len(code_bits) != M:
        raise ValueError("codes, codebooks and code_bits need one entry per codebook")
    d = int(codebooks[0].shape[1])
    if d not in DIMS or in_features % d:
        raise ValueError(f"vector dimension d={d} must be one of {DIMS} and divide in={in_features}")
    unpacked = []
    for b, e, C in zip(codes, code_bits, codebooks):
        if tuple(C.shape) != (1 << e, d):
            raise ValueError(f"codebook shape {tuple(C.shape)} != (2^{e}, {d})")
        if b.dim() == 1:
            n = (b.numel() * 8) // (out_features * e)
            b = unpack(b.cpu(), e, (out_features, n))
        if b.shape[0] != out_features or b.shape[1] > in_features // d:
            raise ValueError(f"codes shape {tuple(b.shape)} does not fit a [{out_features}, "
                             f"{in_features}] layer with d={d}")
        unpacked.append(b.cpu().numpy())
    if unpacked[0].shape[1] != in_features // d:
        raise ValueError("the first codebook must cover every vector-group")
    ctype = np.uint8 if max(code_bits) <= 8 else np.uint16
    tab, lrows = [], []
    cb_row = col = entry = 0
    for b, C in zip(unpacked, codebooks):
        n, K = b.shape[1], C.shape[0]
        tab.append((n, K, cb_row, col, entry))
        lrows += [(entry + g * K, K, cb_row, g * d) for g in range(n)]
        cb_row, col, entry = cb_row + K, col + n, entry + n * K
    cb = np.concatenate([to_numpy(C, np.float32) for C in codebooks])
    if perm is None:
        perm_np = np.zeros(0, dtype=np.int64)
    else:
        perm_np = to_numpy(perm, np.int64)
        if sorted(perm_np.tolist()) != list(range(in_features)):
            raise ValueError("perm must be a permutation of range(in_features)")
    return AdditivePrepared(
        cb=np.ascontiguousarray(cb), cbT=np.ascontiguousarray(cb.T),
        codes=np.ascontiguousarray(np.concatenate(unpacked, axis=1).astype(ctype).T),
        tab=np.asarray(tab, dtype=np.int64), lrows=np.asarray(lrows, dtype=np.int64),
        s=to_numpy(scales.reshape(-1), np.float32), perm=perm_np, dim=d,
        out_features=out_features, in_features=in_features)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@jit()
def _permute(x, perm):
    """x [T, in] -> x[:, perm] (a copy; x itself when perm is empty)."""
    if perm.shape[0] == 0:
        return x
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        for j in range(perm.shape[0]):
            out[t, j] = x[t, perm[j]]
    return out


@jit()
def _lut_rows8(xp, cbT, lut, e0, K, cr, xc):  # pragma: no cover - compiled
    """Table entries lut[t, e0 + c] = Σ_j xp[t, xc + j] · cbT[j, cr + c] for 8-vectors: the
    eight codebook rows and inputs held in registers, one store per entry (the general loop
    re-reads and re-writes the table row once per j: 9.2 against 4.4 µs for a 576-input layer's
    73 tables of 256 entries, measured here)."""
    c0, c1, c2, c3 = cbT[0, cr:cr + K], cbT[1, cr:cr + K], cbT[2, cr:cr + K], cbT[3, cr:cr + K]
    c4, c5, c6, c7 = cbT[4, cr:cr + K], cbT[5, cr:cr + K], cbT[6, cr:cr + K], cbT[7, cr:cr + K]
    for t in range(xp.shape[0]):
        lt = lut[t, e0:e0 + K]
        x0, x1, x2, x3 = xp[t, xc], xp[t, xc + 1], xp[t, xc + 2], xp[t, xc + 3]
        x4, x5, x6, x7 = xp[t, xc + 4], xp[t, xc + 5], xp[t, xc + 6], xp[t, xc + 7]
        for c in range(K):
            lt[c] = (((c0[c] * x0 + c1[c] * x1) + (c2[c] * x2 + c3[c] * x3))
                     + ((c4[c] * x4 + c5[c] * x5) + (c6[c] * x6 + c7[c] * x7)))


def _make_lut(parallel: bool):
    @jit(parallel=parallel)
    def kernel(x, perm, cbT, codesT, lrows, s, bounds, lut_size):
        xp = _permute(x, perm)
        T = xp.shape[0]
        d = cbT.shape[0]
        R = lrows.shape[0]
        for blk in range(bounds.shape[0] - 1):  # the first code rows load while the tables build
            prefetch_rows(codesT, 0, LUT_ROWS, bounds[blk], bounds[blk + 1])
        lut = np.empty((T, lut_size), dtype=np.float32)
        for r in prange(R):  # table row r: codebook k, group g -> <x_g, C_k[c]> for every c
            e0, K, cr, xc = lrows[r, 0], lrows[r, 1], lrows[r, 2], lrows[r, 3]
            if d == 8:  # the presets' dimension: one store per entry, inputs in registers
                _lut_rows8(xp, cbT, lut, e0, K, cr, xc)
                continue
            for t in range(T):
                lt = lut[t, e0:e0 + K]
                lt[:] = 0.0
                for j in range(d):
                    xv = xp[t, xc + j]
                    cj = cbT[j, cr:cr + K]
                    for c in range(K):
                        lt[c] += xv * cj[c]
        y = np.empty((T, codesT.shape[1]), dtype=np.float32)
        for blk in prange(bounds.shape[0] - 1):
            r0, r1 = bounds[blk], bounds[blk + 1]
            acc = np.empty(r1 - r0, dtype=np.float32)
            for t in range(T):
                acc[:] = 0.0
                r = 0
                while r + LUT_ROWS <= R:  # four table rows per pass over the outputs: 1/4 the acc traffic
                    prefetch_rows(codesT, r + LUT_ROWS, LUT_ROWS, r0, r1)  # the next four, ahead
                    l0 = lut[t, lrows[r, 0]:]
                    l1 = lut[t, lrows[r + 1, 0]:]
                    l2 = lut[t, lrows[r + 2, 0]:]
                    l3 = lut[t, lrows[r + 3, 0]:]
                    c0 = codesT[r, r0:r1]
                    c1 = codesT[r + 1, r0:r1]
                    c2 = codesT[r + 2, r0:r1]
                    c3 = codesT[r + 3, r0:r1]
                    for i in range(r1 - r0):
                        acc[i] += ((l0[np.int32(c0[i])] + l1[np.int32(c1[i])])
                                   + (l2[np.int32(c2[i])] + l3[np.int32(c3[i])]))
                    r += LUT_ROWS
                while r < R:
                    lg = lut[t, lrows[r, 0]:]
                    cr = codesT[r, r0:r1]
                    for i in range(r1 - r0):
                        acc[i] += lg[np.int32(cr[i])]
                    r += 1
                for i in range(r1 - r0):
                    y[t, r0 + i] = acc[i] * s[r0 + i]
        return y

    return kernel


def _make_decode(D: int, parallel: bool):
    @jit(parallel=parallel)
    def kernel(x, perm, cb, codesT, tab, s, bounds):
        xp = _permute(x, perm)
        T, n_in = xp.shape
        y = np.empty((T, codesT.shape[1]), dtype=np.float32)
        cbf = cb.ravel()
        for blk in prange(bounds.shape[0] - 1):
            buf = np.empty(n_in, dtype=np.float32)
            for i in range(bounds[blk], bounds[blk + 1]):
                for k in range(tab.shape[0]):
                    n, cr, col = tab[k, 0], tab[k, 2], tab[k, 3]
                    for g in range(n):
                        c = np.uint64(cr + np.intp(codesT[col + g, i])) * np.uint64(D)
                        b = np.uint64(g * D)
                        if k == 0:
                            for j in range(D):
                                buf[b + np.uint64(j)] = cbf[c + np.uint64(j)]
                        else:
                            for j in range(D):
                                buf[b + np.uint64(j)] += cbf[c + np.uint64(j)]
                for t in range(T):
                    xt = xp[t]
                    a = np.float32(0.0)
                    for j in range(n_in):
                        a += buf[j] * xt[j]
                    y[t, i] = a * s[i]
        return y

    return kernel


_LUT = MappingProxyType({par: _make_lut(par) for par in (False, True)})
_DECODE = MappingProxyType({(D, par): _make_decode(D, par) for D in DIMS for par in (False, True)})


def use_lut(T: int, p: AdditivePrepared) -> bool:
    """Cost estimate (cycles, measured on this lab's 2-core Xeon): table build ~T·Σn·K·d/12 +
    lookups ~T·out·Σn, against row decode ~out·Σn·(2 + d/8) + dots ~T·out·in/12."""
    n_codes = p.codes.shape[0]
    out = p.out_features
    lut = T * (p.lut_size * p.dim / 12.0 + out * n_codes)
    dec = out * n_codes * (2.0 + p.dim / 8.0) + T * out * p.in_features / 12.0
    return lut <= dec


def additive_matmul(x: torch.Tensor, prepared: AdditivePrepared, path: str | None = None,
                    threads: int | None = None) -> torch.Tensor:
    """y = x Ŵᵀ for AQLM/CRVQ codes; x [..., in] -> [..., out] float32 (no autograd).

    path: None (cost estimate), "lut" or "decode" (for tests and benchmarks); threads: None/1 =
    the calling thread only, n > 1 = numba's pool (see _common.num_blocks)."""
    p = prepared
    xn, lead, nb, bounds = call_layout(x, p.in_features, p.out_features, p.blocks, threads)
    T = xn.shape[0]
    if T == 0:
        return torch.zeros(*lead, p.out_features)
    if path is None:
        path = "lut" if use_lut(T, p) else "decode"
    if path == "lut":
        y = _LUT[nb > 1](xn, p.perm, p.cbT, p.codes, p.lrows, p.s, bounds, p.lut_size)
    elif path == "decode":
        y = _DECODE[p.dim, nb > 1](xn, p.perm, p.cb, p.codes, p.tab, p.s, bounds)
    else:
        raise ValueError(f"path must be None, 'lut' or 'decode', got {path!r}")
    return from_rows(y, lead)


class AdditiveKernel:
    """``x -> x Ŵᵀ`` for an additive layer, the object ``AdditiveWeight.kernel()`` hands out: many
    tokens (a prompt's prefill) go to ``dense`` (the layer's own decode-and-multiply, torch on
    every thread), a few to ``additive_matmul``, one fp32 token straight to its compiled
    function (``one_token``: (fn, args) with fn(x [1, in], *args) -> y [1, out], which a rotated
    layer fuses with its transforms, lvq/kernels/hadamard.py)."""

    def __init__(self, prepared: AdditivePrepared, dense: Callable[[torch.Tensor], torch.Tensor]) -> None:
        p = self.prepared = prepared
        self.dense = dense
        self.in_features, self.out_features = p.in_features, p.out_features
        if use_lut(1, p):
            self.one_token = (_LUT[False], (p.perm, p.cbT, p.codes, p.lrows, p.s, p.blocks[1], p.lut_size))
        else:
            self.one_token = (_DECODE[p.dim, False], (p.perm, p.cb, p.codes, p.tab, p.s, p.blocks[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = one_token_call(self.one_token, x, self.in_features, self.out_features)
        if y is not None:
            return y
        if x.numel() > DENSE_MIN_TOKENS * self.in_features:
            return self.dense(x.to(torch.float32))
        return additive_matmul(x, self.prepared)


def permutation_index(perm_packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Unpack a stored permutation (⌈log₂ in⌉ bits per index, lvq/crvq.py) -> int64 [in]."""
    return unpack(perm_packed.cpu(), max(1, math.ceil(math.log2(in_features))), (in_features,))
