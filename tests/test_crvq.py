import json
import math

import pytest
import torch

import lvq
from lvq.baselines import quantize_rtn
from lvq.config import AQLMConfig, CRVQConfig, RTNConfig
from lvq.crvq import (CRVQWeight, channel_order, critical_group_count, estimate_bits, quantize_aqlm,
                      quantize_crvq)
from lvq.hessian import layer_objective

SMALL = dict(dim=8, codebook_bits=6, extended_bits=6, epochs=3, adam_steps=10, kmeans_iters=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests are many small ops: on a shared 2-core machine one thread is both faster and
    reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def outlier_layer(out_f=128, in_f=256, n_outliers=24, seed=0):
    """Gaussian W; activations with a few input channels 30x larger than the rest (H = XᵀX/n)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    X = torch.randn(1024, in_f, generator=g) @ (torch.eye(in_f) + 0.2 * torch.randn(in_f, in_f, generator=g))
    outliers = torch.randperm(in_f, generator=g)[:n_outliers]
    X[:, outliers] *= 30
    return W, (X.T @ X / X.shape[0]).double(), outliers


@pytest.fixture(scope="module")
def layer():
    return outlier_layer()


@pytest.fixture(scope="module")
def crvq_weight(layer):
    W, H, _ = layer
    return quantize_crvq(W, H, CRVQConfig(**SMALL, num_extended=2, critical_ratio=0.1))


def formula_bits(out_f, in_f, d, e0, m, e, g, perm):
    """docs/algorithms.md (CRVQ bits per weight): [(out·in/d)·e₀ + Σ_k out·g·e_k + Σ_k 2^{e_k}·d·16 + out·16] / (out·in) + perm."""
    total = (out_f * in_f / d) * e0 + m * out_f * g * e + (2**e0 + m * 2**e) * d * 16 + out_f * 16
    total += in_f * math.ceil(math.log2(in_f)) if perm else 0
    return total / (out_f * in_f)


@pytest.mark.parametrize("shape", [(64, 128), (48, 256), (96, 64)])
@pytest.mark.parametrize("ratio,m", [(0.0, 2), (0.05, 1), (0.2, 2)])
def test_bits_per_weight_is_the_formula(shape, ratio, m):
    out_f, in_f = shape
    W = torch.randn(out_f, in_f)
    cfg = CRVQConfig(dim=8, codebook_bits=4, extended_bits=3, num_extended=m, critical_ratio=ratio,
                     epochs=0, kmeans_iters=2)
    q = quantize_crvq(W, None, cfg)
    g = max(1, math.floor(ratio * in_f / 8)) if ratio > 0 else 0
    expect = formula_bits(out_f, in_f, 8, 4, m if g else 0, 3, g, perm=g > 0)
    assert q.bits_per_weight() == pytest.approx(expect, rel=1e-12)
    assert estimate_bits(out_f, in_f, cfg) == pytest.approx(q.bits_per_weight(), rel=1e-12)


def test_aqlm_bits_and_estimate():
    W = torch.randn(40, 96)
    cfg = AQLMConfig(dim=4, codebook_bits=5, num_codebooks=2, epochs=0, kmeans_iters=2)
    q = quantize_aqlm(W, None, cfg)
    expect = (2 * 40 * 24 * 5 + 2 * 32 * 4 * 16 + 40 * 16) / (40 * 96)
    assert q.bits_per_weight() == pytest.approx(expect, rel=1e-12)
    assert estimate_bits(40, 96, cfg) == pytest.approx(expect, rel=1e-12)
    assert q.perm is None and q.method == "aqlm"


def test_small_ratio_rounds_up_to_one_group():
    assert critical_group_count(576, 8, 0.01, 3) == 1  # ⌊5.76/8⌋ = 0 -> 1
    assert critical_group_count(1536, 8, 0.02, 3) == 3
    assert critical_group_count(576, 8, 0.0, 3) == 0
    assert critical_group_count(576, 8, 0.05, 0) == 0
    q = quantize_crvq(torch.randn(16, 64), None,
                      CRVQConfig(dim=8, codebook_bits=3, extended_bits=3, critical_ratio=0.01,
                                 epochs=0, kmeans_iters=2))
    st = q.stats()
    assert st["critical_groups"] == 1 and st["critical_ratio_used"] == pytest.approx(8 / 64)


def test_state_round_trip_is_exact(crvq_weight, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors, meta = crvq_weight.state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "w.safetensors"))
    meta2 = json.loads(json.dumps(meta))
    q2 = CRVQWeight.from_state(load_file(str(tmp_path / "w.safetensors")), meta2)
    assert torch.equal(q2.dequantize(), crvq_weight.dequantize())
    assert q2.bit_breakdown() == crvq_weight.bit_breakdown()
    t2, m2 = q2.state()
    assert m2 == meta and set(t2) == set(tensors)
    for k in tensors:
        assert t2[k].dtype == tensors[k].dtype and torch.equal(t2[k], tensors[k])


def test_permutation_round_trip(crvq_weight, layer):
    q = crvq_weight
    n = q.in_features
    assert sorted(q.perm_index.tolist()) == list(range(n))
    assert torch.equal(q.perm_index[q.inv_perm], torch.arange(n))
    assert torch.equal(q.dequantize()[:, q.perm_index], q.dequantize_permuted())
    x = torch.randn(3, 5, n)  # 15 tokens: decode-then-matmul path
    torch.testing.assert_close(q.linear(x), x @ q.dequantize().T, rtol=1e-4, atol=1e-4)
    x1, bias = torch.randn(2, 1, n), torch.randn(q.out_features)  # 2 tokens: lookup-table path
    torch.testing.assert_close(q.linear(x1, bias), x1 @ q.dequantize().T + bias, rtol=1e-4, atol=1e-4)


def test_importance_finds_the_outlier_channels(layer, crvq_weight):
    _, _, outliers = layer
    hmax = quantize_crvq(layer[0], layer[1], CRVQConfig(**{**SMALL, "epochs": 0}, importance="hessian_max"))
    for q in (crvq_weight, hmax):
        ranks = {r["channel"]: r["importance_rank"] for r in q.stats()["channels"]}
        top = {j for j, r in ranks.items() if r < len(outliers)}
        assert len(top & set(outliers.tolist())) >= 0.9 * len(outliers)
    # the critical positions of the permutation hold the most important channels
    assert set(crvq_weight.perm_index[:24].tolist()) <= set(outliers.tolist())


def test_channel_order():
    I = torch.tensor([0.1, 5.0, 0.3, 9.0, 0.2, 0.0])
    assert channel_order(I, 2, "critical_first").tolist() == [3, 1, 0, 2, 4, 5]
    assert channel_order(I, 2, "full").tolist() == [3, 1, 2, 4, 0, 5]
    with pytest.raises(ValueError, match="reorder"):
        channel_order(I, 2, "random")


def test_curve_is_monotone_and_matches_the_stored_weight(layer, crvq_weight):
    W, H, _ = layer
    curve = [r["loss"] for r in crvq_weight.stats()["curve"]]
    assert len(curve) >= 2
    assert all(b <= a * (1 + 1e-6) for a, b in zip(curve, curve[1:])), curve
    assert layer_objective(W, crvq_weight.dequantize(), H) == pytest.approx(curve[-1], rel=1e-3)


def test_extended_codebooks_lower_the_error_on_critical_channels(crvq_weight):
    rows = crvq_weight.stats()["channels"]
    crit = [r for r in rows if r["critical"]]
    assert len(crit) == crvq_weight.stats()["critical_groups"] * 8
    assert sum(r["err_full"] for r in crit) < 0.7 * sum(r["err_basic"] for r in crit)
    for r in rows:
        if not r["critical"]:
            assert r["err_full"] == pytest.approx(r["err_basic"], rel=1e-6)


def test_stats_tables(crvq_weight):
    st = crvq_weight.stats()
    assert {"channel", "importance", "importance_rank", "critical", "rank", "err_basic",
            "err_full"} <= set(st["channels"][0])
    assert sorted(r["rank"] for r in st["channels"]) == list(range(crvq_weight.in_features))
    counts = {}
    for r in st["codebooks"]:
        counts[r["codebook"]] = counts.get(r["codebook"], 0) + r["count"]
    assert counts[0] == 128 * 256 // 8  # every vector uses the basic codebook
    assert counts[1] == 128 * st["critical_groups"]
    assert 0 < st["codebook_bit_share"] < 1
    json.dumps(st)


def test_crvq_beats_aqlm_at_equal_bits():
    # 512 x 1024 (large enough that the permutation and the extra codebooks cost < 0.05 bpw);
    # 8 of 1024 input channels have 3x larger weights and 3x larger activations.
    g = torch.Generator().manual_seed(0)
    W = torch.randn(512, 1024, generator=g)
    X = torch.randn(2048, 1024, generator=g)
    outliers = torch.randperm(1024, generator=g)[:8]
    X[:, outliers] *= 3
    W[:, outliers] *= 3
    H = (X.T @ X / X.shape[0]).double()
    common = dict(dim=8, epochs=3, adam_steps=10, kmeans_iters=8)
    crvq = quantize_crvq(W, H, CRVQConfig(**common, codebook_bits=6, num_extended=2, extended_bits=5,
                                          critical_ratio=1 / 128))
    aqlm = quantize_aqlm(W, H, AQLMConfig(**common, codebook_bits=6))
    assert abs(crvq.bits_per_weight() - aqlm.bits_per_weight()) <= 0.05
    assert set(crvq.perm_index[:8].tolist()) == set(outliers.tolist())
    l_crvq, l_aqlm = layer_objective(W, crvq.dequantize(), H), layer_objective(W, aqlm.dequantize(), H)
    assert l_crvq < 0.98 * l_aqlm, (l_crvq, l_aqlm)
    rtn = quantize_rtn(W, None, RTNConfig(bits=1, group_size=64))
    assert l_aqlm < layer_objective(W, rtn.dequantize(), H)


def test_registry_and_quantize_layer():
    W = torch.randn(16, 32)
    q = lvq.methods.quantize_layer(W, None, AQLMConfig(dim=4, codebook_bits=3, epochs=1, adam_steps=2,
                                                        kmeans_iters=2))
    assert q.method == "aqlm" and q.dequantize().shape == (16, 32)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="dim"):
        CRVQConfig(dim=3)
    with pytest.raises(ValueError, match="critical_ratio"):
        CRVQConfig(critical_ratio=1.5)
    with pytest.raises(ValueError, match="importance"):
        CRVQConfig(importance="magnitude")
    with pytest.raises(ValueError, match="reorder"):
        CRVQConfig(reorder="sorted")
    with pytest.raises(ValueError, match="num_codebooks"):
        AQLMConfig(num_codebooks=0)
    with pytest.raises(ValueError, match="beam_width"):
        CRVQConfig(beam_width=0)
    with pytest.raises(ValueError, match="multiple of the vector dimension"):
        quantize_crvq(torch.randn(8, 20), None, CRVQConfig(dim=8))
    with pytest.raises(ValueError, match="H must be"):
        quantize_aqlm(torch.randn(8, 16), torch.eye(8), AQLMConfig(dim=8))
