"""Randomized Hadamard transforms (RHT) for incoherence processing of LLM weights.

QuIP / QuIP# incoherence processing (Chee et al. 2023, "QuIP: 2-bit quantization of LLMs with
guarantees"; Tseng et al. 2024, "QuIP#: even better LLM quantization with Hadamard incoherence and
lattice codebooks") quantizes a rotated weight instead of W [out, in]:

    W' = U W Vᵀ,   H' = V H Vᵀ   (H = XᵀX / n [in, in], the input second moment)
    y  = Uᵀ Q(W') (V x) + b       (inference; U, V are never built densely)

with U, V random orthogonal, here ``T·diag(s)`` for a fast orthonormal transform T and a seeded
sign vector s. Since tr(W H Wᵀ) = tr(W' H' W'ᵀ), the proxy loss is unchanged, while outlier
columns/rows of W are spread over all entries of W' (max|W'| / RMS(W') drops towards the
Gaussian value √(2 ln(out·in))).

Construction of T for an order n (``hadamard_spec``): n = m · 2^k with the smallest small order
m ≤ ``max_small`` that has a Hadamard matrix here, and T = (H_m ⊗ H_{2^k}) / √n:

* ``sylvester``: m = 1 (n a power of two);
* ``paley1``:    m = q + 1, q a prime power ≡ 3 (mod 4): 12, 20, 24, 28 (q = 27), 44, 48, 60, ...;
* ``paley2``:    m = 2(q + 1), q a prime power ≡ 1 (mod 4), used where Paley I has none: 36, 52,
  76, 100 (q = 49), 124, 148, ...

E.g. 576 = 36·16, 640 = 20·32, 896 = 28·32, 1536 = 12·128, 4864 = 76·64, 5632 = 44·128 and
11008 = 344·32 (q = 343 = 7³). Products of two Paley matrices are not built. Orders with
no such m (e.g. 6, 10, 30, 92, 184) get ``kind == "orthogonal"``: T = Q_o ⊗ H_{2^k}/√(2^k), with
o the odd part of n and Q_o a seeded random orthogonal matrix (QR of a seeded Gaussian,
sign-fixed); for odd n that is a dense n × n orthogonal matrix.

Cost of ``hadamard_transform`` on x [..., n]: radix-32 butterflies for the 2^k part (⌈k/5⌉
passes, each a batched ≤ 32 × 32 matmul: O(n log n)) plus one m × m matmul per length-m fibre
(n·m multiply-adds). Paley I matrices are not symmetric: the transpose (= inverse) uses H_mᵀ.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
from dataclasses import dataclass

import torch

KINDS = ("sylvester", "paley1", "paley2", "orthogonal")


# ----------------------------------------------------------------------------------------------
# Small Hadamard matrices (Paley constructions over GF(q), q a prime power)
# ----------------------------------------------------------------------------------------------
def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q = p^e for a prime p, or None."""
    if q < 2:
        return None
    p = next((d for d in range(2, math.isqrt(q) + 1) if q % d == 0), q)
    e = round(math.log(q, p))
    return (p, e) if p**e == q else None


