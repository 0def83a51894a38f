"""k-means for codebook initialisation (the additive core's first step, AQLM §3 / CRVQ §3.2).

Lloyd's algorithm on points X [N, d] with optional sample weights w [N] minimises the weighted
distortion

    J(C, a) = Σ_n w_n ‖X_n − C[a_n]‖²,        C: [K, d] centroids, a: [N] assignments.

Each iteration (assign every point to its nearest centroid, then move every centroid to the
weighted mean of its points) cannot increase J. A centroid that loses all its points is moved onto
the point that currently has the largest weighted error, which also cannot increase J (that point's
error drops to zero and no other point is affected until the next assignment).

``residual_kmeans`` builds M codebooks greedily, as AQLM and CRVQ initialise them: codebook k is
fitted to the residual X − Σ_{j<k} C_j[a_j] of the points it covers. CRVQ's extended codebooks
cover only the critical vectors; here codebook k covers the first ``counts[k]`` points (callers
order the points so that every codebook's points form a prefix).

Everything is a pure function of its arguments and a seed (a private ``torch.Generator``).
"""
from __future__ import annotations

import torch

# Points per chunk when computing point-to-centroid distances (bounds the [chunk, K] buffer).
_CHUNK = 1 << 14
# k-means++ seeds from at most this many points per centroid (a uniform subsample): seeding is
# sequential in K, and seeding quality does not need every point.
_SEED_POINTS_PER_CENTROID = 16


