"""Salience-driven bit allocation: exact average, determinism, fractional targets."""
import pytest
import torch

from lvq import bitalloc
from lvq.groups import group_bounds


def _layer(seed=0, out=64, inn=512):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inn, generator=g) * torch.linspace(0.2, 3, inn)  # salience varies
    X = torch.randn(1024, inn, generator=g)
    return W, (X.T @ X / 1024).double()


def _avg(widths, bounds):
    return sum(w * (b - a) for w, (a, b) in zip(widths, bounds)) / bounds[-1][1]


@pytest.mark.parametrize("bits", [2.0, 3.0])
def test_integer_target_exact_and_moves(bits):
    W, H = _layer()
    bounds = group_bounds(512, 64)
    al = bitalloc.allocate_bits(W, H, bounds, bits)
    assert _avg(al.widths, bounds) == bits
    assert set(al.widths) <= {bits - 1, bits, bits + 1}
    assert al.moved > 0  # salience differs a lot: moving bits pays
    # the most salient group is never below the least salient one
    sal = torch.tensor(al.salience)
    assert al.widths[int(sal.argmax())] >= al.widths[int(sal.argmin())]


@pytest.mark.parametrize("bits", [1.0, 1.5, 2.5])
def test_fractional_targets(bits):
    W, H = _layer(1)
    bounds = group_bounds(512, 64)
    al = bitalloc.allocate_bits(W, H, bounds, bits)
    assert _avg(al.widths, bounds) == pytest.approx(bits)
    assert min(al.widths) >= 1 and max(al.widths) <= 8
    assert bitalloc.code_bits([b - a for a, b in bounds], bits) == sum(
        w * (b - a) for w, (a, b) in zip(al.widths, bounds))


def test_partial_group_and_shapes_only_estimate():
    W, H = _layer(2, inn=576)
    bounds = group_bounds(576, 128)  # 4 x 128 + 64
    al = bitalloc.allocate_bits(W, H, bounds, 2.0)
    assert _avg(al.widths, bounds) == 2.0
    assert al.widths[-1] == 2
    assert bitalloc.code_bits([b - a for a, b in bounds], 2.0) == 2 * 576


def test_deterministic():
    W, H = _layer(3)
    bounds = group_bounds(512, 64)
    a = bitalloc.allocate_bits(W, H, bounds, 2.0)
    b = bitalloc.allocate_bits(W.clone(), H.clone(), bounds, 2.0)
    assert a == b


def test_no_search_keeps_uniform_widths():
    W, H = _layer(4)
    al = bitalloc.allocate_bits(W, H, group_bounds(512, 64), 3.0, search=False)
    assert al.widths == [3] * 8 and al.moved == 0


def test_salience_formula():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    H = torch.diag(torch.tensor([1.0, 4.0, 1.0, 1.0])).double()
    s = bitalloc.group_salience(W, H, [(0, 2), (2, 4)], damp=0.0)
    # U = diag(1/sqrt(h)) -> W²/U² = W² h
    assert torch.allclose(s, torch.tensor([1 + 16.0, 9 + 16.0], dtype=torch.float64))


def test_bad_target():
    W, H = _layer()
    with pytest.raises(ValueError):
        bitalloc.allocate_bits(W, H, group_bounds(512, 64), 9.0)
