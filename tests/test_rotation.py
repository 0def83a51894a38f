"""Randomized Hadamard transforms: exact Hadamard orders, fast == dense, inverses, incoherence."""
import json

import pytest
import torch

from lvq import rotation as rot

# sizes of the model family and the expected small factor m (n = m · 2^k)
SPECS = {64: (1, "sylvester"), 96: (12, "paley1"), 128: (1, "sylvester"), 192: (12, "paley1"),
         576: (36, "paley2"), 640: (20, "paley1"), 896: (28, "paley1"), 1536: (12, "paley1"),
         2048: (1, "sylvester"), 2304: (36, "paley2"), 3072: (12, "paley1"),
         4864: (76, "paley2"), 5632: (44, "paley1"), 8192: (1, "sylvester"),
         11008: (344, "paley1"), 100: (100, "paley2"), 6: (3, "orthogonal"),
         10: (5, "orthogonal"), 30: (15, "orthogonal"), 92: (23, "orthogonal")}
AWKWARD = (6, 10, 30, 92)


def test_spec_table():
    for n, (m, kind) in SPECS.items():
        spec = rot.hadamard_spec(n)
        assert (spec.m, spec.kind) == (m, kind), (n, spec)
        assert spec.m * spec.pow2 == n and spec.is_hadamard == (kind != "orthogonal")
    assert rot.hadamard_spec(11008).q == 343                     # 7³: a prime-power field
    assert rot.hadamard_spec(1472, max_small=256).kind == "orthogonal"
    assert rot.hadamard_spec(1472).m == 368                       # 92·16 = 368·4, 367 prime


def test_every_small_paley_order_is_exactly_hadamard():
    orders = [m for m in range(4, 400, 4) if rot._small_construction(m)] + [344]
    assert {12, 20, 28, 36, 44, 76, 100, 148, 344} <= set(orders)
    for m in orders:
        H = rot.hadamard_matrix(m, normalized=False)
        assert H.dtype == torch.int64 and bool((H.abs() == 1).all()), m
        Hd = H.double()
        assert torch.equal(Hd @ Hd.T, m * torch.eye(m, dtype=torch.float64)), m
    H12 = rot.hadamard_matrix(12, normalized=False)
    assert not torch.equal(H12, H12.T)                           # Paley I is not symmetric


@pytest.mark.parametrize("n", [12, 20, 28, 36, 76, 192, 576, 640, 896, 1536])
def test_claimed_orders_are_orthogonal(n):
    H = rot.hadamard_matrix(n, normalized=False).double()
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


