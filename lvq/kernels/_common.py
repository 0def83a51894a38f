"""Shared pieces of the CPU kernels: the jit decorator, LLVM intrinsics, threading policy.

* ``jit``: ``numba.njit(cache=True, fastmath=True, ...)``, falling back to ``cache=False`` when
  numba finds no writable cache location (a read-only install with an unwritable home): the
  kernels then compile at every process start instead of failing. Nothing compiles at import;
  each kernel compiles on its first call.
* Intrinsics numba does not express directly: ``field_f32(word, mask)`` = float32(word & mask)
  without numba's widening of integer arithmetic to int64 (which would halve the SIMD width);
  ``half_f32(bits)`` = the float32 value of an IEEE fp16 bit pattern (vcvtph2ps on x86);
  ``prefetch(arr, i)`` = LLVM's read prefetch of the cache line holding ``arr[i]``
  (``prefetch_rows``: a block of rows; the kernels stream their codes through it).
* Threading: ``num_blocks(work, threads)`` is how many row blocks a call splits into: one unless
  the caller asks for more (see its docstring for the measurement behind that default), and
  always one for small layers (a parallel launch costs more than it saves there) and in a
  process forked from the one that imported this module: GNU OpenMP's pool does not survive
  ``fork()`` and numba aborts a child that launches a parallel region after the parent did.
"""
from __future__ import annotations

import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# A process that is not the one that imported us is a fork child: kernels run single-threaded
# there. (A constant, read once; spawned workers import afresh and get their own.)
_IMPORT_PID = os.getpid()

# Below this many weights a layer runs on one thread: numba's parallel launch (~5 µs here) is
# comparable to the whole product (192 x 576 at 2 bits: ~6 µs on one core).
PARALLEL_MIN_WEIGHTS = 1 << 17

# Above this many tokens (a prompt's prefill) a kernel call hands the product to torch: the
# layer's Ŵ decoded for the call (scalar, lattice, additive), torch's batched transform (Hadamard).
DENSE_MIN_TOKENS = 16


def _prefer_wide_vectors() -> None:
    """Let LLVM vectorise the kernels with 512-bit registers where the CPU has AVX-512.

    LLVM tunes Intel server cores with "prefer-256-bit" (wide vectors once lowered the clock of
    older Xeons), so numba's loops over rows used 8 floats per instruction. With the feature
    switched off they use 16: measured here (Xeon, AVX-512), the 2-bit kernel of a 1536 x 576
    layer ran 10-20 % faster. numba reads this setting when it first compiles (hence here,
    before any kernel compiles) and keys its on-disk cache by it. A user's own
    NUMBA_CPU_FEATURES, or a CPU without AVX-512, leaves numba's choice alone."""
    if numba.config.CPU_FEATURES is not None or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # hosts where LLVM cannot read the features: numba's own defaults
        return
    if features.get("avx512f"):
        numba.config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"


_prefer_wide_vectors()


def jit(**opts):
    """numba.njit(fastmath=True, boundscheck=False, cache=True, **opts) with a silent fallback to
    cache=False where numba has nowhere to write its cache."""
    opts = {"fastmath": True, "boundscheck": False, "nogil": True, **opts}

    def wrap(fn):
        try:
            return numba.njit(cache=True, **opts)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **opts)(fn)

    return wrap


@intrinsic
def field_f32(typingctx, word, mask):
    """float32(word & mask) for unsigned integers ``word`` and ``mask`` (mask truncated to the
    word's width), converted from the word's own width (no int64 detour)."""
    if not (isinstance(word, types.Integer) and isinstance(mask, types.Integer)):
        return None
    sig = types.float32(word, mask)

    def codegen(context, builder, signature, args):
        w, m = args
        if m.type.width > w.type.width:
            m = builder.trunc(m, w.type)
        elif m.type.width < w.type.width:
            m = builder.zext(m, w.type)
        return builder.uitofp(builder.and_(w, m), ir.FloatType())

    return sig, codegen


@intrinsic
def half_f32(typingctx, bits):
    """The float32 value of the fp16 number whose bit pattern is the uint16 ``bits``."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 16):
        return None
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        h = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(h, ir.FloatType())

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """Ask the CPU to bring the cache line holding ``arr[i]`` (a 1-d array) into cache, for
    reading, ahead of use (LLVM's prefetch: no fault on any address, no effect on results)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        # the opaque-pointer name of the intrinsic (LLVM >= 15; numba's pinned llvmlite has 22)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


CACHE_LINE = 64  # bytes


