"""The shared Hessian algebra of every method (docs/algorithms.md, "Notation").

A linear layer y = W x with W [out, in] and calibration inputs X gives H = XᵀX/n [in, in]. The
layer objective of a quantized Ŵ is the output error

    L(Ŵ) = ‖(W − Ŵ) X‖² / n = tr((W − Ŵ) H (W − Ŵ)ᵀ)          (H = None: ‖W − Ŵ‖², plain MSE)

GPTQ, GLVQ's error feedback and salience all need the upper Cholesky factor U of the damped
inverse, (H + λI)⁻¹ = UᵀU with λ = damp · mean(diag H) (Frantar et al. 2022, §3 "Cholesky
reformulation"). Everything here is a pure function of tensors.
"""
from __future__ import annotations

import torch


def damped_hessian(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """H + damp·mean(diag H)·I with dead inputs (diag = 0) set to 1.

    H [in, in] -> (H_damped [in, in] float64, dead [in] bool).
    """
    H = H.detach().to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp * torch.mean(torch.diag(H))
    return H, dead


def inverse_hessian_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U [in, in] of (H + λI)⁻¹ (so H⁻¹ = UᵀU) and the dead-input mask.

    Retries with 10× more damping (up to 10⁵×) if H is numerically indefinite.
    """
    for attempt in range(6):
        Hd, dead = damped_hessian(H, damp * (10**attempt))
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U, dead
    raise ValueError("the Hessian is not positive definite even with heavy damping; "
                     "use more calibration windows")


def inverse_diagonal(H: torch.Tensor, damp: float) -> torch.Tensor:
    """diag((H + λI)⁻¹) [in] float64 (the OBS saliency denominator)."""
    Hd, _ = damped_hessian(H, damp)
    return torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(Hd)))


def objective(D: torch.Tensor, H: torch.Tensor | None) -> torch.Tensor:
    """tr(D H Dᵀ) for an error D = W − Ŵ [out, in], as a differentiable scalar in D's dtype
    (H = None: ‖D‖²)."""
    return (D * D).sum() if H is None else ((D @ H) * D).sum()


def row_objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per-row objective L_i = r_i H r_iᵀ, r = W − Ŵ: W, Ŵ [out, in], H [in, in] -> [out]."""
    R = W - W_hat
    return ((R @ H) * R).sum(1)


def layer_objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ) in float64: the output error ‖(W − Ŵ)X‖² per sample."""
    D = (W - W_hat).to(torch.float64)
    return float(objective(D, None if H is None else H.to(D)))


def relative_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> float:
    """‖(W − Ŵ)X‖² / ‖WX‖² (with H = None: relative weight MSE)."""
    den = layer_objective(W, torch.zeros_like(W), H)
    return layer_objective(W, W_hat, H) / max(den, 1e-300)
