"""GLVQ benchmarks: pure functions returning pandas DataFrames (the lead's runner prints/saves them).

* ``gaussian_table``  — MSE and SNR on i.i.d. N(0, 1) weights (H = I) at 1, 2, 3 bpw for RTN,
  GLVQ (learned lattice, Babai) and the exact E8 nearest-point option, beside the
  distortion–rate bound D(R) = 2^(−2R) (docs/algorithms.md, "The physical limit").
* ``ablation_configs`` — the paper's parts switched off one by one.
* ``layer_table``     — relative output error ‖(W − Ŵ)X‖² / ‖WX‖² of RTN, GPTQ and GLVQ at 2 bpw
  on given layers.
"""
from __future__ import annotations

import math
import time

import pandas as pd
import torch

from ..baselines import quantize_gptq, quantize_rtn
from ..config import GLVQConfig, GPTQConfig, RTNConfig
from ..glvq import quantize_glvq
from ..hessian import relative_error

RTN_GROUP = 128  # RTN/GPTQ reference: asymmetric min-max per row and 128 input columns


def _gaussian_rows(method: str, W: torch.Tensor, q, bits: float, seconds: float) -> dict:
    Wq = q.dequantize()
    mse = float(((W - Wq) ** 2).mean())
    power = float((W ** 2).mean())
    bpw = q.bits_per_weight()
    return {
        "method": method, "bits": bits, "bits_per_weight": bpw, "mse": mse,
        "snr_db": 10 * math.log10(power / mse), "bound_mse": 2.0 ** (-2 * bits),
        "bound_mse_at_bpw": 2.0 ** (-2 * bpw),
        "gap_db": 10 * math.log10(mse / 2.0 ** (-2 * bits)),
        "rows": W.shape[0], "cols": W.shape[1], "seconds": seconds,
    }


def gaussian_table(n: int = 4096, seed: int = 0, rows: int | None = None,
                   bits: tuple[int, ...] = (1, 2, 3)) -> pd.DataFrame:
    """i.i.d. N(0, 1) weights [rows, n] (rows = n unless given), H = I.

    Methods: RTN (group 128, fp16 scale + zero: +0.25 bpw), GLVQ-8D with the learned lattice and
    Babai rounding (default config; H = I so no error feedback), and GLVQ-8D on E8 with the exact
    nearest-point decoder (companding and bit allocation off: a pure lattice quantizer with a
    per-row scale). ``bound_mse`` is D(R) at the code rate, ``bound_mse_at_bpw`` at the real rate.
    """
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows or n, n, generator=g)
    e8 = GLVQConfig(lattice="E8", decoder="nearest", dim=8, companding=False,
                    bit_allocation=False, steps=0)
    out = []
    for b in bits:
        runs = [
            (f"RTN g{RTN_GROUP}", lambda: quantize_rtn(W, None, RTNConfig(bits=b, group_size=RTN_GROUP))),
            ("GLVQ-8D learned (Babai)", lambda: quantize_glvq(W, None, GLVQConfig(bits=b, dim=8))),
            ("GLVQ-8D E8 (nearest)", lambda: quantize_glvq(W, None, e8.replace(bits=b))),
        ]
        for name, fn in runs:
            t = time.perf_counter()
            q = fn()
            out.append(_gaussian_rows(name, W, q, float(b), time.perf_counter() - t))
    return pd.DataFrame(out)


PAPER_ABLATION_BASE = GLVQConfig(bits=2.0, dim=8, steps=10)  # the paper's parts, 10 learning steps


def ablation_configs() -> list[tuple[str, GLVQConfig]]:
    """GLVQ-8D at 2 bpw as the paper describes it (10 learning steps, so the whole ablation fits
    this machine's budget), then each part switched off (paper Tables 6/7, plus our additions).
    The levers beyond the paper (incoherence, E8P, fine-tuning) are in lvq/bench/quality.py."""
    full = PAPER_ABLATION_BASE
    return [
        ("full", full),
        ("no bit allocation", full.replace(bit_allocation=False)),
        ("one shared lattice", full.replace(shared_lattice=True)),
        ("one global companding", full.replace(shared_companding=True)),
        ("no companding", full.replace(companding=False)),
        ("paper companding (mu in [10..255] for every group)", full.replace(identity_companding=False)),
        ("no learning (G0 and mu0)", full.replace(steps=0)),
        ("group-level error feedback", full.replace(feedback_unit="group")),
        ("no error feedback (paper)", full.replace(error_feedback=False)),
        ("E8 nearest-point instead of learned Babai", full.replace(lattice="E8", decoder="nearest")),
    ]


def layer_table(W_by_name: dict[str, torch.Tensor], H_by_name: dict[str, torch.Tensor],
                glvq_cfg: GLVQConfig | None = None) -> pd.DataFrame:
    """Relative output error ‖(W − Ŵ)X‖² / ‖WX‖² at 2 bpw for RTN g128, GPTQ g128 and GLVQ
    (default: the fast preset at 2 bpw) on each named layer, with bits_per_weight and seconds."""
    glvq_cfg = glvq_cfg or PAPER_ABLATION_BASE
    methods = [
        ("RTN g128", lambda W, H: quantize_rtn(W, H, RTNConfig(bits=2, group_size=RTN_GROUP))),
        ("GPTQ g128", lambda W, H: quantize_gptq(W, H, GPTQConfig(bits=2, group_size=RTN_GROUP))),
        ("GLVQ-8D", lambda W, H: quantize_glvq(W, H, glvq_cfg)),
    ]
    rows = []
    for name, W in W_by_name.items():
        H = H_by_name.get(name)
        for method, fn in methods:
            t = time.perf_counter()
            q = fn(W, H)
            rows.append({"layer": name, "method": method, "shape": tuple(W.shape),
                         "bits_per_weight": q.bits_per_weight(),
                         "rel_error": relative_error(W, q.dequantize(), H),
                         "seconds": time.perf_counter() - t})
    return pd.DataFrame(rows)
