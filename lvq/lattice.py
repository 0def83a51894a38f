"""Lattice math for GLVQ: generators, Babai rounding-off, exact nearest-point decoders.

Conventions. A lattice in R^d is ``{G z : z in Z^d}`` with generator ``G`` [d, d] whose *columns*
are the basis vectors. Vectors are stored as the rows of a [..., d] tensor, so the decode of a
batch of integer vectors ``Z`` [n, d] is ``Z @ Gᵀ``.

Index range (docs/algorithms.md, "GLVQ: our decisions"): a b-bit code holds each coordinate of z as a signed
integer in ``[-2^{b-1}, 2^{b-1} - 1]`` and decoding adds a half-integer offset,

    encode (Babai rounding-off):  z = clamp(round(G⁻¹ x − ½), −2^{b−1}, 2^{b−1} − 1)
    decode:                       x̂ = G (z + ½)

so the 2^b levels per coordinate are symmetric about 0 (1 bit gives ±½ G e_i). A d-vector
costs d·b bits.

Exact nearest-point decoding for the standard lattices Zⁿ, Dₙ and E8 (Conway & Sloane, "Fast
quantizing and decoding algorithms for lattice quantizers", IEEE Trans. IT 1982; SPLAG ch. 20)
uses the *natural coordinates* of those lattices instead of a basis, which keeps the b-bit index
a box in R^d and makes the box-constrained nearest point exact and cheap:

* ``Z``:  points ``z + ½``, z in the b-bit range (a uniform scalar quantizer).
* ``D``:  points ``z + ½`` with z in the b-bit range and ``Σ z`` even. The code stores the d
  coordinates at b bits each; one bit per vector is redundant (the parity), and is not reused.
* ``E8P``: at 2 bits the 2^16-point E8 codebook of lvq/e8p.py (a near-spherical set instead of
  a box; lower error on Gaussian data), at other widths the ``E8`` code below.
* ``E8``: ``E8 = D8 ∪ (D8 + ½·1)``; points ``y + c·½·1 + ¼·1`` with y in the b-bit range,
  ``Σ y`` even and a coset bit c. The coset bit replaces the least significant bit of the last
  coordinate (that bit is implied by the parity), so E8 costs exactly 8·b bits per vector and
  holds 2^{8b} points. The ``¼`` offset makes the point set symmetric about 0.

Out-of-range points: the decoders return the nearest point *of the in-range set* (not the nearest
lattice point clamped). For Dₙ this is exact because the box is a product set: take the nearest
in-range integer per coordinate and, if the parity is odd, move the single coordinate whose
second-nearest in-range integer costs least. E8 runs that on both cosets and keeps the closer.

Unconstrained decoders (``nearest_zn``, ``nearest_dn``, ``nearest_e8``) are the textbook algorithms;
they are used by the tests and the 2-D plots.
"""
from __future__ import annotations

import torch

from . import e8p

LATTICE_KINDS = ("Z", "D", "E8", "E8P")


