"""Scalar-code kernels (RTN/GPTQ), and the grouped integer-code product they share with GLVQ.

The product. Column group g of a layer holds codes q_ij (width b_g) with, per row, a scale s_ig
and a zero z_ig; input u (x itself, or a per-group transform of x for lattices). Then

    y_ti = Σ_g s_ig (Σ_{j∈g} q_ij u_tj − z_ig Σ_{j∈g} u_tj)

so the codes never become floats outside registers. A group may instead be "dense" (GLVQ's
companded groups): fp16 values X_ij and y_ti += s_ig Σ_j X_ij u_tj.

Prepared layout (``GroupedCodes``), chosen for SIMD over rows:
* codes are re-packed into uint32 words of K = ⌊32/b⌋ consecutive columns of one row (b = 2:
  16 columns, b = 3: 10, b = 7: 4; 94-100% of the bits used except b = 7, 8, 9), stored
  word-row-major ``words[n_word_rows, out]``: word-row r of group g holds its columns
  c0 + K·r … c0 + K·r + K − 1 for every output row, contiguous over rows;
* field m of a word is read as float32(word & (mask << b·m)) = q·2^{b·m} (exact) and multiplied
  by u_j·2^{−b·m}, so unpacking costs one AND and one conversion per code (no shifts);
* each thread owns a block of output rows; tokens go through in blocks of 4 that share one
  unpacking of the words (T = 1 has its own loop).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
from numba import prange
from numba.np.unsafe.ndarray import to_fixed_tuple

from ..packing import unpack
from ._common import (DENSE_MIN_TOKENS, all_row_blocks, as_rows, call_layout, field_f32, from_rows,
                      half_f32, jit, one_token_call, prefetch_rows, row_blocks)

MAX_WORD_BITS = 9  # lattices' E8 codes are widened to b + 1 <= 9 bits (lvq/kernels/lattice.py)
KIND_CODES, KIND_DENSE = 0, 1
XFORM_NONE, XFORM_MATRIX, XFORM_SCALAR = 0, 1, 2
DENSE_ROWS = 8  # dense (fp16) groups are padded to a multiple of this many columns
# Word-rows read ahead of use (software prefetch, ``_common.prefetch``). The hosts this lab runs
# on (2-vCPU VMs) barely prefetch for a kernel that streams its rows this slowly: one token
# through all 210 layers of a GPTQ 3-bit run of the bundled model (each layer once, in turn, so
# its codes come from L3) took 12.5 ms per pass without, 6.8 ms with one row ahead (7.9 with two,
# 7.0 with four); 5.8 ms when the same layer runs again and again from L2 (paired probes, alone).
PREFETCH_ROWS = 1
# One token through a layer with more rows than TILE_MIN_ROWS (the bundled model's 8-bit
# vocabulary head, 49152 rows: 196 kB of accumulators, 4x L1) runs in tiles of TILE_ROWS rows:
# in a decoding model its head took 2.5-3.2 ms per token against 3.4-3.9 untiled (paired probes).
TILE_ROWS = 512
TILE_MIN_ROWS = 4096


@dataclass(frozen=True)
class GroupedCodes:
    """A layer prepared for ``grouped_matmul``; all arrays are numpy, read-only by convention.

    words: uint32 [n_word_rows, out]; dense: uint16 [n_dense_rows, out] (fp16 bit patterns);
    gtab: int64 [G, 7] per group (kind, first row in words/dense, number of word-rows or of
    8-column dense chunks, bits, first input column, number of columns, transform); xform:
    float32 [G, d, d] (per-group input transform; [G, 1, 1] when unused); s, sz: float32
    [G, out] (scale, scale·zero). ``classes``: ((bits or 0 for dense, group indices), ...), one
    kernel call each.
    """

    words: np.ndarray
    dense: np.ndarray
    gtab: np.ndarray
    xform: np.ndarray
    s: np.ndarray
    sz: np.ndarray
    out_features: int
    in_features: int
    classes: tuple = field(init=False, repr=False, compare=False)
    blocks: tuple = field(init=False, repr=False, compare=False)
    single: tuple | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", all_row_blocks(self.out_features))
        keys = [0 if k == KIND_DENSE else int(b) for k, b in zip(self.gtab[:, 0], self.gtab[:, 3])]
        classes = tuple((key, np.asarray([g for g, k in enumerate(keys) if k == key], dtype=np.int64))
                        for key in sorted(set(keys)))
        object.__setattr__(self, "classes", classes)
        single = None  # (kernel, its arguments after x) of the one-token, one-width hot path
        if len(classes) == 1:
            single = (classes[0][0], (self.words, self.dense, self.gtab, self.xform, classes[0][1],
                                      self.s, self.sz, one_token_tiles(self.out_features)))
        object.__setattr__(self, "single", single)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.words, self.dense, self.gtab, self.xform, self.s, self.sz))


def one_token_tiles(n_rows: int) -> np.ndarray:
    """Row-block bounds for the one-token, one-thread call: one block, except for layers with
    more than ``TILE_MIN_ROWS`` rows (a vocabulary head), which go through in ``TILE_ROWS``-row
    tiles so that the accumulators stay in L1 while every word-row passes over them."""
    if n_rows <= TILE_MIN_ROWS:
        return row_blocks(n_rows, 1)
    return row_blocks(n_rows, -(-n_rows // TILE_ROWS))


def words_per_row(n: int, bits: int) -> int:
    """Word-rows needed for n columns of ``bits``-bit codes (K = ⌊32/bits⌋ codes per word)."""
    return -(-n // (32 // bits))


def pack_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes [out, n] (< 2^bits) -> uint32 words [⌈n/K⌉, out], K = ⌊32/bits⌋ columns per
    word, column K·r + m of a row in bits b·m … b·m + b − 1 of its word r (zero padded)."""
    if not 1 <= bits <= MAX_WORD_BITS:
        raise ValueError(f"word packing supports 1..{MAX_WORD_BITS} bits, got {bits}")
    out, n = codes.shape
    K = 32 // bits
    nw = words_per_row(n, bits)
    q = np.zeros((out, nw * K), dtype=np.uint64)
    q[:, :n] = codes
    shifts = (np.arange(K, dtype=np.uint64) * np.uint64(bits))
    w = (q.reshape(out, nw, K) << shifts).sum(axis=2, dtype=np.uint64)
    return np.ascontiguousarray(w.astype(np.uint32).T)