def test_large_order_orthogonal_through_the_fast_transform():
    for n in (4864, 11008):
        x = torch.randn(8, n, dtype=torch.float64)
        y = rot.hadamard_transform(x, n)
        assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-12)
        assert torch.allclose(rot.hadamard_transform(y, n, transpose=True), x, atol=1e-12)
        # column j = a·2^k + b of T = F_m ⊗ H_{2^k}/√(2^k) is F[:, a] ⊗ H[:, b]/√(2^k)
        spec, F = rot.hadamard_spec(n), rot.small_factor(n)
        H = rot.hadamard_matrix(spec.pow2)
        for j in (0, 1, n // 2 + 3, n - 1):
            col = torch.kron(F[:, j // spec.pow2], H[:, j % spec.pow2])
            e = torch.zeros(n, dtype=torch.float64)
            e[j] = 1
            assert torch.allclose(rot.hadamard_transform(e, n), col, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 6, 12, 36, 92, 96, 100, 576, 640, 1536])
def test_fast_transform_matches_dense(n):
    T = rot.hadamard_matrix(n)
    assert torch.allclose(T @ T.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    x = torch.randn(2, 3, n, dtype=torch.float64)
    assert torch.allclose(rot.hadamard_transform(x, n), x @ T.T, atol=1e-12)
    assert torch.allclose(rot.hadamard_transform(x, n, transpose=True), x @ T, atol=1e-12)
    y32 = rot.hadamard_transform(x.float(), n)
    assert y32.dtype == torch.float32 and y32.shape == x.shape
    assert torch.allclose(y32.double(), x @ T.T, atol=1e-5)


@pytest.mark.parametrize("n", [64, 96, 576, 1536, 4864, 30])
def test_apply_then_apply_t_is_identity(n):
    R = rot.RHT.random(n, seed=3)
    x = torch.randn(5, n, dtype=torch.float64)
    assert torch.allclose(R.apply_t(R.apply(x)), x, atol=1e-12, rtol=0)
    assert torch.allclose(R.apply(R.apply_t(x)), x, atol=1e-12, rtol=0)
    x32 = x.float()
    assert (R.apply_t(R.apply(x32)) - x32).abs().max() < 1e-5
    if n <= 1536:
        M = R.matrix()
        assert torch.allclose(R.apply(x), x @ M.T, atol=1e-12)
        assert torch.allclose(R.apply_t(x), x @ M, atol=1e-12)


def test_signs_are_seeded_and_real_scales_work():
    a, b, c = rot.RHT.random(96, seed=1), rot.RHT.random(96, seed=1), rot.RHT.random(96, seed=2)
    assert torch.equal(a.signs, b.signs) and not torch.equal(a.signs, c.signs)
    assert set(a.signs.tolist()) == {-1.0, 1.0} and a.signs_bits() == 96 and a.is_binary
    s = torch.rand(96, dtype=torch.float64) + 0.5                  # fine-tuned real scales
    R = rot.RHT(a.spec, s)
    x = torch.randn(4, 96, dtype=torch.float64)
    M = rot.hadamard_matrix(96) @ torch.diag(s)                    # H·diag(s)
    assert torch.allclose(R.apply(x), x @ M.T, atol=1e-12)
    assert torch.allclose(R.apply_t(x), x @ M, atol=1e-12)
    assert torch.allclose(R.apply_inv(R.apply(x)), x, atol=1e-12)
    assert not R.is_binary and R.signs_bits() == 96 * 64


def test_rotate_unrotate_and_dense_equivalence():
    U, V = rot.RHT.random(192, seed=1), rot.RHT.random(640, seed=2)
    W = torch.randn(192, 640, dtype=torch.float64)
    Wr = rot.rotate_weight(W, U, V)
    assert torch.allclose(Wr, U.matrix() @ W @ V.matrix().T, atol=1e-12)
    assert torch.allclose(rot.unrotate_weight(Wr, U, V), W, atol=1e-12)
    with pytest.raises(ValueError):
        rot.rotate_weight(W.T, U, V)


def test_rotate_hessian_keeps_the_proxy_loss():
    U, V = rot.RHT.random(96, seed=4), rot.RHT.random(576, seed=5)
    X = torch.randn(1000, 576, dtype=torch.float64)
    H = X.T @ X / X.shape[0]
    W = torch.randn(96, 576, dtype=torch.float64)
    Hr, Wr = rot.rotate_hessian(H, V), rot.rotate_weight(W, U, V)
    assert Hr.dtype == torch.float64
    assert torch.allclose(Hr, V.matrix() @ H @ V.matrix().T, atol=1e-10)
    assert torch.allclose(torch.trace(W @ H @ W.T), torch.trace(Wr @ Hr @ Wr.T), rtol=1e-12)
    # and the error of any perturbation of W' maps back with the same proxy loss
    E = 1e-2 * torch.randn_like(Wr)
    Eb = rot.unrotate_weight(E, U, V)
    assert torch.allclose(torch.trace(Eb @ H @ Eb.T), torch.trace(E @ Hr @ E.T), rtol=1e-10)


def test_rotated_linear_matches_the_plain_layer():
    U, V = rot.RHT.random(640, seed=6), rot.RHT.random(192, seed=7)
    W, b = torch.randn(640, 192), torch.randn(640)
    x = torch.randn(3, 5, 192)
    y = rot.rotated_linear(x, rot.rotate_weight(W, U, V), U, V, b)
    assert y.shape == (3, 5, 640)
    assert torch.allclose(y, x @ W.T + b, atol=1e-4)


def test_rotation_spreads_outlier_columns():
    W = 0.02 * torch.randn(256, 576)
    W[:, [3, 100, 400]] *= 100.0                                   # three huge input channels
    U, V = rot.RHT.random(256, seed=0), rot.RHT.random(576, seed=1)
    before, after = rot.max_to_rms(W), rot.max_to_rms(rot.rotate_weight(W, U, V))
    assert before > 30 and after < 5 and after < before / 8, (before, after)


@pytest.mark.parametrize("n", AWKWARD)
def test_fallback_is_orthogonal_and_deterministic(n):
    R = rot.RHT.random(n, seed=9)
    assert R.kind == "orthogonal" and not R.spec.is_hadamard
    M = R.matrix()
    assert torch.allclose(M @ M.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(M, rot.RHT.random(n, seed=9).matrix())
    assert not torch.allclose(M, rot.RHT.random(n, seed=10).matrix())
    x = torch.randn(4, n, dtype=torch.float64)
    assert torch.allclose(R.apply(x), x @ M.T, atol=1e-12)
    with pytest.raises(ValueError, match="no Hadamard"):
        rot.hadamard_matrix(n, normalized=False)


@pytest.mark.parametrize("n", [1, 13, 92, 576, 11008])
def test_serialisation_round_trip(n):
    R = rot.RHT.random(n, seed=11)
    tensors, meta = R.to_state()
    assert tensors["signs"].dtype == torch.uint8 and tensors["signs"].numel() == (n + 7) // 8
    R2 = rot.RHT.from_state(tensors, json.loads(json.dumps(meta)))
    assert R2.spec == R.spec and torch.equal(R2.signs, R.signs)
    x = torch.randn(2, n, dtype=torch.float64)
    assert torch.allclose(R2.apply(x), R.apply(x), rtol=0, atol=1e-14)
    S = rot.RHT(R.spec, torch.randn(n).half())                     # real scales stay real
    t, m = S.to_state()
    S2 = rot.RHT.from_state(t, json.loads(json.dumps(m)))
    assert m["signs"] == "scales" and torch.equal(S2.signs, S.signs) and S2.signs_bits() == 16 * n


def test_clear_errors():
    for bad in (0, -3):
        with pytest.raises(ValueError, match="positive"):
            rot.hadamard_spec(bad)
        with pytest.raises(ValueError):
            rot.RHT.random(bad)
    with pytest.raises(ValueError, match="last dim"):
        rot.hadamard_transform(torch.randn(3, 10), 12)
    with pytest.raises(ValueError, match="floating"):
        rot.hadamard_transform(torch.ones(12, dtype=torch.int64), 12)
    with pytest.raises(ValueError):
        rot.HadamardSpec(24, 12, "paley2", 5)                      # 12·2 is Paley I (q = 11) here
    with pytest.raises(ValueError):
        rot.HadamardSpec(40, 3, "orthogonal")
    with pytest.raises(ValueError):
        rot.RHT(rot.hadamard_spec(12), torch.ones(11))
