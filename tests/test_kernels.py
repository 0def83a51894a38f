"""The CPU kernels of lvq/kernels equal the dense product: decode Ŵ with plain torch, F.linear.

Shapes are deliberately odd (out, in not multiples of 8 or of the group size; partial last
groups); every kernel is checked at T = 1, 3, 8 and 24 tokens (the last through the decode of
Ŵ from the prepared layout that prefill uses). A few layers are large enough
(>= 2^17 weights) to take the multi-threaded path when asked (threads=2). First run: ~1 min of numba compilation
(cached next to the modules afterwards).
"""
from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvq.companding import expand
from lvq.kernels import (additive_matmul, lattice_matmul, prepare_additive, prepare_lattice,
                         prepare_scalar, scalar_matmul)
from lvq.kernels._common import PARALLEL_MIN_WEIGHTS, jit, prefetch_rows
from lvq.packing import pack

TOKENS = (1, 3, 8, 24)  # 24 > DENSE_MIN_TOKENS: Ŵ decoded from the prepared layout


def close(y: torch.Tensor, ref: torch.Tensor, rel: float = 2e-5) -> None:
    """Equal up to float rounding: |y − ref| <= rel · max|ref| elementwise."""
    assert y.shape == ref.shape and y.dtype == torch.float32
    tol = rel * float(ref.abs().max().clamp_min(1e-6))
    err = float((y - ref).abs().max())
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


# ----------------------------------------------------------------------------------------------
# Scalar (RTN / GPTQ)
# ----------------------------------------------------------------------------------------------
def scalar_reference(q, s, z, group_size):
    g = torch.arange(q.shape[1]) // group_size
    return (q.float() - z.float()[:, g]) * s.float()[:, g]


