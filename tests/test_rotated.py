"""Incoherence processing around any method (lvq/rotated_weight.py)."""
import json

import pytest
import torch
import torch.nn.functional as F

import lvq
from lvq.hessian import layer_objective
from lvq.rotated_weight import RotatedWeight, rotations

CONFIGS = [
    lvq.RTNConfig(bits=3, group_size=32, incoherence=True),
    lvq.GPTQConfig(bits=2, group_size=32, incoherence=True),
    lvq.GLVQConfig(bits=2.0, group_size=64, dim=8, steps=0, lattice="E8", decoder="nearest", incoherence=True),
    lvq.GLVQConfig(bits=2.0, group_size=64, dim=8, steps=1, incoherence=True),
    lvq.AQLMConfig(dim=8, codebook_bits=4, epochs=1, adam_steps=2, kmeans_iters=2, incoherence=True),
    lvq.CRVQConfig(dim=8, codebook_bits=4, num_extended=1, extended_bits=3, critical_ratio=0.1, epochs=1,
                   adam_steps=2, kmeans_iters=2, incoherence=True),
]


def _layer(out=48, inn=128, seed=0, outliers=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inn, generator=g)
    if outliers:  # a few heavy input columns and one heavy row, as in real LLM layers
        W[:, :3] *= 12
        W[5] *= 8
    X = torch.randn(1024, inn, generator=g) * torch.linspace(0.2, 3, inn)
    return W, (X.T @ X / 1024).double()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.method)
def test_rotated_weight_decodes_as_u_t_q_v_and_round_trips(cfg):
    W, H = _layer()
    q = lvq.quantize_layer(W, H, cfg)
    assert isinstance(q, RotatedWeight) and q.method == cfg.method and q.shape == W.shape
    U, V = rotations(*W.shape, cfg.rotation_seed)
    inner = q.inner.dequantize().double()
    ref = U.matrix().T @ inner @ V.matrix()
    assert torch.allclose(q.dequantize().double(), ref, atol=1e-5)
    # bits: the inner method's plus one bit per sign, and the shape-only estimate agrees
    assert q.bit_breakdown()["rotation"] == 48 + 128
    assert q.bits_per_weight() == pytest.approx(q.inner.bits_per_weight() + (48 + 128) / (48 * 128))
    assert lvq.methods.estimate_layer_bits(48, 128, cfg) == pytest.approx(q.bits_per_weight())
    tensors, meta = q.state()
    q2 = RotatedWeight.from_state({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    assert torch.equal(q2.dequantize(), q.dequantize())
    x = torch.randn(3, 128)
    assert torch.allclose(q.linear(x), F.linear(x, q.dequantize()), atol=1e-4)


def test_rotation_lowers_the_error_of_a_layer_with_outliers():
    W, H = _layer(out=64, inn=256)
    for cfg in (lvq.GPTQConfig(bits=2, group_size=64), lvq.GLVQConfig(bits=2.0, steps=0, lattice="E8",
                                                                       decoder="nearest", companding=False)):
        plain = layer_objective(W, lvq.quantize_layer(W, H, cfg).dequantize(), H)
        rotated = layer_objective(W, lvq.quantize_layer(W, H, cfg.replace(incoherence=True)).dequantize(), H)
        assert rotated < 0.9 * plain, (cfg.method, rotated, plain)


@pytest.mark.parametrize("cfg", [
    lvq.GLVQConfig(bits=2.0, group_size=32, steps=0, lattice="E8", decoder="nearest", incoherence=True),
    lvq.GLVQConfig(bits=2.0, group_size=32, steps=0, lattice="E8P", decoder="nearest", incoherence=True),
    lvq.GPTQConfig(bits=3, group_size=32, incoherence=True),
    lvq.CRVQConfig(dim=8, codebook_bits=6, extended_bits=4, num_extended=1, incoherence=True,
                   epochs=1, adam_steps=0)])
def test_packed_kernel_of_a_rotated_layer_matches(cfg):
    W, H = _layer(out=40, inn=96)
    q = lvq.quantize_layer(W, H, cfg)
    lin = lvq.QuantizedLinear(q, mode="packed")
    with torch.no_grad():
        # one token (the fused one-call path, in every shape generate passes), a few (the numba
        # transforms and the codes kernel), many (the prefill path)
        for shape in ((96,), (1, 96), (1, 1, 96), (2, 96), (40, 96)):
            x = torch.randn(shape)
            y = lin(x)
            assert y.shape == (*shape[:-1], 40)
            assert torch.allclose(y, F.linear(x, q.dequantize()), atol=1e-4), shape
    assert lin._kernel.one_token is not None  # the fused one-token call was the one tested


def test_rotated_run_saves_and_reloads(tiny_model_dir, tiny_corpus, tmp_path):
    model, tok = lvq.load_model(str(tiny_model_dir))
    cfg = lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0, lattice="E8", decoder="nearest",
                         incoherence=True)
    res = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32))
    ids = torch.randint(0, 100, (1, 12))
    lvq.save_run(res, tmp_path / "run")  # also rounds the model's embeddings to the stored fp16
    with torch.no_grad():
        ref = model(ids).logits
    model2, _, report = lvq.load_run(tmp_path / "run", device="cpu")
    with torch.no_grad():
        assert torch.allclose(model2(ids).logits, ref, atol=1e-4)
    assert bool(report.layers["stat_incoherence"].all())
    est = lvq.estimate_size(model2.config, cfg)
    assert est["bits_per_weight"] == pytest.approx(lvq.model_size(model2)["bits_per_weight"])


def test_trainable_rotation_scales_are_counted_trained_and_reloaded():
    from lvq.finetune import _is_trainable

    W, H = _layer(out=32, inn=64)
    cfg = lvq.GLVQConfig(bits=2.0, group_size=32, steps=0, lattice="E8P", decoder="nearest",
                         incoherence=True, train_rotation=True)
    q = lvq.quantize_layer(W, H, cfg)
    assert q.bit_breakdown()["rotation"] == 16 * (32 + 64)
    assert lvq.methods.estimate_layer_bits(32, 64, cfg) == pytest.approx(q.bits_per_weight())
    lin = lvq.QuantizedLinear(q, mode="train")
    names = [n for n in lin.state_names if _is_trainable(n, lin.trainable)]
    assert {"rot_in_scales", "rot_out_scales"} <= set(names)
    for n in names:
        setattr(lin, n, getattr(lin, n).float().requires_grad_(True))
    x = torch.randn(4, 64)
    y = lin(x)
    assert torch.allclose(y, F.linear(x, q.dequantize()), atol=1e-4)
    y.square().sum().backward()
    assert lin.rot_in_scales.grad.abs().sum() > 0
    with torch.no_grad():  # trained scales: the stored form decodes with them, kernel included
        lin.rot_in_scales.mul_(1.1)
    tensors = {n: getattr(lin, n).detach() for n in lin.state_names}
    q2 = RotatedWeight.from_state(tensors, lin.meta)
    assert q2.scales and not torch.allclose(q2.dequantize(), q.dequantize())
    packed = lvq.QuantizedLinear(q2, mode="packed")  # stores the scales in fp16
    with torch.no_grad():
        assert torch.allclose(packed(x[:1]), F.linear(x[:1], packed.qweight().dequantize()), atol=1e-4)