# ----------------------------------------------------------------------------------------------
# The kernel: one compiled specialisation per (code width or dense, token block, parallel)
# ----------------------------------------------------------------------------------------------
def _make_kernel(bits: int, tb: int, parallel: bool):
    """Kernel for the groups ``gsel`` of one width ``bits`` (0: dense fp16 groups), ``tb`` = 1
    (one token) or 4 (tokens in blocks of four sharing the unpacking), adding into y.

    kernel(u [Tp, in], usum [Tp, G], words, dense, gtab, gsel [n], s, sz, y [Tp, out], bounds)
    with Tp = 1 (tb = 1) or a multiple of 4, bounds [n_blocks + 1] the row blocks (threads).
    Width, K = ⌊32/bits⌋ fields per word and the token block are compile-time constants. The
    fields go through the row loop CH at a time with their inputs held in tuples (registers):
    array loads there would alias the accumulator stores and stop LLVM from vectorising over
    rows; CH <= 10 keeps the per-field loop small enough to unroll fully.
    """
    dense_mode = bits == 0
    K = 8 if dense_mode else 32 // bits
    CH = K if K <= 10 else 8
    NCH = K // CH
    MASK = 0 if dense_mode else (1 << bits) - 1
    BITS = max(bits, 1)
    STEP = 1.0 if dense_mode else 1.0 / (1 << bits)
    TB = tb

    @jit(parallel=parallel)
    def kernel(u, usum, words, dense, gtab, gsel, s, sz, y, bounds):
        Tp = u.shape[0]
        for blk in prange(bounds.shape[0] - 1):
            r0, r1 = bounds[blk], bounds[blk + 1]
            nr = r1 - r0
            acc = np.empty((TB, nr), dtype=np.float32)
            v = np.zeros((4, K), dtype=np.float32)
            if not dense_mode:  # the first word-rows and the first group's scales, ahead of use
                prefetch_rows(words, gtab[gsel[0], 1], PREFETCH_ROWS, r0, r1)
            prefetch_rows(s, gsel[0], 1, r0, r1)
            prefetch_rows(sz, gsel[0], 1, r0, r1)
            for gi in range(gsel.shape[0]):
                g = gsel[gi]
                first, nrows, c0, n = gtab[g, 1], gtab[g, 2], gtab[g, 4], gtab[g, 5]
                cend = c0 + n
                if gi + 1 < gsel.shape[0]:
                    prefetch_rows(s, gsel[gi + 1], 1, r0, r1)
                    prefetch_rows(sz, gsel[gi + 1], 1, r0, r1)
                for t in range(0, Tp, TB):
                    acc[:, :] = 0.0
                    for w in range(nrows):
                        c = c0 + w * K
                        if not dense_mode:
                            prefetch_rows(words, first + w + PREFETCH_ROWS, 1, r0, r1)
                        for k in range(TB):
                            sc = np.float32(1.0)
                            for m in range(K):
                                v[k, m] = u[t + k, c + m] * sc if c + m < cend else np.float32(0.0)
                                sc *= np.float32(STEP)
                        for ch in range(NCH):
                            f0 = ch * CH
                            v0 = to_fixed_tuple(v[0, f0:f0 + CH], CH)
                            v1 = to_fixed_tuple(v[1, f0:f0 + CH], CH)
                            v2 = to_fixed_tuple(v[2, f0:f0 + CH], CH)
                            v3 = to_fixed_tuple(v[3, f0:f0 + CH], CH)
                            if dense_mode:
                                d0 = first + w * K + f0  # CH = 8 rows, each contiguous
                                prefetch_rows(dense, d0 + CH * PREFETCH_ROWS, CH, r0, r1)
                                rows = (dense[d0, r0:r1], dense[d0 + 1, r0:r1], dense[d0 + 2, r0:r1],
                                        dense[d0 + 3, r0:r1], dense[d0 + 4, r0:r1], dense[d0 + 5, r0:r1],
                                        dense[d0 + 6, r0:r1], dense[d0 + 7, r0:r1])
                                for k in range(TB):  # one token at a time: vectorises
                                    vk = v0 if k == 0 else (v1 if k == 1 else (v2 if k == 2 else v3))
                                    ak = acc[k]
                                    for i in range(nr):
                                        a = np.float32(0.0)
                                        for m in range(CH):
                                            a += half_f32(rows[m][i]) * vk[m]
                                        ak[i] += a
                            else:
                                row = words[first + w, r0:r1]
                                for i in range(nr):
                                    wd = row[i]
                                    a0 = np.float32(0.0)
                                    a1 = np.float32(0.0)
                                    a2 = np.float32(0.0)
                                    a3 = np.float32(0.0)
                                    for m in range(CH):
                                        f = field_f32(wd, np.uint32(MASK << (BITS * (f0 + m))))
                                        a0 += f * v0[m]
                                        if TB == 4:
                                            a1 += f * v1[m]
                                            a2 += f * v2[m]
                                            a3 += f * v3[m]
                                    acc[0, i] += a0
                                    if TB == 4:
                                        acc[1, i] += a1
                                        acc[2, i] += a2
                                        acc[3, i] += a3
                    sg = s[g, r0:r1]
                    szg = sz[g, r0:r1]
                    for k in range(TB):
                        us = usum[t + k, g]
                        yk = y[t + k, r0:r1]
                        ak = acc[k]
                        for i in range(nr):
                            yk[i] += sg[i] * ak[i] - szg[i] * us

    return kernel


