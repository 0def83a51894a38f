"""GLVQ end to end on small layers: learning, RTN comparison, storage, bits, validation."""
import json

import pytest
import torch

from lvq.baselines import quantize_rtn
from lvq.config import GLVQConfig, RTNConfig
from lvq.glvq import GLVQWeight, estimate_bits, quantize_glvq
from lvq.hessian import layer_objective
from lvq.methods import get_method, quantize_layer


def _correlated_layer(out=96, inn=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inn, generator=g) * (0.5 + torch.rand(out, 1, generator=g))
    X = torch.randn(2048, 32, generator=g) @ torch.randn(32, inn, generator=g)
    X = X + 0.3 * torch.randn(2048, inn, generator=g)
    return W, (X.T @ X / 2048).double()


def test_learning_lowers_objective():
    """Anisotropic metric inside each d-block: Adam on G must beat the Cholesky-initialised G₀."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 128, generator=g)
    Q = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    Hb = Q @ torch.diag(torch.logspace(0, 2, 8)) @ Q.T
    H = torch.block_diag(*[Hb] * 16).double()
    cfg = GLVQConfig(bits=2, steps=60, lr=0.03, patience=20, error_feedback=False,
                     bit_allocation=False, companding=False)
    q = quantize_glvq(W, H, cfg)
    st = q.stats()
    assert st["objective"] < 0.98 * st["objective_init"]
    g0 = st["groups"][0]
    assert g0["err_after"] < g0["err_before"]
    assert st["curve"][-1]["rel_loss"] < st["curve"][0]["rel_loss"]
    # learning disabled: the objective stays at the initial one
    q0 = quantize_glvq(W, H, cfg.replace(steps=0))
    assert q0.stats()["objective"] == pytest.approx(q0.stats()["objective_init"], rel=1e-2)


def test_beats_rtn_at_fewer_bits_on_correlated_layer():
    W, H = _correlated_layer()
    q = quantize_glvq(W, H, GLVQConfig(bits=2, steps=10))
    r = quantize_rtn(W, H, RTNConfig(bits=2, group_size=128))
    assert q.bits_per_weight() <= r.bits_per_weight()
    assert layer_objective(W, q.dequantize(), H) < 0.5 * layer_objective(W, r.dequantize(), H)


def test_error_feedback_helps():
    W, H = _correlated_layer(seed=1)
    base = GLVQConfig(bits=2, steps=0)
    on = layer_objective(W, quantize_glvq(W, H, base).dequantize(), H)
    off = layer_objective(W, quantize_glvq(W, H, base.replace(error_feedback=False)).dequantize(), H)
    assert on < 0.5 * off


def test_state_round_trip_exact():
    W, H = _correlated_layer(out=32, inn=192)
    q = quantize_glvq(W, H, GLVQConfig(bits=2.5, group_size=64, steps=5))
    tensors, meta = q.state()
    meta2 = json.loads(json.dumps(meta))
    q2 = GLVQWeight.from_state({k: v.clone() for k, v in tensors.items()}, meta2)
    Wq = q.dequantize()
    assert Wq.dtype == torch.float32 and Wq.shape == W.shape
    assert torch.equal(q2.dequantize(), Wq)
    assert q2.bits_per_weight() == q.bits_per_weight()
    assert all(t.dtype in (torch.uint8, torch.float16) for t in tensors.values())
    # the decode used for the layer objective during quantization is the stored one
    assert q.diagnostics["layer_objective"] == pytest.approx(layer_objective(W, Wq, H), rel=1e-4)
    # diagnostics stay out of the stored metadata (run.json stays small)
    assert "group_stats" not in meta and "curve" not in meta and q2.diagnostics is None


def test_bits_hand_computation_and_estimate():
    W = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    cfg = GLVQConfig(bits=2, group_size=64, dim=8, steps=2)  # groups of 64 and 32 columns
    q = quantize_glvq(W, None, cfg)
    codes = 16 * 96 * 2          # average 2 bits (moves keep the sum)
    scales = 16 * 2 * 16         # fp16 per row and group
    generators = 2 * 64 * 16     # one 8x8 fp16 generator per group
    mu = 2 * 16                  # one fp16 mu per group
    tags = 2 * 3                 # 3-bit width tag per group
    hand = (codes + scales + generators + mu + tags) / (16 * 96)
    assert q.bits_per_weight() == pytest.approx(hand, abs=1e-12)
    assert estimate_bits(16, 96, cfg) == pytest.approx(hand, abs=1e-12)
    for c in (cfg.replace(bits=1.5), cfg.replace(shared_lattice=True, shared_companding=True),
              cfg.replace(companding=False), cfg.replace(lattice="E8", decoder="nearest")):
        assert estimate_bits(16, 96, c) == pytest.approx(quantize_glvq(W, None, c).bits_per_weight())


def test_ablation_switches_run():
    W, H = _correlated_layer(out=32, inn=256, seed=2)
    full = GLVQConfig(bits=2, steps=3)
    for c in (full.replace(shared_lattice=True), full.replace(shared_companding=True),
              full.replace(companding=False), full.replace(bit_allocation=False),
              full.replace(feedback_unit="group"), full.replace(identity_companding=False),
              full.replace(lattice="E8", decoder="nearest"), full.replace(lattice="D", decoder="babai"),
              full.replace(lattice="Z", decoder="nearest"), full.replace(lattice="E8P", decoder="nearest"),
              full.replace(lattice="E8P", decoder="nearest", incoherence=True)):
        q = quantize_layer(W, H, c)
        t, _ = (q.inner if c.incoherence else q).state()
        if c.shared_lattice:
            assert t["generators"].shape == (1, 8, 8)
        if c.shared_companding:
            assert t["mu"].shape == (1,)
        if not c.companding:
            assert "mu" not in t
        if not c.bit_allocation:
            assert set(q.widths) == {2}
        rel = layer_objective(W, q.dequantize(), H) / layer_objective(W, torch.zeros_like(W), H)
        assert rel < 0.2, c


def test_e8_nearest_beats_cube_on_gaussian():
    """Cell-shape gain: exact E8 decoding beats Z^8 rounding at the same bits (H = I)."""
    W = torch.randn(256, 256, generator=torch.Generator().manual_seed(3))
    cfg = GLVQConfig(bits=2, steps=0, companding=False, bit_allocation=False, error_feedback=False)
    z = quantize_glvq(W, None, cfg.replace(lattice="Z", decoder="nearest"))
    e8 = quantize_glvq(W, None, cfg.replace(lattice="E8", decoder="nearest"))
    mse = [float(((W - q.dequantize()) ** 2).mean()) for q in (z, e8)]
    assert mse[1] < 0.95 * mse[0]


def test_stats_tables():
    W, H = _correlated_layer(out=32, inn=256)
    st = quantize_glvq(W, H, GLVQConfig(bits=2, steps=3)).stats()
    assert len(st["groups"]) == 2
    row = st["groups"][0]
    for key in ("group", "col_start", "col_stop", "bits", "salience", "mu", "scale_mean",
                "err_before", "err_after"):
        assert key in row
    assert st["curve"] and {"step", "loss"} <= set(st["curve"][0])
    assert json.loads(json.dumps(st)) == st


def test_registry_entry():
    m = get_method("glvq")
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    q = quantize_layer(W, None, GLVQConfig(bits=3, group_size=64, steps=1))
    assert isinstance(q, m.weight_cls) and q.shape == (8, 64)
    assert m.estimate_bits(8, 64, GLVQConfig(bits=3, group_size=64)) == pytest.approx(q.bits_per_weight())


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 0.5}, "bits"), ({"bits": 9}, "bits"), ({"group_size": 100, "dim": 8}, "divide"),
    ({"dim": 3}, "dim"), ({"mu_min": 0.0}, "mu_min"), ({"mu_min": 50.0, "mu_max": 20.0}, "mu_max"),
    ({"decoder": "nearest"}, "standard lattice"), ({"feedback_unit": "row"}, "feedback_unit"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GLVQConfig(**kwargs)


def test_partial_group_not_divisible_by_dim_raises():
    with pytest.raises(ValueError, match="does not divide"):
        quantize_glvq(torch.randn(4, 132), None, GLVQConfig(bits=2, group_size=128, dim=8))