def _quadratic_character(q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """χ over GF(q), q = p^e, and the subtraction table: (chi [q] int8, diff [q, q] int64).

    Elements are coded as integers whose base-p digits are polynomial coefficients modulo a monic
    primitive polynomial f of degree e (found by search: x has multiplicative order q − 1 exactly
    when its powers visit all q − 1 nonzero codes, which also proves f irreducible).
    χ(x^i) = (−1)^i, χ(0) = 0. ``diff[a, b]`` is the code of a − b (digit-wise subtraction mod p).
    """
    p, e = _prime_power(q)
    for tail in itertools.product(range(p), repeat=e):        # f = X^e + Σ tail_i X^i
        if tail[0] == 0:
            continue
        power, logs = [1] + [0] * (e - 1), {}
        for i in range(q - 1):
            code = sum(c * p**j for j, c in enumerate(power))
            if code in logs:
                break
            logs[code] = i
            top = power[-1]                                      # multiply by X, reduce mod f
            power = [(([0] + power[:-1])[j] - top * tail[j]) % p for j in range(e)]
        if len(logs) == q - 1:
            break
    chi = torch.zeros(q, dtype=torch.int8)
    chi[list(logs)] = torch.tensor([1 - 2 * (i % 2) for i in logs.values()], dtype=torch.int8)
    digits = torch.stack([(torch.arange(q) // p**j) % p for j in range(e)], dim=1)   # [q, e]
    weights = torch.tensor([p**j for j in range(e)])
    diff = ((digits[:, None, :] - digits[None, :, :]) % p * weights).sum(-1)
    return chi, diff


@functools.lru_cache(maxsize=16)
def _paley(kind: str, q: int) -> torch.Tensor:
    """±1 Hadamard matrix of order q + 1 (paley1) or 2(q + 1) (paley2), int8 [m, m]."""
    chi, diff = _quadratic_character(q)
    Q = chi[diff].to(torch.int64)                                # Jacobsthal matrix Q_ab = χ(a − b)
    j = torch.ones(q, dtype=torch.int64)
    S = torch.zeros(q + 1, q + 1, dtype=torch.int64)             # conference matrix, S Sᵀ = q I
    S[0, 1:], S[1:, 1:] = j, Q
    if kind == "paley1":                                         # Q skew: H = I + S
        S[1:, 0] = -j
        return (torch.eye(q + 1, dtype=torch.int64) + S).to(torch.int8)
    S[1:, 0] = j                                                 # Q symmetric: H = S⊗A + I⊗B
    A = torch.tensor([[1, 1], [1, -1]])
    B = torch.tensor([[1, -1], [-1, -1]])
    return (torch.kron(S, A) + torch.kron(torch.eye(q + 1, dtype=torch.int64), B)).to(torch.int8)


@functools.lru_cache(maxsize=16)
def _orthogonal(m: int, seed: int) -> torch.Tensor:
    """Seeded random orthogonal matrix [m, m] float64: QR of a Gaussian, diag(R) made positive."""
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    return (Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)).contiguous()


def _small_construction(m: int) -> tuple[str, int] | None:
    """(kind, q) of a Hadamard matrix of order m built here, or None."""
    if m & (m - 1) == 0:
        return "sylvester", 0
    if m % 4:
        return None
    if (m - 1) % 4 == 3 and _prime_power(m - 1):
        return "paley1", m - 1
    if (m // 2 - 1) % 4 == 1 and _prime_power(m // 2 - 1):
        return "paley2", m // 2 - 1
    return None


# ----------------------------------------------------------------------------------------------
# Transform spec and the fast transform
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HadamardSpec:
    """T [n, n] = F_m ⊗ H_{2^k} / √(2^k) with F_m the orthonormal small factor (see module doc).

    ``q`` is the Paley field size (0 otherwise); ``seed`` seeds Q_m for kind "orthogonal" (else 0).
    """
    n: int
    m: int
    kind: str
    q: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform kind {self.kind!r}; expected one of {KINDS}")
        p = self.n // self.m if self.m >= 1 and self.n % self.m == 0 else 0
        if self.n < 1 or p < 1 or p & (p - 1):
            raise ValueError(f"order n={self.n} is not m={self.m} times a power of two")
        if self.kind != "orthogonal" and _small_construction(self.m) != (self.kind, self.q):
            raise ValueError(f"no {self.kind} Hadamard matrix of order {self.m} (q={self.q})")

    pow2 = property(lambda self: self.n // self.m)                  # 2^k
    is_hadamard = property(lambda self: self.kind != "orthogonal")


@functools.lru_cache(maxsize=256)
def hadamard_spec(n: int, *, seed: int = 0, max_small: int = 1024) -> HadamardSpec:
    """Construction of order n: smallest Hadamard m ≤ max_small with n = m·2^k, else fallback."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"transform order must be a positive integer, got {n!r}")
    n = int(n)
    m = odd = n >> ((n & -n).bit_length() - 1)
    while m <= min(n, max_small):
        found = _small_construction(m)
        if found:
            return HadamardSpec(n, m, found[0], found[1])
        m *= 2
    return HadamardSpec(n, odd, "orthogonal", 0, seed)


def _as_spec(spec: HadamardSpec | int) -> HadamardSpec:
    return spec if isinstance(spec, HadamardSpec) else hadamard_spec(spec)


def small_factor(spec: HadamardSpec | int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal small factor F_m [m, m] (H_m/√m, or Q_m for kind "orthogonal")."""
    spec = _as_spec(spec)
    if spec.kind == "orthogonal":
        return _orthogonal(spec.m, spec.seed).to(dtype=dtype, device=device, copy=True)
    if spec.kind == "sylvester":
        return sylvester(spec.m).to(dtype=dtype, device=device) / math.sqrt(spec.m)
    return _paley(spec.kind, spec.q).to(dtype=dtype, device=device) / math.sqrt(spec.m)


def sylvester(p: int) -> torch.Tensor:
    """±1 Sylvester matrix of order p = 2^k, int64 [p, p]."""
    H = torch.ones(1, 1, dtype=torch.int64)
    while H.shape[0] < p:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


_radix_block = functools.lru_cache(maxsize=8)(sylvester)       # H_r, r ≤ 32 (read only)


def hadamard_matrix(spec: HadamardSpec | int, *, normalized: bool = True,
                    dtype=torch.float64) -> torch.Tensor:
    """Dense T [n, n] (orthonormal), or with normalized=False the ±1 matrix √n·T (int64)."""
    spec = _as_spec(spec)
    if normalized:
        return torch.kron(small_factor(spec, dtype), sylvester(spec.pow2).to(dtype)
                          / math.sqrt(spec.pow2))
    if not spec.is_hadamard:
        raise ValueError(f"order {spec.n} has no Hadamard construction here (kind 'orthogonal')")
    small = sylvester(spec.m) if spec.kind == "sylvester" else _paley(spec.kind, spec.q)
    return torch.kron(small.to(torch.int64), sylvester(spec.pow2))


def _stages(spec: HadamardSpec, dtype, device, transpose: bool) -> list[torch.Tensor]:
    """Kronecker factors [F_m, H_{r_1}, ..., H_{r_j}] of √(2^k)·T, most significant index first.

    The 2^k part is split into radix-r_i digits (r_i ≤ 32, k = Σ log2 r_i): each stage is one
    batched r_i × r_i matmul over the whole tensor, i.e. radix-32 butterflies. 1/√(2^k) is folded
    into the first factor.
    """
    k = spec.pow2.bit_length() - 1
    steps = -(-k // 5)                                            # ⌈k / 5⌉ radix digits
    radix = [1 << (k * (i + 1) // steps - k * i // steps) for i in range(steps)]
    mats = [_radix_block(r).to(dtype=dtype, device=device) for r in radix]
    if spec.m > 1:
        F = small_factor(spec, dtype, device)
        mats.insert(0, F.T if transpose else F)
    if mats:
        mats[0] = mats[0] / math.sqrt(spec.pow2)
    return mats


def hadamard_transform(x: torch.Tensor, spec: HadamardSpec | int, *,
                       transpose: bool = False) -> torch.Tensor:
    """y = T x (or Tᵀ x) along the last dim: x [..., n] -> y [..., n], same dtype and device.

    T is orthonormal, so the transpose is the inverse. The index of x is read as mixed-radix digits
    (a, b_1, ..., b_j) for the factors of ``_stages``; the factor of each digit is applied as one
    batched matmul, least significant digit first. Cost: n·(m + Σ r_i) multiply-adds per vector.
    """
    spec = _as_spec(spec)
    if x.shape[-1] != spec.n:
        raise ValueError(f"last dim {x.shape[-1]} != transform order {spec.n}")
    if not x.is_floating_point():
        raise ValueError(f"hadamard_transform needs a floating tensor, got {x.dtype}")
    y, c = x, 1                                                  # c: size of the digits done
    for M in reversed(_stages(spec, x.dtype, x.device, transpose)):
        r = M.shape[0]
        y = y.reshape(-1, r) @ M.T if c == 1 else M @ y.reshape(-1, r, c)
        c *= r
    return y.reshape(x.shape) if c > 1 else x.clone()


# ----------------------------------------------------------------------------------------------
# Randomized transform with stored signs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RHT:
    """Randomized transform R = T·diag(s) [n, n]; ``signs`` s [n] (±1, or real scales if tuned).

    Serialised by ``to_state``/``from_state`` as (tensors, JSON-able meta); no pickle.
    """
    spec: HadamardSpec
    signs: torch.Tensor

    def __post_init__(self):
        if tuple(self.signs.shape) != (self.spec.n,) or not self.signs.is_floating_point():
            raise ValueError(f"signs must be a float tensor of shape [{self.spec.n}], "
                             f"got {tuple(self.signs.shape)} {self.signs.dtype}")

    @staticmethod
    def random(n: int, seed: int = 0, *, max_small: int = 1024) -> RHT:
        """Deterministic: s from a CPU torch.Generator seeded with ``seed``; an "orthogonal" small
        factor (if any) uses ``seed + 1``, so that it is independent of the signs."""
        spec = hadamard_spec(n, seed=seed + 1, max_small=max_small)
        g = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (n,), generator=g).to(torch.float32) * 2 - 1
        return RHT(spec, signs)

    n = property(lambda self: self.spec.n)
    kind = property(lambda self: self.spec.kind)
    is_binary = property(lambda self: bool((self.signs.abs() == 1).all()))   # s ∈ {±1}ⁿ

    def _s(self, x: torch.Tensor) -> torch.Tensor:
        return self.signs.to(device=x.device, dtype=x.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """R x = T (s ⊙ x) along the last dim: x [..., n] -> [..., n]."""
        return hadamard_transform(x * self._s(x), self.spec)

    def apply_t(self, x: torch.Tensor) -> torch.Tensor:
        """Rᵀ x = s ⊙ (Tᵀ x); the inverse of ``apply`` when s is ±1."""
        return hadamard_transform(x, self.spec, transpose=True) * self._s(x)

    def apply_inv(self, x: torch.Tensor) -> torch.Tensor:
        """R⁻¹ x = (Tᵀ x) / s (for real scales s with no zero entry)."""
        return hadamard_transform(x, self.spec, transpose=True) / self._s(x)

    def matrix(self, dtype=torch.float64) -> torch.Tensor:
        """Dense R [n, n] (for tests)."""
        return hadamard_matrix(self.spec, dtype=dtype) * self.signs.to(dtype)

    def signs_bits(self) -> int:
        """Stored cost of s: 1 bit per entry if ±1, else the bits of its float dtype."""
        return self.n if self.is_binary else self.n * torch.finfo(self.signs.dtype).bits

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able meta): ±1 signs bit-packed (uint8, LSB first), else raw scales."""
        spec = self.spec
        meta = {"n": spec.n, "m": spec.m, "kind": spec.kind, "q": spec.q, "seed": spec.seed,
                "signs": "packed" if self.is_binary else "scales"}
        if not self.is_binary:
            return {"scales": self.signs.detach().cpu().clone()}, meta
        bits = torch.nn.functional.pad((self.signs < 0).to(torch.uint8), (0, -self.n % 8))
        weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
        return {"signs": (bits.view(-1, 8) * weights).sum(1).to(torch.uint8)}, meta

    @staticmethod
    def from_state(tensors: dict[str, torch.Tensor], meta: dict) -> RHT:
        spec = HadamardSpec(int(meta["n"]), int(meta["m"]), str(meta["kind"]), int(meta["q"]),
                            int(meta["seed"]))
        if meta["signs"] == "scales":
            return RHT(spec, tensors["scales"])
        packed = tensors["signs"].to(torch.int64)
        bits = (packed[:, None] >> torch.arange(8)) & 1
        return RHT(spec, (1 - 2 * bits.reshape(-1)[: spec.n]).to(torch.float32))


# ----------------------------------------------------------------------------------------------
# Incoherence processing of one linear layer
# ----------------------------------------------------------------------------------------------
def _check(W: torch.Tensor, U: RHT | None, V: RHT) -> None:
    if W.dim() != 2 or W.shape[1] != V.n or (U is not None and W.shape[0] != U.n):
        raise ValueError(f"shape {tuple(W.shape)} does not fit U: {U and U.n}, V: {V.n}")


def rotate_weight(W: torch.Tensor, U: RHT, V: RHT) -> torch.Tensor:
    """W' = U W Vᵀ for W [out, in], U of order out, V of order in -> [out, in]."""
    _check(W, U, V)
    return U.apply(V.apply(W).T).T                   # rows: W Vᵀ; then columns: U (W Vᵀ)


def unrotate_weight(Wr: torch.Tensor, U: RHT, V: RHT) -> torch.Tensor:
    """W = Uᵀ W' V for W' [out, in] (the effective weight of ``rotated_linear``) -> [out, in]."""
    _check(Wr, U, V)
    return U.apply_t(V.apply_t(Wr).T).T


def rotate_hessian(H: torch.Tensor, V: RHT) -> torch.Tensor:
    """H' = V H Vᵀ for H [in, in] (kept in H's dtype, e.g. float64) -> [in, in]."""
    _check(H, None, V)
    return V.apply(V.apply(H).T).T


def rotated_linear(x: torch.Tensor, Wr: torch.Tensor, U: RHT, V: RHT,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = Uᵀ (W' (V x)) + b for x [..., in], W' [out, in] -> y [..., out] (no dense U, V)."""
    _check(Wr, U, V)
    y = U.apply_t(V.apply(x) @ Wr.T.to(x.dtype))
    return y if bias is None else y + bias


def max_to_rms(W: torch.Tensor) -> float:
    """Coherence proxy max|W| / RMS(W): √(numel) for one spike, ≈ √(2 ln numel) if Gaussian."""
    W = W.double()
    return float(W.abs().max() / W.pow(2).mean().sqrt())