# ----------------------------------------------------------------------------------------------
# Index range
# ----------------------------------------------------------------------------------------------
def code_range(bits: int) -> tuple[int, int]:
    """Signed range of one b-bit coordinate: (−2^{b−1}, 2^{b−1} − 1)."""
    if not 1 <= bits <= 16:
        raise ValueError(f"lattice codes need 1..16 bits per coordinate, got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


# Step of the MSE-optimal uniform quantizer with 2^b levels (midpoints (k + ½)·step) for a
# unit-variance Gaussian, computed by numerical integration and minimisation (agrees with Max 1960;
# the 2-bit MSE is 0.1188). Used to scale a unit generator to a b-bit width.
GAUSS_UNIFORM_STEP = {1: 1.5958, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041,
                      7: 0.0569, 8: 0.0308}


def width_step(bits: int) -> float:
    """Scale factor Δ_b applied to a unit generator for a b-bit group (see GAUSS_UNIFORM_STEP)."""
    if bits not in GAUSS_UNIFORM_STEP:
        raise ValueError(f"widths must be 1..8 bits, got {bits}")
    return GAUSS_UNIFORM_STEP[bits]


# ----------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------
def cholesky_generator(V: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Unit generator from the vectors' second moment: L with L Lᵀ = VᵀV/n (+ eps·tr/d·I).

    V: [n, d] -> L [d, d] lower triangular. Babai coordinates G⁻¹x with G = Δ_b·L are white with
    variance 1/Δ_b², so a b-bit clamped range covers the bulk of the distribution when Δ_b is the
    Gaussian-optimal uniform step (GLVQ §3: "initialise G from the Cholesky factor of the
    covariance of the group's vectors").
    """
    V = V.to(torch.float64)
    d = V.shape[-1]
    S = V.T @ V / max(V.shape[0], 1)
    ridge = eps * float(torch.diagonal(S).mean().clamp_min(1e-30))
    S = S + ridge * torch.eye(d, dtype=S.dtype, device=S.device)
    L, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:  # numerically singular: fall back to the diagonal
        L = torch.diag(torch.sqrt(torch.diagonal(S).clamp_min(1e-30)))
    return L.to(torch.float32)


def standard_generator(kind: str, d: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Conway–Sloane generator of Zⁿ, Dₙ or E8 [d, d] (columns are basis vectors).

    Dₙ: rows (−1,−1,0,…), (1,−1,0,…), (0,1,−1,0,…), …; E8: the standard lower-triangular basis
    with last row (½,…,½). Both have unit-integer / half-integer coordinates as in SPLAG ch. 4.
    """
    if kind == "Z":
        M = torch.eye(d, dtype=torch.float64)
    elif kind == "D":
        if d < 2:
            raise ValueError("D_n needs n >= 2")
        M = torch.zeros(d, d, dtype=torch.float64)
        M[0, 0], M[0, 1] = -1.0, -1.0
        for i in range(1, d):
            M[i, i - 1], M[i, i] = 1.0, -1.0
    elif kind in ("E8", "E8P"):  # E8P: the E8 codebook of lvq/e8p.py (same lattice units)
        if d != 8:
            raise ValueError("E8 is 8-dimensional")
        M = torch.zeros(8, 8, dtype=torch.float64)
        M[0, 0] = 2.0
        for i in range(1, 7):
            M[i, i - 1], M[i, i] = -1.0, 1.0
        M[7, :] = 0.5
    else:
        raise ValueError(f"unknown standard lattice {kind!r}; choose one of {LATTICE_KINDS}")
    return M.T.contiguous().to(dtype=dtype, device=device)


def clamp_singular_values(G: torch.Tensor, ref_sv: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Project G [d, d] so its sorted singular values σ_i lie in [lo·σ_i(G₀), hi·σ_i(G₀)].

    ref_sv: the sorted (descending) singular values of G₀, [d].
    """
    U, S, Vh = torch.linalg.svd(G)
    S = torch.minimum(torch.maximum(S, band[0] * ref_sv), band[1] * ref_sv)
    return (U * S) @ Vh


# ----------------------------------------------------------------------------------------------
# Babai rounding-off (any generator)
# ----------------------------------------------------------------------------------------------
def babai_encode(X: torch.Tensor, G: torch.Tensor, bits: int,
                 Ginv: torch.Tensor | None = None) -> torch.Tensor:
    """z = clamp(round(G⁻¹ x − ½), −2^{b−1}, 2^{b−1} − 1) for every row x of X [..., d].

    G: [d, d] (Ginv: its inverse, when the caller already has it). Returns int64 [..., d].
    Batched: one product with G⁻¹ for all rows.
    """
    lo, hi = code_range(bits)
    if Ginv is None:
        Ginv = torch.linalg.inv(G.to(torch.float64))
    T = X @ Ginv.to(X.dtype).T
    return torch.clamp(torch.round(T - 0.5), lo, hi).to(torch.int64)


def babai_decode(Z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """x̂ = G (z + ½) for every row z of Z [..., d] -> [..., d] (differentiable in G)."""
    return (Z.to(G.dtype) + 0.5) @ G.T


# ----------------------------------------------------------------------------------------------
# Exact nearest-point decoders (Conway & Sloane 1982), unconstrained
# ----------------------------------------------------------------------------------------------
def _round_other_way(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The second-nearest integer to x, given its nearest f."""
    return torch.where(x >= f, f + 1.0, f - 1.0)


def nearest_zn(X: torch.Tensor) -> torch.Tensor:
    """Nearest point of Zⁿ to each row of X [..., n]."""
    return torch.round(X)


def nearest_dn(X: torch.Tensor) -> torch.Tensor:
    """Nearest point of Dₙ = {z in Zⁿ : Σz even}: round; if the sum is odd, re-round the
    coordinate with the largest rounding error the other way (Conway–Sloane, algorithm for Dₙ)."""
    f = torch.round(X)
    odd = torch.remainder(f.sum(-1), 2) == 1
    k = (X - f).abs().argmax(-1, keepdim=True)
    g = f.clone()
    g.scatter_(-1, k, _round_other_way(X.gather(-1, k), f.gather(-1, k)))
    return torch.where(odd.unsqueeze(-1), g, f)


def nearest_e8(X: torch.Tensor) -> torch.Tensor:
    """Nearest point of E8 = D8 ∪ (D8 + ½): decode both cosets, keep the closer."""
    a = nearest_dn(X)
    b = nearest_dn(X - 0.5) + 0.5
    da = ((X - a) ** 2).sum(-1, keepdim=True)
    db = ((X - b) ** 2).sum(-1, keepdim=True)
    return torch.where(db < da, b, a)


# ----------------------------------------------------------------------------------------------
# Box-constrained nearest point in natural coordinates (the "nearest" decoder's b-bit index)
# ----------------------------------------------------------------------------------------------
def _nearest_dn_box(T: torch.Tensor, lo: int, hi: int, even: bool) -> torch.Tensor:
    """Nearest y in Zⁿ ∩ [lo, hi]ⁿ to each row of T (with Σy even when ``even``). Exact.

    Per coordinate the nearest in-range integer r and the second-nearest a (adjacent to r, on the
    side of t unless that leaves the range). If Σr is odd, the cheapest fix moves exactly one
    coordinate r -> a (cost (t−a)² − (t−r)² >= 0, separable), so the argmin is optimal.
    """
    r = torch.clamp(torch.round(T), lo, hi)
    if not even:
        return r
    side = torch.where(T >= r, 1.0, -1.0)
    a = r + side
    a = torch.where((a < lo) | (a > hi), r - side, a)
    if hi == lo:
        raise ValueError("a one-point range cannot hold an even-parity lattice")
    cost = (T - a) ** 2 - (T - r) ** 2
    odd = torch.remainder(r.sum(-1), 2) == 1
    k = cost.argmin(-1, keepdim=True)
    g = r.clone()
    g.scatter_(-1, k, a.gather(-1, k))
    return torch.where(odd.unsqueeze(-1), g, r)


def nearest_encode(X: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
    """Exact nearest in-range point of the b-bit code set of ``kind`` to each row of X [..., d].

    X is in lattice units (divide by the lattice scale first). Returns unsigned codes int64
    [..., d] in [0, 2^b), the inverse of :func:`nearest_decode`.
    """
    lo, hi = code_range(bits)
    off = 1 << (bits - 1)
    if kind == "Z":
        y = torch.clamp(torch.round(X - 0.5), lo, hi)
        return (y + off).to(torch.int64)
    if kind == "D":
        y = _nearest_dn_box(X - 0.5, lo, hi, even=True)
        return (y + off).to(torch.int64)
    if kind == "E8":
        if X.shape[-1] != 8:
            raise ValueError("E8 codes need d = 8")
        T = X - 0.25
        ya = _nearest_dn_box(T, lo, hi, even=True)
        yb = _nearest_dn_box(T - 0.5, lo, hi, even=True)
        da = ((T - ya) ** 2).sum(-1, keepdim=True)
        db = ((T - 0.5 - yb) ** 2).sum(-1, keepdim=True)
        coset = db < da
        y = torch.where(coset, yb, ya)
        u = (y + off).to(torch.int64)
        last = (u[..., 7] & ~1) | coset[..., 0].to(torch.int64)  # coset bit replaces the LSB
        return torch.cat([u[..., :7], last.unsqueeze(-1)], dim=-1)
    if kind == "E8P":  # the spherical codebook at 2 bits, the box-truncated E8 code otherwise
        return e8p.encode(X) if bits == 2 else nearest_encode(X, "E8", bits)
    raise ValueError(f"unknown standard lattice {kind!r}; choose one of {LATTICE_KINDS}")


def nearest_decode(U: torch.Tensor, kind: str, bits: int, dtype=torch.float32) -> torch.Tensor:
    """Points (lattice units) of unsigned codes U [..., d] produced by :func:`nearest_encode`."""
    off = 1 << (bits - 1)
    if kind in ("Z", "D"):
        return (U.to(dtype) - off) + 0.5
    if kind == "E8":
        U = U.to(torch.int64)
        coset = U[..., 7] & 1
        y7 = U[..., :7] - off
        high = (U[..., 7] & ~1) - off
        p = torch.remainder(y7.sum(-1) + high, 2)  # the LSB that makes Σy even
        y = torch.cat([y7, (high + p).unsqueeze(-1)], dim=-1).to(dtype)
        return y + 0.5 * coset.unsqueeze(-1).to(dtype) + 0.25
    if kind == "E8P":
        return e8p.decode(U, dtype=dtype) if bits == 2 else nearest_decode(U, "E8", bits, dtype)
    raise ValueError(f"unknown standard lattice {kind!r}; choose one of {LATTICE_KINDS}")


# ----------------------------------------------------------------------------------------------
# Helpers for 2-D pictures (dashboard's Lattice page)
# ----------------------------------------------------------------------------------------------
def codebook_points(G: torch.Tensor, bits: int) -> torch.Tensor:
    """All 2^{d·b} decodable points G(z + ½) of a b-bit Babai code, [2^{d·b}, d] (small d·b only)."""
    d = G.shape[0]
    if d * bits > 16:
        raise ValueError("codebook_points enumerates 2^(d*bits) points: keep d*bits <= 16")
    lo, hi = code_range(bits)
    axes = [torch.arange(lo, hi + 1, dtype=G.dtype, device=G.device)] * d
    Z = torch.cartesian_prod(*axes).reshape(-1, d)
    return babai_decode(Z, G)


def lattice_points_in_window(G: torch.Tensor, xlim: tuple[float, float],
                             ylim: tuple[float, float], offset: float = 0.5) -> torch.Tensor:
    """Points G(z + offset) of a 2-D lattice inside the window xlim × ylim, [n, 2]."""
    if G.shape != (2, 2):
        raise ValueError("lattice_points_in_window is for 2-D generators")
    G = G.to(torch.float64)
    corners = torch.tensor([[xlim[0], ylim[0]], [xlim[0], ylim[1]], [xlim[1], ylim[0]],
                            [xlim[1], ylim[1]]], dtype=torch.float64)
    C = corners @ torch.linalg.inv(G).T - offset
    lo = torch.floor(C.min(0).values) - 1
    hi = torch.ceil(C.max(0).values) + 1
    if float(((hi - lo + 1).prod())) > 4e6:
        raise ValueError("window holds too many lattice points; zoom in")
    Z = torch.cartesian_prod(torch.arange(int(lo[0]), int(hi[0]) + 1, dtype=torch.float64),
                             torch.arange(int(lo[1]), int(hi[1]) + 1, dtype=torch.float64))
    P = (Z + offset) @ G.T
    keep = (P[:, 0] >= xlim[0]) & (P[:, 0] <= xlim[1]) & (P[:, 1] >= ylim[0]) & (P[:, 1] <= ylim[1])
    return P[keep]


def babai_cell(G: torch.Tensor) -> torch.Tensor:
    """The Babai rounding-off cell around a point: the parallelepiped G·[−½, ½]², closed polygon
    [5, 2] (counter-clockwise when det G > 0)."""
    if G.shape != (2, 2):
        raise ValueError("babai_cell is for 2-D generators")
    sq = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]],
                      dtype=G.dtype, device=G.device)
    return sq @ G.T


def voronoi_cell(G: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Voronoi cell of the origin of the 2-D lattice G Z², closed polygon [k+1, 2].

    Clips a large square by the half-planes {x : 2 x·p <= |p|²} of the lattice points p = G z,
    |z_i| <= radius (radius 2 suffices for a reduced basis; raise it for very skewed G).
    """
    if G.shape != (2, 2):
        raise ValueError("voronoi_cell is for 2-D generators")
    G64 = G.to(torch.float64)
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    Z = torch.cartesian_prod(r, r)
    P = Z[(Z != 0).any(1)] @ G64.T
    big = float(P.norm(dim=1).max()) * 2
    poly = [(-big, -big), (big, -big), (big, big), (-big, big)]
    for p in P.tolist():
        c = 0.5 * (p[0] ** 2 + p[1] ** 2)
        out = []
        n = len(poly)
        for i in range(n):
            a, b = poly[i], poly[(i + 1) % n]
            fa = a[0] * p[0] + a[1] * p[1] - c
            fb = b[0] * p[0] + b[1] * p[1] - c
            if fa <= 0:
                out.append(a)
            if (fa < 0 < fb) or (fb < 0 < fa):
                t = fa / (fa - fb)
                out.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
        poly = out
    poly.append(poly[0])
    return torch.tensor(poly, dtype=G.dtype)


__all__ = [
    "LATTICE_KINDS", "GAUSS_UNIFORM_STEP", "code_range", "width_step", "cholesky_generator",
    "standard_generator", "clamp_singular_values", "babai_encode", "babai_decode", "nearest_zn",
    "nearest_dn", "nearest_e8", "nearest_encode", "nearest_decode", "codebook_points",
    "lattice_points_in_window", "babai_cell", "voronoi_cell",
]