@pytest.mark.parametrize("bits", range(1, 9))
def test_scalar_every_width(bits):
    out_f, in_f, gs = 37, 203, 64  # last group: 11 columns
    G = -(-in_f // gs)
    q = torch.randint(0, 1 << bits, (out_f, in_f))
    s = (torch.rand(out_f, G) + 0.1).half()
    z = (torch.rand(out_f, G) * ((1 << bits) - 1)).half()
    p = prepare_scalar(pack(q, bits), s, z, bits, gs, out_f, in_f)
    W = scalar_reference(q, s, z, gs)
    for T in TOKENS:
        x = torch.randn(T, in_f)
        close(scalar_matmul(x, p), F.linear(x, W))


def test_one_token_through_a_tall_layer_goes_in_tiles():
    """A layer taller than TILE_MIN_ROWS (a vocabulary head) runs one token tile by tile: same
    result, and the last, partial tile included."""
    from lvq.kernels.scalar import TILE_MIN_ROWS, TILE_ROWS, one_token_tiles
    out_f, in_f, gs, bits = TILE_MIN_ROWS + TILE_ROWS + 37, 96, 64, 8
    q = torch.randint(0, 1 << bits, (out_f, in_f))
    s = (torch.rand(out_f, 2) + 0.1).half()
    z = (torch.rand(out_f, 2) * 255).half()
    p = prepare_scalar(pack(q, bits), s, z, bits, gs, out_f, in_f)
    bounds = p.single[1][-1]
    assert len(bounds) - 1 == -(-out_f // TILE_ROWS) and bounds[-1] == out_f
    assert len(one_token_tiles(TILE_MIN_ROWS)) == 2  # a model's own layers: one block
    x = torch.randn(1, in_f)
    close(scalar_matmul(x, p), F.linear(x, scalar_reference(q, s, z, gs)))


@pytest.mark.parametrize("bits", [2, 8])
def test_grouped_kernel_one_token_paths(bits):
    """GroupedKernel's one-token path, in every shape generate passes, equals the reference."""
    from lvq.kernels import GroupedKernel

    out_f, in_f, gs = 133, 96, 32
    q = torch.randint(0, 1 << bits, (out_f, in_f))
    s = (torch.rand(out_f, 3) + 0.1).half()
    z = (torch.rand(out_f, 3) * ((1 << bits) - 1)).half()
    p = prepare_scalar(q, s, z, bits, gs, out_f, in_f)
    W = scalar_reference(q, s, z, gs)
    k = GroupedKernel(p)
    for shape in ((in_f,), (1, in_f), (1, 1, in_f), (3, in_f)):
        x = torch.randn(shape)
        y = k(x)
        assert y.shape == (*shape[:-1], out_f)
        close(y, F.linear(x, W))


def test_scalar_from_rtn_multithreaded_and_batched_shapes():
    from lvq.baselines import quantize_rtn
    from lvq.config import RTNConfig

    out_f, in_f = 300, 450  # 135k weights: the multi-threaded path; last group 66 columns
    assert out_f * in_f >= PARALLEL_MIN_WEIGHTS
    W = torch.randn(out_f, in_f)
    qw = quantize_rtn(W, None, RTNConfig(bits=3, group_size=128))
    p = prepare_scalar(qw.codes, qw.scale, qw.zero, 3, 128, out_f, in_f)
    W_hat = qw.dequantize()
    for T in TOKENS:
        x = torch.randn(T, in_f)
        for threads in (None, 2):
            close(scalar_matmul(x, p, threads=threads), F.linear(x, W_hat))
    x = torch.randn(2, 3, in_f, dtype=torch.float64)  # any leading shape and dtype
    y = scalar_matmul(x, p)
    assert y.shape == (2, 3, out_f)
    close(y, F.linear(x.float(), W_hat))
    assert scalar_matmul(torch.randn(0, in_f), p).shape == (0, out_f)
    assert p.nbytes < W.numel() * 4 / 5


def test_scalar_rejects_bad_input():
    q = torch.randint(0, 4, (8, 16))
    s = torch.ones(8, 1).half()
    with pytest.raises(ValueError):
        prepare_scalar(pack(q, 2), s, s, 9, 16, 8, 16)
    with pytest.raises(ValueError):
        prepare_scalar(q, torch.ones(8, 2).half(), s, 2, 16, 8, 16)
    p = prepare_scalar(q, s, s, 2, 16, 8, 16)
    with pytest.raises(ValueError):
        scalar_matmul(torch.randn(1, 15), p)


# ----------------------------------------------------------------------------------------------
# Additive (AQLM / CRVQ)
# ----------------------------------------------------------------------------------------------
def additive_reference(codes, books, s, perm, out_f, in_f, d):
    Wp = torch.zeros(out_f, in_f)
    for b, C in zip(codes, books):
        n = b.shape[1]
        Wp[:, :n * d] += C.float()[b].reshape(out_f, n * d)
    Wp = Wp * s.float()[:, None]
    if perm is None:
        return Wp
    W = torch.empty_like(Wp)
    W[:, perm] = Wp
    return W


@pytest.mark.parametrize("bits,d,permuted,extended", [
    ((4,), 8, False, False), ((6, 6), 4, False, False), ((8,), 2, True, False),
    ((10,), 16, False, False), ((12, 4, 8), 8, False, False), ((8, 6, 6, 6), 8, True, True),
    ((4, 10), 4, True, True),
])
def test_additive(bits, d, permuted, extended):
    out_f, in_f = 29, 176
    G = in_f // d
    books = [torch.randn(1 << e, d).half() for e in bits]
    ns = [G] + [(3 if extended else G)] * (len(bits) - 1)
    codes = [torch.randint(0, 1 << e, (out_f, n)) for e, n in zip(bits, ns)]
    s = (torch.rand(out_f) + 0.5).half()
    perm = torch.randperm(in_f) if permuted else None
    W = additive_reference(codes, books, s, perm, out_f, in_f, d)
    packed = [pack(b, e) for b, e in zip(codes, bits)]
    for stored in (packed, codes):  # packed buffers or unpacked codes
        p = prepare_additive(stored, books, s, perm, bits, out_f, in_f)
        for T in TOKENS:
            x = torch.randn(T, in_f)
            ref = F.linear(x, W)
            for path in (None, "lut", "decode"):
                close(additive_matmul(x, p, path), ref)


def test_additive_from_quantizers_multithreaded():
    from lvq.config import AQLMConfig, CRVQConfig
    from lvq.crvq import quantize_aqlm, quantize_crvq

    W = torch.randn(24, 64)
    for q in (quantize_aqlm(W, None, AQLMConfig(dim=8, codebook_bits=4, num_codebooks=2, epochs=1,
                                                adam_steps=2, kmeans_iters=2)),
              quantize_crvq(W, None, CRVQConfig(dim=8, codebook_bits=4, extended_bits=3,
                                                num_extended=2, critical_ratio=0.2, epochs=1,
                                                adam_steps=2, kmeans_iters=2))):
        p = prepare_additive(q.codes, q.codebooks, q.scales, q.perm_index, q.code_bits,
                             q.out_features, q.in_features)
        for T in TOKENS:
            x = torch.randn(T, 64)
            close(additive_matmul(x, p), F.linear(x, q.dequantize()))
    # a layer large enough for the threaded kernels, both paths
    out_f, in_f = 520, 256
    books = [torch.randn(256, 8).half()]
    codes = [torch.randint(0, 256, (out_f, in_f // 8))]
    s = torch.rand(out_f).half()
    p = prepare_additive(codes, books, s, None, [8], out_f, in_f)
    W = additive_reference(codes, books, s, None, out_f, in_f, 8)
    for T in TOKENS:
        x = torch.randn(T, in_f)
        for path in ("lut", "decode"):
            close(additive_matmul(x, p, path, threads=2), F.linear(x, W))


def test_additive_rejects_bad_input():
    books = [torch.randn(16, 8).half()]
    codes = [torch.randint(0, 16, (4, 8))]
    with pytest.raises(ValueError):
        prepare_additive(codes, books, torch.ones(4), None, [4], 4, 60)  # d does not divide in
    with pytest.raises(ValueError):
        prepare_additive(codes, books, torch.ones(4), torch.zeros(64, dtype=torch.long), [4], 4, 64)
    with pytest.raises(ValueError):
        prepare_additive([torch.randint(0, 16, (4, 4))], books, torch.ones(4), None, [4], 4, 64)
    p = prepare_additive(codes, books, torch.ones(4), None, [4], 4, 64)
    with pytest.raises(ValueError):
        additive_matmul(torch.randn(1, 64), p, path="dense")


# ----------------------------------------------------------------------------------------------
# Lattice (GLVQ)
# ----------------------------------------------------------------------------------------------
def lattice_reference(codes, widths, scales, gens, mus, d):
    cols = []
    for g, (U, b, G, mu) in enumerate(zip(codes, widths, gens, mus)):
        Y = ((U.reshape(-1, d) - (1 << (b - 1))).float() + 0.5) @ G.T
        Y = Y.reshape(U.shape)
        if mu > 0:
            Y = expand(Y, mu)
        cols.append(scales[:, g:g + 1].float() * Y)
    return torch.cat(cols, 1)


@pytest.mark.parametrize("d", [2, 8])
def test_lattice_babai_mixed_widths_and_mu(d):
    out_f, sizes = 45, [64, 64, 64, 24]  # last group partial
    widths = [1, 3, 8, 2]
    mus = [0.0, 25.0, 0.0, 120.0]  # half the groups companded
    codes = [torch.randint(0, 1 << b, (out_f, n)) for b, n in zip(widths, sizes)]
    gens = [torch.randn(d, d) * 0.3 / (1 << b) for b in widths]
    scales = (torch.rand(out_f, len(sizes)) + 0.2).half()
    W = lattice_reference(codes, widths, scales, gens, mus, d)
    p = prepare_lattice(codes, widths, scales, gens, mus, d)
    for T in TOKENS:
        x = torch.randn(T, sum(sizes))
        close(lattice_matmul(x, p), F.linear(x, W), rel=2e-3)  # companded groups cached in fp16
    p0 = prepare_lattice(codes, widths, scales, gens, [0.0] * 4, d)
    W0 = lattice_reference(codes, widths, scales, gens, [0.0] * 4, d)
    x = torch.randn(3, sum(sizes))
    close(lattice_matmul(x, p0), F.linear(x, W0))


def _glvq_prepare(q):
    G = len(q.widths)
    return prepare_lattice(q.group_codes(), q.widths, q.scales,
                           [q.group_generator(g) for g in range(G)],
                           [0.0 if q.group_mu(g) is None else float(q.group_mu(g)) for g in range(G)],
                           q.dim, q.decoder, q.lattice)


@pytest.mark.parametrize("opts", [
    dict(dim=8, bits=2.5),  # learned Babai, mixed widths, companding where it helps
    dict(dim=8, decoder="nearest", lattice="E8"),
    dict(dim=8, decoder="nearest", lattice="E8P", bits=2.0),  # 4-bit re-coding of the coordinates
    dict(dim=4, decoder="nearest", lattice="D"),
    dict(dim=2, decoder="nearest", lattice="Z", bits=3.0),
])
def test_lattice_from_glvq(opts):
    from lvq.config import GLVQConfig
    from lvq.glvq import quantize_glvq

    W = torch.randn(33, 200) * torch.rand(1, 200)  # last group: 8 columns
    q = quantize_glvq(W, None, GLVQConfig(group_size=64, steps=1, **opts))
    p = _glvq_prepare(q)
    companded = any(q.group_mu(g) is not None for g in range(len(q.widths)))
    for T in TOKENS:
        x = torch.randn(T, 200)
        close(lattice_matmul(x, p), F.linear(x, q.dequantize()), rel=2e-3 if companded else 2e-5)


def test_lattice_multithreaded():
    out_f, sizes, d = 600, [128, 128, 64], 8
    widths, mus = [2, 2, 4], [0.0, 40.0, 0.0]
    codes = [torch.randint(0, 1 << b, (out_f, n)) for b, n in zip(widths, sizes)]
    gens = [torch.randn(d, d) * 0.1 for _ in widths]
    scales = (torch.rand(out_f, 3) + 0.2).half()
    p = prepare_lattice(codes, widths, scales, gens, mus, d)
    W = lattice_reference(codes, widths, scales, gens, mus, d)
    for T in TOKENS:
        x = torch.randn(T, sum(sizes))
        close(lattice_matmul(x, p, threads=2), F.linear(x, W), rel=2e-3)


# ----------------------------------------------------------------------------------------------
# Randomized Hadamard transforms (rotated layers)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [576, 1536, 64, 80, 72, 30])  # paley2, paley1, sylvester, ..., orthogonal
def test_hadamard_kernel_matches_torch_transform(n):
    from lvq.kernels.hadamard import prepare_rht, rht_apply
    from lvq.rotation import RHT

    r = RHT.random(n, seed=5)
    scaled = RHT(r.spec, r.signs * (torch.rand(n) + 0.5))  # trained rotation: real scales
    for rot in (r, scaled):
        for transpose in (False, True):
            p = prepare_rht(rot, transpose)
            for T in (1, 3, 40):  # 40: above DENSE_MIN_TOKENS, torch's transform
                x = torch.randn(T, n)
                close(rht_apply(x, p), rot.apply_t(x) if transpose else rot.apply(x))
    x = torch.randn(2, 1, n)  # leading dims kept
    assert rht_apply(x, prepare_rht(r)).shape == (2, 1, n)


# ----------------------------------------------------------------------------------------------
# Runtime behaviour: fork children, caching, lazy compilation
# ----------------------------------------------------------------------------------------------
def _child(conn, p, x):
    conn.send(scalar_matmul(x, p, threads=2).numpy())  # falls back to one thread
    conn.close()


def test_fork_child_after_parallel_parent():
    out_f, in_f = 400, 384
    q = torch.randint(0, 4, (out_f, in_f))
    s = torch.rand(out_f, 3).half()
    p = prepare_scalar(q, s, s, 2, 128, out_f, in_f)
    x = torch.randn(1, in_f)
    y = scalar_matmul(x, p, threads=2)  # the parent has started numba's thread pool
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(b, p, x))
    proc.start()
    got = a.recv() if a.poll(120) else None
    proc.join(30)
    assert proc.exitcode == 0 and got is not None
    np.testing.assert_allclose(got, y.numpy(), rtol=1e-6, atol=1e-6)


def test_jit_falls_back_without_a_cache_location():
    ns: dict = {}
    exec(compile("def f(a):\n    return a + 1\n", "<no file>", "exec"), ns)  # numba can't cache it
    f = jit()(ns["f"])
    assert f(np.float32(1.0)) == 2.0


def test_nothing_compiles_at_import():
    code = ("import lvq.kernels as K, lvq.kernels.scalar as S, lvq.kernels.additive as A\n"
            "ds = list(S._KERNELS.values()) + list(A._LUT.values()) + list(A._DECODE.values())\n"
            "assert not any(d.signatures for d in ds), 'compiled at import'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
def test_prefetch_rows_reads_nothing_and_clips_to_the_rows(dtype):
    """Prefetching is a hint: any rows (past the end, negative, empty column ranges) leave the
    array as it was and raise nothing, for every element type the kernels prefetch."""
    a = np.arange(5 * 100, dtype=np.uint32).astype(dtype).reshape(5, 100)
    before = a.copy()
    for first, n, r0, r1 in [(0, 5, 0, 100), (3, 4, 10, 90), (5, 2, 0, 100), (-2, 3, 0, 100), (0, 5, 50, 50)]:
        prefetch_rows(a, first, n, r0, r1)
    np.testing.assert_array_equal(a, before)
