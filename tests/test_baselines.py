import pytest
import torch

import lvq
from lvq.baselines import RTNWeight, estimate_bits, quantize_gptq, quantize_rtn
from lvq.hessian import layer_objective


def correlated_problem(out_f=48, in_f=200, n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    mix = torch.randn(in_f, in_f, generator=g) * 0.3
    X = torch.randn(n, in_f, generator=g) @ mix + torch.randn(n, in_f, generator=g)
    H = (X.T @ X / n).double()
    return W, H


def test_rtn_is_exact_on_its_own_grid():
    # Weights already on a 3-bit grid per group of 32 (each group hits its min and max).
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 8, (6, 64), generator=g).float()
    q[:, 0], q[:, 1], q[:, 32], q[:, 33] = 0, 7, 0, 7
    W = (q - 3.0) * 0.25
    w_hat = quantize_rtn(W, None, lvq.RTNConfig(bits=3, group_size=32)).dequantize()
    assert torch.allclose(w_hat, W, atol=1e-6)


def test_rtn_error_is_bounded_by_half_a_step():
    W, _ = correlated_problem()
    qw = quantize_rtn(W, None, lvq.RTNConfig(bits=2, group_size=64))
    # step per (row, group) = (max - min) / 3; error <= step / 2 (+ fp16 rounding of scale/zero)
    err = (W - qw.dequantize()).abs()
    steps = qw.scale.float().repeat_interleave(64, dim=1)[:, :200]
    assert bool((err <= steps * 0.5 + 1e-2 * steps + 1e-4).all())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_rtn_on_correlated_layer(bits):
    W, H = correlated_problem()
    rtn = layer_objective(W, quantize_rtn(W, H, lvq.RTNConfig(bits=bits, group_size=64)).dequantize(), H)
    gptq = layer_objective(W, quantize_gptq(W, H, lvq.GPTQConfig(bits=bits, group_size=64)).dequantize(), H)
    act = layer_objective(W, quantize_gptq(W, H, lvq.GPTQConfig(bits=bits, group_size=64,
                                                                act_order=True)).dequantize(), H)
    assert gptq < 0.8 * rtn
    assert act < 0.8 * rtn


def test_gptq_with_identity_hessian_equals_rtn():
    W, _ = correlated_problem(in_f=128)
    cfg = lvq.GPTQConfig(bits=3, group_size=64, damp=0.0)
    a = quantize_gptq(W, None, cfg).dequantize()
    b = quantize_rtn(W, None, lvq.RTNConfig(bits=3, group_size=64)).dequantize()
    assert torch.allclose(a, b, atol=1e-6)


def test_partial_last_group_and_bits_accounting():
    W, H = correlated_problem(out_f=8, in_f=200)
    qw = quantize_gptq(W, H, lvq.GPTQConfig(bits=2, group_size=128))
    assert qw.scale.shape == (8, 2)  # 128 + 72 columns
    # codes 2 bits + (scale + zero) 32 bits per (row, group)
    assert qw.bits_per_weight() == pytest.approx((8 * 200 * 2 + 8 * 2 * 32) / (8 * 200))
    assert estimate_bits(8, 200, lvq.GPTQConfig(bits=2, group_size=128)) == pytest.approx(qw.bits_per_weight())


def test_dead_inputs_do_not_break_gptq():
    W, H = correlated_problem(in_f=64)
    H[5, :] = 0
    H[:, 5] = 0
    w_hat = quantize_gptq(W, H, lvq.GPTQConfig(bits=3, group_size=32)).dequantize()
    assert torch.isfinite(w_hat).all()


def test_state_round_trip():
    W, H = correlated_problem()
    qw = quantize_gptq(W, H, lvq.GPTQConfig(bits=3, group_size=64))
    tensors, meta = qw.state()
    again = RTNWeight.from_state(tensors, meta)
    assert torch.equal(again.dequantize(), qw.dequantize())
    assert again.method == "gptq"


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=0), "bits"), (dict(bits=9), "bits"), (dict(bits=2.5), "integer"),
    (dict(group_size=0), "group_size"), (dict(damp=-0.1), "damp"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lvq.GPTQConfig(**kwargs)


def test_quantize_layer_checks_shapes():
    with pytest.raises(ValueError, match="H must be"):
        lvq.quantize_layer(torch.randn(4, 8), torch.eye(7), lvq.RTNConfig(bits=2, group_size=4))
