"""The 2^16-point E8 codebook (lvq/e8p.py): structure, exact nearest point, round trips."""
import torch

from lvq import e8p


def _all_points() -> torch.Tensor:
    codes = torch.arange(1 << 16)
    fields = (codes[:, None] >> (2 * torch.arange(8))) & 3
    return fields, e8p.decode(fields, dtype=torch.float64)


def test_codebook_is_65536_distinct_points_of_shifted_e8():
    fields, P = _all_points()
    assert len({tuple(p) for p in P.tolist()}) == 1 << 16
    Y = P - torch.where(((fields[:, 7] >> 1) & 1)[:, None] == 1, -0.25, 0.25)  # undo the ±¼ shift
    assert torch.all(torch.remainder(Y - 0.5, 1.0) == 0)                       # half-odd coordinates
    assert torch.all(torch.remainder(Y.sum(1), 2.0) == 0)                      # even sum: D8 + ½
    norms = (Y * Y).sum(1)
    assert int((norms <= 10).sum()) == 227 * 128 * 2 and float(norms.max()) == 12.0


def test_encode_is_the_exact_nearest_point_and_decodes_back():
    _, P = _all_points()
    X = torch.randn(120, 8, generator=torch.Generator().manual_seed(0)) * 1.3
    U = e8p.encode(X)
    assert U.dtype == torch.int64 and int(U.min()) >= 0 and int(U.max()) <= 3
    got = e8p.decode(U, dtype=torch.float64)
    brute = P[torch.cdist(X.double(), P).argmin(1)]
    d_got = ((X.double() - got) ** 2).sum(1)
    d_best = ((X.double() - brute) ** 2).sum(1)
    assert torch.allclose(d_got, d_best, atol=1e-9)
    assert torch.equal(e8p.encode(got.float()), U)


def test_gaussian_mse_beats_the_box_e8_code():
    from lvq import lattice

    X = torch.randn(16000, 8, generator=torch.Generator().manual_seed(1))
    best = {}
    for name, enc, dec in (("e8p", e8p.encode, e8p.decode),
                           ("e8box", lambda Y: lattice.nearest_encode(Y, "E8", 2),
                            lambda U: lattice.nearest_decode(U, "E8", 2))):
        best[name] = min(float(((X - dec(enc(X / c)) * c) ** 2).mean()) for c in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9))
    assert best["e8p"] < 0.095 and best["e8p"] < 0.92 * best["e8box"], best


def test_e8p_kind_uses_the_box_e8_code_at_other_widths():
    from lvq import lattice

    X = torch.randn(50, 8, generator=torch.Generator().manual_seed(2)) * 3
    for bits in (1, 3):
        assert torch.equal(lattice.nearest_encode(X, "E8P", bits), lattice.nearest_encode(X, "E8", bits))
    U = lattice.nearest_encode(X, "E8P", 2)
    assert torch.equal(lattice.nearest_decode(U, "E8P", 2), e8p.decode(U))


def test_compiled_encoder_equals_the_torch_search():
    """The CPU encoder (lvq/kernels/e8p_search.py) gives the torch search's codes across scales
    (tiny vectors: parity flips decide; large: far from every pattern) and on exact codebook
    points; decoding through the table of all points equals the formula."""
    from lvq.kernels.e8p_search import encode_codes

    g = torch.Generator().manual_seed(3)
    Y = torch.cat([torch.randn(3000, 8, generator=g) * s for s in (0.05, 0.5, 1.0, 3.0)]
                  + [e8p.decode(torch.randint(0, 4, (500, 8), generator=g))])
    code = encode_codes(Y, e8p.SHIFT, e8p.search_tables())
    assert torch.equal(code, e8p._encode_torch(Y))
    U = (code[:, None] >> (2 * torch.arange(8))) & 3
    assert torch.equal(e8p.decode(U, torch.float64), e8p._decode_codes(code))
