import itertools

import pytest
import torch

from lvq.beam import beam_search, candidate_losses, decode_additive, row_objective


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: on a shared 2-core machine one thread is both faster and reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def problem(out=12, n_in=32, d=4, sizes=(8, 8), groups=None, seed=0):
    """Random W, correlated PSD H, scales, codebooks and codes (codebook k on the first n_k groups)."""
    g = torch.Generator().manual_seed(seed)
    G = n_in // d
    groups = groups or [G] * len(sizes)
    W = torch.randn(out, n_in, generator=g)
    X = torch.randn(400, n_in, generator=g) @ (torch.eye(n_in) + 0.4 * torch.randn(n_in, n_in, generator=g))
    H = X.T @ X / 400
    s = torch.rand(out, generator=g) + 0.5
    books = [torch.randn(K, d, generator=g) for K in sizes]
    codes = [torch.randint(0, K, (out, n), generator=g) for K, n in zip(sizes, groups)]
    return W, H, s, books, codes


def total(W, H, s, books, codes):
    G = W.shape[1] // books[0].shape[1]
    return float(row_objective(W, s[:, None] * decode_additive(books, codes, G), H).sum())


def test_decode_layout():
    books = [torch.arange(6.0).view(3, 2), 10 * torch.arange(4.0).view(2, 2)]
    codes = [torch.tensor([[2, 0, 1]]), torch.tensor([[1]])]  # codebook 1 covers group 0 only
    W = decode_additive(books, codes, 3)
    assert W.tolist() == [[4 + 20, 5 + 30, 0, 1, 2, 3]]


@pytest.mark.parametrize("g,k", [(0, 0), (3, 0), (1, 1), (2, 1)])
def test_closed_form_candidate_losses_equal_direct_objective(g, k):
    W, H, s, books, codes = problem(groups=[8, 3])
    if g >= codes[k].shape[1]:
        g = codes[k].shape[1] - 1
    cl = candidate_losses(W, H, s, books, codes, g, k)
    direct = torch.empty_like(cl)
    for c in range(books[k].shape[0]):
        trial = [b.clone() for b in codes]
        trial[k][:, g] = c
        direct[:, c] = row_objective(W, s[:, None] * decode_additive(books, trial, 8), H)
    torch.testing.assert_close(cl, direct, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("beam_width", [1, 4])
def test_beam_search_never_increases_the_objective(beam_width):
    W, H, s, books, codes = problem(sizes=(16, 8, 8), groups=[8, 8, 2], seed=1)
    losses = [total(W, H, s, books, codes)]
    for _ in range(3):
        codes, row_loss = beam_search(W, H, s, books, codes, beam_width)
        losses.append(total(W, H, s, books, codes))
        assert float(row_loss.sum()) == pytest.approx(losses[-1], rel=1e-5)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]


def test_single_position_is_the_brute_force_optimum():
    # one vector-group, one codebook: the beam must pick argmin over all K codes for every row
    W, H, s, books, codes = problem(n_in=4, d=4, sizes=(32,), seed=2)
    new, _ = beam_search(W, H, s, books, codes, beam_width=1)
    brute = torch.stack([row_objective(W, s[:, None] * books[0][c].expand(W.shape[0], 4), H)
                         for c in range(32)], 1)
    assert torch.equal(new[0][:, 0], brute.argmin(1))


def test_wide_beam_is_exact_on_two_positions():
    # two codebooks on one group: with beam width >= K, beam search enumerates all K² pairs
    K = 6
    W, H, s, books, codes = problem(n_in=4, d=4, sizes=(K, K), seed=3)
    new, loss = beam_search(W, H, s, books, codes, beam_width=K)
    best = torch.full((W.shape[0],), float("inf"))
    for a, b in itertools.product(range(K), range(K)):
        Wh = s[:, None] * (books[0][a] + books[1][b]).expand(W.shape[0], 4)
        best = torch.minimum(best, row_objective(W, Wh, H))
    torch.testing.assert_close(loss, best, rtol=1e-5, atol=1e-5)


def test_identity_hessian_is_plain_mse():
    W, _, s, books, codes = problem(seed=4)
    new, loss = beam_search(W, torch.eye(W.shape[1]), s, books, codes)
    Wh = s[:, None] * decode_additive(books, new, W.shape[1] // 4)
    torch.testing.assert_close(loss, ((W - Wh) ** 2).sum(1))


def test_bad_arguments():
    W, H, s, books, codes = problem()
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(W, H, s, books, codes, beam_width=0)
    with pytest.raises(ValueError, match="multiple"):
        beam_search(W[:, :30], H[:30, :30], s, books, codes)