# Every specialisation, created (not compiled) once: {(bits, tb, parallel): dispatcher}.
_KERNELS = MappingProxyType({(b, tb, par): _make_kernel(b, tb, par)
                             for b in range(MAX_WORD_BITS + 1) for tb in (1, 4)
                             for par in (False, True)})


@jit()
def _prologue(x, gtab, xform):
    """u [Tp, in]: x with each group's input transform (Tp = 1, or T rounded up to a multiple of
    4 with zero rows), and usum [Tp, G] = Σ of u over each group's columns."""
    T, n_in = x.shape
    Tp = 1 if T == 1 else -(-T // 4) * 4
    G = gtab.shape[0]
    d = xform.shape[1]
    u = np.zeros((Tp, n_in), dtype=np.float32)
    usum = np.zeros((Tp, G), dtype=np.float32)
    for t in range(T):
        for g in range(G):
            c0, n, xf = gtab[g, 4], gtab[g, 5], gtab[g, 6]
            if xf == XFORM_MATRIX:  # u_v = Aᵀ x_v for every d-vector v of the group
                for c in range(c0, c0 + n, d):
                    for a in range(d):
                        acc = np.float32(0.0)
                        for b in range(d):
                            acc += xform[g, b, a] * x[t, c + b]
                        u[t, c + a] = acc
            elif xf == XFORM_SCALAR:
                f = xform[g, 0, 0]
                for c in range(c0, c0 + n):
                    u[t, c] = f * x[t, c]
            else:
                for c in range(c0, c0 + n):
                    u[t, c] = x[t, c]
            tot = np.float32(0.0)
            for c in range(c0, c0 + n):
                tot += u[t, c]
            usum[t, g] = tot
    return u, usum


@jit()
def _dense(words, dense, gtab, xform, s, sz, W):
    """W [out, in] = Ŵ of a prepared layer (fills every column; see ``grouped_dense``)."""
    out = W.shape[0]
    d = xform.shape[1]
    c = np.empty(W.shape[1], dtype=np.float32)
    for i in range(out):
        for g in range(gtab.shape[0]):
            kind, first, nrows, bits, c0, n, xf = (gtab[g, 0], gtab[g, 1], gtab[g, 2], gtab[g, 3],
                                                   gtab[g, 4], gtab[g, 5], gtab[g, 6])
            sg, szg = s[g, i], sz[g, i]
            if kind == KIND_DENSE:
                for j in range(n):
                    c[c0 + j] = sg * half_f32(dense[first + j, i]) - szg
            else:
                K = 32 // bits
                mask = (1 << bits) - 1
                for w in range(nrows):
                    wd = np.int64(words[first + w, i])
                    for m in range(K):
                        j = w * K + m
                        if j < n:
                            c[c0 + j] = sg * np.float32((wd >> (bits * m)) & mask) - szg
            if xf == XFORM_SCALAR:
                f = xform[g, 0, 0]
                for j in range(c0, c0 + n):
                    W[i, j] = f * c[j]
            elif xf == XFORM_MATRIX:  # W_v = A c_v for every d-vector v of the group
                for v in range(c0, c0 + n, d):
                    for b in range(d):
                        acc = np.float32(0.0)
                        for a in range(d):
                            acc += xform[g, b, a] * c[v + a]
                        W[i, v + b] = acc
            else:
                for j in range(c0, c0 + n):
                    W[i, j] = c[j]


def grouped_dense(p: GroupedCodes) -> torch.Tensor:
    """Ŵ [out, in] float32 of a prepared layer, such that ``x @ Ŵᵀ`` equals ``grouped_matmul``
    up to float rounding: per group, c = s·q − s·z (or s·X for fp16 groups), then the group's
    input transform applied to the weights' side (W_v = A c_v for a d × d transform A)."""
    W = np.empty((p.out_features, p.in_features), dtype=np.float32)
    _dense(p.words, p.dense, p.gtab, p.xform, p.s, p.sz, W)
    return torch.from_numpy(W)


def _make_single(bits: int):
    """One token, one code width, one thread: prologue, output and kernel in one compiled call
    (the decode hot path; each Python-level numba call costs microseconds of argument checks)."""
    kernel = _KERNELS[bits, 1, False]

    @jit()
    def single(x, words, dense, gtab, xform, gsel, s, sz, bounds):
        u, usum = _prologue(x, gtab, xform)
        y = np.zeros((1, s.shape[1]), dtype=np.float32)
        kernel(u, usum, words, dense, gtab, gsel, s, sz, y, bounds)
        return y

    return single


_SINGLE = MappingProxyType({b: _make_single(b) for b in range(MAX_WORD_BITS + 1)})


class GroupedKernel:
    """``x -> grouped_matmul(x, prepared)``, the kernel object a quantized weight hands out
    (``QuantizedWeight.kernel()``); a single fp32 token through a one-width layer goes straight
    to its compiled one-token function, on the calling thread. (Splitting a vocabulary head's
    product over a second thread was measured in a decoding model and dropped: torch's OpenMP
    threads, still spinning after each op, took the core the worker needed; 8-bit-head runs
    decoded 2 % faster without it.)"""

    def __init__(self, prepared: GroupedCodes) -> None:
        self.prepared = prepared
        self.in_features, self.out_features = prepared.in_features, prepared.out_features
        # (fn, args): fn(x [1, in], *args) -> y [1, out]; RotatedKernel fuses it with its transforms
        self.one_token = None if prepared.single is None else (_SINGLE[prepared.single[0]], prepared.single[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = one_token_call(self.one_token, x, self.in_features, self.out_features)
        return y if y is not None else grouped_matmul(x, self.prepared)


def grouped_matmul(x: torch.Tensor, p: GroupedCodes, threads: int | None = None) -> torch.Tensor:
    """y = x Ŵᵀ for a prepared layer; x [..., in] float -> y [..., out] float32 (no autograd).
    Above ``DENSE_MIN_TOKENS`` tokens Ŵ is decoded for the call (``grouped_dense``) and multiplied
    by torch. threads: None/1 = the calling thread only; n > 1 = numba's pool (see
    _common.num_blocks)."""
    n = x.numel()
    if n == p.in_features and p.single is not None and (threads is None or threads <= 1):
        xn, lead = as_rows(x, p.in_features)  # one token: one compiled call
        return from_rows(_SINGLE[p.single[0]](xn, *p.single[1]), lead)
    if n > DENSE_MIN_TOKENS * p.in_features:  # many tokens (prefill): decode Ŵ once
        return torch.nn.functional.linear(x.to(torch.float32), grouped_dense(p))
    xn, lead, nb, bounds = call_layout(x, p.in_features, p.out_features, p.blocks, threads)
    T = xn.shape[0]
    if T == 0:
        return torch.zeros(*lead, p.out_features)
    u, usum = _prologue(xn, p.gtab, p.xform)
    y = np.zeros((u.shape[0], p.out_features), dtype=np.float32)
    tb = 1 if T == 1 else 4
    for bits, gsel in p.classes:
        _KERNELS[bits, tb, nb > 1](u, usum, p.words, p.dense, p.gtab, gsel, p.s, p.sz, y, bounds)
    return from_rows(y[:T], lead)


# ----------------------------------------------------------------------------------------------
# RTN / GPTQ
# ----------------------------------------------------------------------------------------------
def prepare_scalar(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   group_size: int, out_features: int, in_features: int) -> GroupedCodes:
    """RTN/GPTQ stored form -> kernel layout.

    codes: packed uint8 (lvq.packing, [out, in] at ``bits`` bits) or already unpacked integer
    codes [out, in]; scale, zero: [out, n_groups] (fp16 as stored) for Ŵ_ij = (q_ij − z)·s per
    group of ``group_size`` input columns (the last group may be partial). Memory: the codes at
    ⌈in_g/K⌉ words per row and group (about ``bits`` bits per weight) plus 8 bytes per
    (row, group) for s and s·z.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"scalar codes are 1..8 bits, got {bits}")
    if codes.dim() == 1:
        codes = unpack(codes.cpu(), bits, (out_features, in_features))
    if tuple(codes.shape) != (out_features, in_features):
        raise ValueError(f"codes shape {tuple(codes.shape)} != ({out_features}, {in_features})")
    G = -(-in_features // group_size)
    if tuple(scale.shape) != (out_features, G) or tuple(zero.shape) != (out_features, G):
        raise ValueError(f"scale/zero must be [{out_features}, {G}], got {tuple(scale.shape)}, "
                         f"{tuple(zero.shape)}")
    q = codes.cpu().numpy()
    parts, gtab, r = [], [], 0
    for g, a in enumerate(range(0, in_features, group_size)):
        b = min(a + group_size, in_features)
        w = pack_words(q[:, a:b], bits)
        parts.append(w)
        gtab.append((KIND_CODES, r, w.shape[0], bits, a, b - a, XFORM_NONE))
        r += w.shape[0]
    s = scale.detach().cpu().to(torch.float32)
    sz = s * zero.detach().cpu().to(torch.float32)
    return GroupedCodes(
        words=np.ascontiguousarray(np.concatenate(parts)),
        dense=np.zeros((0, out_features), dtype=np.uint16),
        gtab=np.asarray(gtab, dtype=np.int64), xform=np.zeros((G, 1, 1), dtype=np.float32),
        s=np.ascontiguousarray(s.T.numpy()), sz=np.ascontiguousarray(sz.T.numpy()),
        out_features=out_features, in_features=in_features)


def scalar_matmul(x: torch.Tensor, prepared: GroupedCodes, threads: int | None = None) -> torch.Tensor:
    """y = x Ŵᵀ for RTN/GPTQ codes; x [..., in] -> [..., out] float32 (threads: see grouped_matmul)."""
    return grouped_matmul(x, prepared, threads)
