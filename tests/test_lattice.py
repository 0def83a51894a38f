"""Lattice math: Babai rounding, exact nearest-point decoders vs brute force, 2-D helpers."""
import itertools

import pytest
import torch

from lvq import lattice as lat


def _brute_nearest(X, points):
    d2 = torch.cdist(X.double(), points.double())
    return points[d2.argmin(1)], d2.min(1).values


def test_babai_exact_on_lattice_points():
    torch.manual_seed(0)
    for d, bits in [(2, 1), (4, 2), (8, 3), (16, 2)]:
        G = torch.randn(d, d, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
        lo, hi = lat.code_range(bits)
        Z = torch.randint(lo, hi + 1, (500, d))
        X = lat.babai_decode(Z, G)
        assert torch.equal(lat.babai_encode(X, G, bits), Z)


def test_babai_clamps_and_is_symmetric():
    G = torch.eye(2)
    Z = lat.babai_encode(torch.tensor([[100.0, -100.0], [0.1, -0.1]]), G, 2)
    assert Z.tolist() == [[1, -2], [0, -1]]
    # 1-bit: two levels ±½ per coordinate
    pts = lat.codebook_points(torch.eye(2), 1)
    assert sorted(pts[:, 0].unique().tolist()) == [-0.5, 0.5]


def _natural_neighbourhood(kind, d):
    """Every lattice point with coordinates in [-2, 2] (natural coordinates)."""
    ints = torch.tensor(list(itertools.product(range(-2, 3), repeat=d)), dtype=torch.float64)
    if kind == "Z":
        return ints
    even = ints[torch.remainder(ints.sum(1), 2) == 0]
    if kind == "D":
        return even
    halves = torch.tensor(list(itertools.product(range(-2, 2), repeat=d)), dtype=torch.float64)
    halves = halves[torch.remainder(halves.sum(1), 2) == 0] + 0.5
    return torch.cat([even, halves])


@pytest.mark.parametrize("fn,kind,d", [(lat.nearest_zn, "Z", 3), (lat.nearest_dn, "D", 4),
                                       (lat.nearest_e8, "E8", 8)])
def test_unconstrained_nearest_vs_brute_force(fn, kind, d):
    torch.manual_seed(1)
    X = (torch.rand(40, d, dtype=torch.float64) * 2 - 1)  # nearest points lie in [-2, 2]^d
    P = _natural_neighbourhood(kind, d)
    Y = fn(X)
    # Y is a lattice point: integer coordinates in the standard basis
    B = lat.standard_generator(kind, d, dtype=torch.float64)
    Zc = torch.linalg.solve(B, Y.T).T
    assert torch.allclose(Zc, torch.round(Zc), atol=1e-9)
    _, dist = _brute_nearest(X, P)
    assert torch.allclose(((X - Y) ** 2).sum(1).sqrt(), dist, atol=1e-9)


@pytest.mark.parametrize("kind,d,bits", [("Z", 3, 2), ("D", 2, 2), ("D", 4, 2), ("D", 4, 1),
                                         ("E8", 8, 1), ("E8", 8, 2)])
def test_box_nearest_vs_brute_force(kind, d, bits):
    torch.manual_seed(2)
    codes = torch.tensor(list(itertools.product(range(1 << bits), repeat=d)), dtype=torch.int64)
    pts = lat.nearest_decode(codes, kind, bits, dtype=torch.float64)
    if kind == "D":  # the parity bit is redundant: keep only valid codes
        valid = torch.remainder((codes - (1 << (bits - 1))).sum(1), 2) == 0
        codes, pts = codes[valid], pts[valid]
    # every decodable point is distinct (E8 uses all 2^(8b) codes)
    assert torch.unique(pts, dim=0).shape[0] == pts.shape[0]
    X = torch.randn(200, d, dtype=torch.float64) * (1 << (bits - 1))
    U = lat.nearest_encode(X, kind, bits)
    Y = lat.nearest_decode(U, kind, bits, dtype=torch.float64)
    _, dist = _brute_nearest(X, pts)
    assert torch.allclose(((X - Y) ** 2).sum(1).sqrt(), dist, atol=1e-9)
    # encode/decode round trip on the code set itself
    assert torch.equal(lat.nearest_encode(pts, kind, bits), codes)


def test_e8_code_set_is_symmetric():
    codes = torch.tensor(list(itertools.product(range(2), repeat=8)), dtype=torch.int64)
    pts = lat.nearest_decode(codes, "E8", 1, dtype=torch.float64)
    neg = lat.nearest_decode(lat.nearest_encode(-pts, "E8", 1), "E8", 1, dtype=torch.float64)
    assert torch.allclose(neg, -pts)


def test_cholesky_generator_whitens():
    torch.manual_seed(3)
    A = torch.randn(4, 4)
    V = torch.randn(20000, 4) @ A.T
    L = lat.cholesky_generator(V)
    Wh = V @ torch.linalg.inv(L).T
    assert torch.allclose(Wh.T @ Wh / V.shape[0], torch.eye(4), atol=1e-3)


def test_singular_value_band():
    G0 = torch.diag(torch.tensor([4.0, 2.0, 1.0]))
    G = torch.diag(torch.tensor([100.0, 2.0, 0.01]))
    P = lat.clamp_singular_values(G, torch.linalg.svdvals(G0), (0.5, 2.0))
    assert torch.allclose(torch.linalg.svdvals(P), torch.tensor([8.0, 2.0, 0.5]), atol=1e-5)


def test_two_d_helpers():
    G = torch.tensor([[1.0, 0.5], [0.0, 3 ** 0.5 / 2]])  # hexagonal
    cell = lat.voronoi_cell(G)
    assert cell.shape == (7, 2)  # a hexagon, closed
    area = 0.5 * abs(float((cell[:-1, 0] * cell[1:, 1] - cell[1:, 0] * cell[:-1, 1]).sum()))
    assert area == pytest.approx(abs(float(torch.linalg.det(G))), rel=1e-6)
    assert lat.babai_cell(G).shape == (5, 2)
    P = lat.lattice_points_in_window(G, (-2, 2), (-2, 2))
    assert P.shape[0] > 10 and float(P.abs().max()) <= 2
    assert lat.codebook_points(G, 2).shape == (16, 2)


def test_bad_widths_raise():
    with pytest.raises(ValueError, match="1..8"):
        lat.width_step(9)
    with pytest.raises(ValueError):
        lat.standard_generator("E8", 4)