def nearest(X: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid for each point: X [N, d], C [K, d] -> (index [N] int64, squared distance [N])."""
    c2 = (C * C).sum(1)  # [K]
    idx = torch.empty(X.shape[0], dtype=torch.int64, device=X.device)
    dist = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for a in range(0, X.shape[0], _CHUNK):
        x = X[a:a + _CHUNK]
        # ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²; the ‖x‖² term does not change the argmin
        score = torch.addmm(c2[None, :], x, C.T, alpha=-2.0)  # [chunk, K]
        best, i = score.min(1)
        idx[a:a + _CHUNK] = i
        dist[a:a + _CHUNK] = (best + (x * x).sum(1)).clamp_min(0.0)
    return idx, dist


def kmeans_plus_plus(X: torch.Tensor, K: int, generator: torch.Generator,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centroid is a point drawn with
    probability ∝ w_n · D(x_n)², D the distance to the nearest centroid chosen so far. -> C [K, d].
    Seeds from a uniform subsample of at most 16·K points."""
    w = torch.ones(X.shape[0], dtype=X.dtype, device=X.device) if weights is None else weights.to(X)
    if X.shape[0] > _SEED_POINTS_PER_CENTROID * K:
        pick = torch.randperm(X.shape[0], generator=generator)[: _SEED_POINTS_PER_CENTROID * K]
        X, w = X[pick.to(X.device)], w[pick.to(X.device)]
    first = int(torch.multinomial(w.cpu().double() + 1e-300, 1, generator=generator))
    C = X.new_empty(K, X.shape[1])
    C[0] = X[first]
    d2 = ((X - C[0]) ** 2).sum(1)
    for k in range(1, K):
        p = (w * d2).cpu().double()
        if float(p.sum()) <= 0.0:  # fewer distinct points than K: duplicate a point
            C[k:] = X[first]
            break
        pick = int(torch.multinomial(p, 1, generator=generator))
        C[k] = X[pick]
        d2 = torch.minimum(d2, ((X - C[k]) ** 2).sum(1))
    return C


def kmeans(X: torch.Tensor, K: int, iters: int = 20, seed: int = 0, init: str = "kmeans++",
           weights: torch.Tensor | None = None, C0: torch.Tensor | None = None,
           tol: float = 0.0, max_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Weighted Lloyd k-means.

    X: [N, d] points; K: number of centroids; weights: [N] non-negative sample weights (None = 1);
    init: "kmeans++" or "points" (K distinct random data points), ignored when C0 [K, d] is given.
    Stops after ``iters`` iterations or when the relative drop of J is below ``tol``.
    max_points: fit the centroids on a uniform subsample of at most this many points (then assign
    every point); None = all points.
    Returns (C [K, d], assignment [N] int64, history) where history[t] is the weighted distortion
    J (on the fitted points) after iteration t's assignment step: non-increasing.
    """
    if X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty [N, d] matrix, got shape {tuple(X.shape)}")
    if K < 1:
        raise ValueError(f"k-means needs K >= 1 centroids, got {K}")
    if init not in ("kmeans++", "points"):
        raise ValueError(f"init must be 'kmeans++' or 'points', got {init!r}")
    if weights is not None and (weights.shape != X.shape[:1] or bool((weights < 0).any())):
        raise ValueError("weights must be a non-negative [N] tensor")
    X_all = X.to(torch.float32)
    w = torch.ones(X_all.shape[0], dtype=X_all.dtype, device=X_all.device) if weights is None \
        else weights.to(X_all)
    g = torch.Generator().manual_seed(seed)
    X = X_all
    if max_points is not None and X_all.shape[0] > max_points:
        pick = torch.randperm(X_all.shape[0], generator=g)[:max_points].to(X_all.device)
        X, w = X_all[pick], w[pick]
    N = X.shape[0]
    if C0 is not None:
        C = C0.to(X).clone()
    elif init == "points":
        pick = torch.randperm(N, generator=g)[:K].to(X.device)
        if N < K:
            pick = torch.cat([pick, pick[torch.randint(N, (K - N,), generator=g).to(X.device)]])
        C = X[pick].clone()
    else:
        C = kmeans_plus_plus(X, K, g, w)

    history: list[float] = []
    a, dist = nearest(X, C)
    history.append(float((w * dist).sum()))
    for _ in range(iters):
        # update step: weighted means; empty clusters keep their centroid for now
        mass = torch.zeros(K, dtype=X.dtype, device=X.device).index_add_(0, a, w)
        sums = torch.zeros_like(C).index_add_(0, a, X * w[:, None])
        filled = mass > 0
        C[filled] = sums[filled] / mass[filled, None]
        # empty clusters: move each onto the point with the largest weighted error
        empty = (~filled).nonzero().flatten()
        if empty.numel():
            err = w * dist
            far = err.topk(min(int(empty.numel()), N)).indices
            C[empty[:far.numel()]] = X[far]
        a, dist = nearest(X, C)
        history.append(float((w * dist).sum()))
        prev, cur = history[-2], history[-1]
        if prev > 0 and (prev - cur) / prev < tol:
            break
    if X is not X_all:
        a, _ = nearest(X_all, C)
    return C, a, history


def residual_kmeans(X: torch.Tensor, sizes: list[int], counts: list[int] | None = None,
                    iters: int = 20, seed: int = 0, weights: torch.Tensor | None = None,
                    init: str = "kmeans++", max_points: int | None = None, tol: float = 0.0
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy residual k-means initialisation of M additive codebooks.

    X: [N, d]; sizes[k] = K_k entries of codebook k; counts[k] = how many leading points codebook k
    covers (non-increasing; None = all N for every codebook). Codebook k is k-means on the residual
    X[:counts[k]] − Σ_{j<k} C_j[a_j]. Returns (codebooks [K_k, d], assignments [counts[k]]).
    """
    M = len(sizes)
    counts = [X.shape[0]] * M if counts is None else list(counts)
    if len(counts) != M or any(c2 > c1 for c1, c2 in zip(counts, counts[1:])) or counts[0] > X.shape[0]:
        raise ValueError(f"counts must be non-increasing and at most N={X.shape[0]}, got {counts}")
    residual = X.to(torch.float32).clone()
    books: list[torch.Tensor] = []
    codes: list[torch.Tensor] = []
    for k, (K, n) in enumerate(zip(sizes, counts)):
        w = None if weights is None else weights[:n]
        C, a, _ = kmeans(residual[:n], K, iters=iters, seed=seed + k, init=init, weights=w,
                         max_points=max_points, tol=tol)
        residual[:n] -= C[a]
        books.append(C)
        codes.append(a)
    return books, codes
