"""Mu-law companding (GLVQ §3.3): a per-group non-linearity applied before the lattice.

    F(x)   = sign(x) · ln(1 + μ|x|) / ln(1 + μ)                 (compress, x = W_g / scale)
    F⁻¹(y) = sign(y) · ((1 + μ)^{|y|} − 1) / μ                   (expand, exact inverse)

μ is learnable; the paper projects it into [10, 255] after each step and initialises it from the
group's kurtosis (heavier tails -> larger μ). μ = 0 is read as the identity (the μ -> 0 limit of
F), which is how a group stores "no companding".

Why a group may skip companding (our extension, docs/algorithms.md): on a light-tailed group the
compression spends levels on the tails; measured on a max-normalised Gaussian group at 2 bits the
best MSE is 0.119 without companding and 0.142 with μ = 10. GLVQConfig.identity_companding lets
each group pick μ = 0 when that gives the lower initial objective (our default); set it to False
for the paper's strict μ ∈ [mu_min, mu_max].
"""
from __future__ import annotations

import torch


def compress(x: torch.Tensor, mu: torch.Tensor | float) -> torch.Tensor:
    """F(x) = sign(x)·ln(1+μ|x|)/ln(1+μ), elementwise; μ a scalar (tensor or float) > 0."""
    mu = torch.as_tensor(mu, dtype=x.dtype, device=x.device)
    return torch.sign(x) * torch.log1p(mu * x.abs()) / torch.log1p(mu)


def expand(y: torch.Tensor, mu: torch.Tensor | float) -> torch.Tensor:
    """F⁻¹(y) = sign(y)·((1+μ)^{|y|} − 1)/μ, elementwise; differentiable in μ."""
    mu = torch.as_tensor(mu, dtype=y.dtype, device=y.device)
    return torch.sign(y) * torch.expm1(y.abs() * torch.log1p(mu)) / mu


def kurtosis(x: torch.Tensor) -> float:
    """Pearson kurtosis E[x⁴]/E[x²]² of all entries (3 for a Gaussian, 6 for a Laplacian)."""
    x = x.to(torch.float64).reshape(-1)
    x = x - x.mean()
    m2 = float((x * x).mean())
    if m2 <= 0:
        return 3.0
    return float((x ** 4).mean()) / (m2 * m2)


def init_mu(x: torch.Tensor, mu_min: float, mu_max: float) -> float:
    """Kurtosis-based initial μ: μ₀ = mu_min · (κ/3)², clipped to [mu_min, mu_max].

    A Gaussian group starts at mu_min, a Laplacian one at 4·mu_min, κ >= 3·sqrt(mu_max/mu_min) at
    mu_max. (The paper says only that μ₀ grows with kurtosis; the square law is our choice.)
    """
    k = kurtosis(x)
    return float(min(max(mu_min * (max(k, 3.0) / 3.0) ** 2, mu_min), mu_max))
