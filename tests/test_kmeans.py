import pytest
import torch

from lvq.kmeans import kmeans, nearest, residual_kmeans


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops: on a shared 2-core machine one thread is both faster and reproducible."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def blobs(n=600, d=4, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 4
    labels = torch.randint(0, k, (n,), generator=g)
    return centers[labels] + 0.5 * torch.randn(n, d, generator=g)


def weighted_distortion(X, C, a, w=None):
    e = ((X - C[a]) ** 2).sum(1)
    return float(e.sum() if w is None else (w * e).sum())


@pytest.mark.parametrize("init", ["kmeans++", "points"])
def test_distortion_is_monotone_and_drops(init):
    X = blobs()
    w = torch.rand(X.shape[0], generator=torch.Generator().manual_seed(3)) + 0.1
    C, a, hist = kmeans(X, 8, iters=15, seed=1, init=init, weights=w)
    assert all(b <= a_ * (1 + 1e-6) for a_, b in zip(hist, hist[1:])), hist
    assert hist[-1] < hist[0]
    # the reported distortion is the one of the returned centroids and assignment
    assert weighted_distortion(X, C, a, w) == pytest.approx(hist[-1], rel=1e-4)
    # and the assignment is the nearest centroid
    assert torch.equal(a, nearest(X, C)[0])


def test_seeded_runs_are_reproducible():
    X = blobs()
    C1, a1, _ = kmeans(X, 5, iters=5, seed=7)
    C2, a2, _ = kmeans(X, 5, iters=5, seed=7)
    C3, _, _ = kmeans(X, 5, iters=5, seed=8)
    assert torch.equal(C1, C2) and torch.equal(a1, a2)
    assert not torch.equal(C1, C3)


def test_empty_cluster_is_moved_onto_the_worst_point():
    X = blobs(n=200, d=2, k=3)
    C0 = torch.cat([X[:3].clone(), torch.tensor([[1e4, 1e4]])])  # the last centroid gets no point
    C, a, hist = kmeans(X, 4, iters=3, C0=C0)
    assert C.abs().max() < 100, "the empty centroid was left far away"
    assert (torch.bincount(a, minlength=4) > 0).all()
    assert hist[-1] < hist[0]


def test_fewer_distinct_points_than_centroids():
    X = torch.randn(5, 3).repeat(10, 1)
    C, a, hist = kmeans(X, 12, iters=5, seed=0)
    assert torch.isfinite(C).all()
    assert hist[-1] == pytest.approx(0.0, abs=1e-8)


def test_a_heavy_point_gets_its_own_centroid():
    X = blobs(n=300, d=2, k=2)
    X = torch.cat([X, torch.tensor([[0.5, 0.5]])])
    w = torch.ones(X.shape[0])
    w[-1] = 1e6
    C, a, _ = kmeans(X, 3, iters=20, seed=0, weights=w)
    assert float(((C[a[-1]] - X[-1]) ** 2).sum()) < 1e-3


def test_subsampled_fit_assigns_every_point():
    X = blobs(n=5000)
    C, a, hist = kmeans(X, 6, iters=10, seed=0, max_points=500)
    assert a.shape == (5000,)
    assert torch.equal(a, nearest(X, C)[0])
    full = weighted_distortion(X, C, a) / 5000
    C_all, a_all, _ = kmeans(X, 6, iters=10, seed=0)
    assert full < 1.5 * weighted_distortion(X, C_all, a_all) / 5000


def test_residual_kmeans_each_codebook_lowers_the_residual():
    X = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    books, codes = residual_kmeans(X, [16, 16, 16], counts=[2000, 500, 500], iters=10, seed=0)
    assert [c.shape[0] for c in codes] == [2000, 500, 500]
    R = X.clone()
    errs = [float((R[:500] ** 2).sum())]
    for C, b in zip(books, codes):
        R[: b.shape[0]] -= C[b]
        errs.append(float((R[:500] ** 2).sum()))
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="K >= 1"):
        kmeans(torch.randn(10, 2), 0)
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(10, 2), 2, init="random")
    with pytest.raises(ValueError, match="non-negative"):
        kmeans(torch.randn(10, 2), 2, weights=-torch.ones(10))
    with pytest.raises(ValueError, match="non-increasing"):
        residual_kmeans(torch.randn(10, 2), [2, 2], counts=[5, 8])