@jit()
def prefetch_rows(a, first, n, r0, r1):  # pragma: no cover - compiled
    """Prefetch rows ``first … first + n − 1`` of the 2-d array ``a`` (clipped to its rows),
    columns ``r0 … r1 − 1``: one ``prefetch`` per cache line."""
    step = max(1, CACHE_LINE // a.itemsize)
    for r in range(max(first, 0), min(first + n, a.shape[0])):
        row = a[r, r0:r1]
        for i in range(0, r1 - r0, step):
            prefetch(row, i)


def num_blocks(work: int, threads: int | None) -> int:
    """Row blocks (= numba threads) for a product touching ``work`` weights.

    ``threads`` None or 1: one block, on the calling thread (the default). Measured here: numba's
    OpenMP pool is a second GNU OpenMP runtime beside torch's, and both spin after each parallel
    region; interleaving 2-thread kernels with torch's 2-thread ops on 2 cores stalled F.linear
    by milliseconds, while 1-thread kernels left it untouched. Ask for more threads where torch
    runs single-threaded. Small layers (< PARALLEL_MIN_WEIGHTS) and fork children always get 1.
    """
    if threads is None or threads <= 1 or work < PARALLEL_MIN_WEIGHTS or os.getpid() != _IMPORT_PID:
        return 1
    return max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))


def row_blocks(n_rows: int, n_blocks: int, align: int = 16) -> np.ndarray:
    """Boundaries [n_blocks + 1] (int64) splitting n_rows into near-equal aligned blocks."""
    step = -(-n_rows // n_blocks)
    step = -(-step // align) * align
    b = np.minimum(np.arange(n_blocks + 1, dtype=np.int64) * step, n_rows)
    b[-1] = n_rows
    return b


def all_row_blocks(n_rows: int) -> tuple[np.ndarray, ...]:
    """``row_blocks(n_rows, nb)`` for nb = 0 (unused), 1, …, numba's thread count: computed at
    prepare time so that a call only indexes it."""
    top = max(1, numba.config.NUMBA_NUM_THREADS)
    return (np.zeros(1, dtype=np.int64),) + tuple(row_blocks(n_rows, nb) for nb in range(1, top + 1))


def as_rows(x: torch.Tensor, in_features: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """x [..., in] -> (contiguous float32 numpy [T, in] sharing memory where possible, lead shape)."""
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the layer expects {in_features}")
    if x.device.type != "cpu":
        raise ValueError(f"the CPU kernels need x on the CPU, got {x.device}")
    if x.dtype is torch.float32 and not x.requires_grad and x.is_contiguous():
        if x.dim() == 2:
            return x.numpy(), (x.shape[0],)  # the decode hot path: no copy, no torch op
        return x.view(-1, in_features).numpy(), tuple(x.shape[:-1])
    lead = tuple(x.shape[:-1])
    x2 = x.detach().reshape(-1, in_features).to(torch.float32).contiguous()
    return x2.numpy(), lead


def one_token_view(x: torch.Tensor, in_features: int) -> np.ndarray | None:
    """x as a [1, in] float32 numpy view when it is one fp32 token a kernel's compiled one-token
    function can take as is (contiguous CPU, no grad); else None. (The reshape is numpy's: a
    torch ``view`` before ``.numpy()`` costs a microsecond more, per layer and token.)"""
    if (x.numel() == in_features and x.dtype is torch.float32 and x.is_contiguous()
            and not x.requires_grad and x.is_cpu):
        return x.numpy().reshape(1, in_features)
    return None


def one_token_call(one, x: torch.Tensor, in_features: int, out_features: int) -> torch.Tensor | None:
    """y [*lead, out] = fn(x as [1, in], *args) for a kernel's compiled one-token function
    ``one = (fn, args)`` when x is one token it can take as is (``one_token_view``); else None.
    The decode hot path: each torch-side step here is paid per layer and token, so the output is
    reshaped on the numpy side before it becomes a tensor."""
    if one is None:
        return None
    xn = one_token_view(x, in_features)
    if xn is None:
        return None
    fn, args = one
    return torch.from_numpy(fn(xn, *args).reshape(x.shape[:-1] + (out_features,)))


def call_layout(x: torch.Tensor, in_features: int, out_features: int, blocks: tuple[np.ndarray, ...],
                threads: int | None) -> tuple[np.ndarray, tuple[int, ...], int, np.ndarray]:
    """What every kernel call starts with: (x as rows [T, in] (``as_rows``), the lead shape, the
    number of row blocks (``num_blocks``) and their bounds from the prepared ``blocks``)."""
    xn, lead = as_rows(x, in_features)
    nb = num_blocks(out_features * in_features, threads)
    return xn, lead, nb, blocks[min(nb, len(blocks) - 1)]


def from_rows(y: np.ndarray, lead: tuple[int, ...]) -> torch.Tensor:
    """Kernel output [T, out] -> tensor [*lead, out] (a view of y)."""
    t = torch.from_numpy(y)
    return t if len(lead) == 1 else t.reshape(*lead, y.shape[1])


def to_numpy(t: torch.Tensor, dtype) -> np.ndarray:
    """A contiguous numpy copy-or-view of a CPU tensor in ``dtype``."""
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))
