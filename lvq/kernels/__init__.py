"""CPU kernels: y = x Ŵᵀ straight from quantized storage, for batch-1 decoding (T <= 8 tokens).

Each family has ``prepare_*`` (run once at load time: stored form -> a kernel layout, numpy
arrays well below the fp32 matrix) and ``*_matmul(x, prepared)`` (x [..., in] -> y [..., out]
float32; inference only, no autograd; CPU tensors). A quantized weight's ``kernel()`` hands out
a kernel object around its prepared layout (``GroupedKernel``, ``AdditiveKernel``, and
``hadamard.RotatedKernel`` for rotated layers) whose one-token call is one compiled function.
Kernels are numba-compiled on first use and cached on disk next to this package when it is
writable.

    prepare_scalar(codes, scale, zero, bits, group_size, out_features, in_features)   RTN/GPTQ
    prepare_additive(codes, codebooks, scales, perm, code_bits, out_features, in_features)
                                                                                    AQLM/CRVQ
    prepare_lattice(group_codes, widths, scales, generators, mus, dim, decoder, lattice)  GLVQ

Two more modules, imported where they are used: ``hadamard`` (the randomized Hadamard transforms
of rotated layers, for a few tokens) and ``e8p_search`` (the E8P encoder's nearest-point search,
which quantization calls on the CPU).

Kernels run on the calling thread unless ``threads=n`` asks for numba's OpenMP pool (a second
OpenMP runtime beside torch's: see ``_common.num_blocks`` for why that is opt-in; layers under
2^17 weights and fork children always run on one thread). Many tokens (prefill) are better
served by decoding Ŵ once and calling F.linear: the kernels win up to T ~ 2-4 tokens against a
cache-resident fp32 matrix and to T = 8 against fp32 streamed from memory.
"""
from .additive import AdditiveKernel, AdditivePrepared, additive_matmul, permutation_index, prepare_additive
from .lattice import lattice_matmul, prepare_lattice
from .scalar import GroupedCodes, GroupedKernel, grouped_matmul, prepare_scalar, scalar_matmul

__all__ = [
    "AdditiveKernel", "AdditivePrepared", "GroupedCodes", "GroupedKernel", "additive_matmul", "grouped_matmul", "lattice_matmul",
    "permutation_index", "prepare_additive", "prepare_lattice", "prepare_scalar", "scalar_matmul",
]
