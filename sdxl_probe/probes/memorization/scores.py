"""Pure tensor functions behind the memorization scores (no model, no files).

Images are float tensors in [0, 1] shaped (N, H, W, 3); every score is written so that the
formula of the paper it follows can be read off the code.
"""

from __future__ import annotations

import math

import torch

GRID = 4  # Carlini et al. 2023: a 4 x 4 grid of tiles (128-px tiles at 512 px)


def tile_edges(size: int, grid: int = GRID) -> list[int]:
    """Integer tile boundaries of a side of ``size`` pixels cut into ``grid`` near-equal tiles."""
    if size < grid:
        raise ValueError(f"an image side of {size} px cannot be cut into {grid} tiles")
    return [round(i * size / grid) for i in range(grid + 1)]


def tiled_l2(a: torch.Tensor, b: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """Carlini's tiled L2: the max over a grid x grid tiling of the RMS difference of two images.

    Carlini et al. 2023 ("Extracting Training Data from Diffusion Models", §4.1); the LeakPro
    reimplementation's ``CarliniConfig`` uses the same 4 x 4 grid.

    Args:
        a: (N, H, W, 3) images in [0, 1].
        b: (M, H, W, 3) images in [0, 1], same size.

    Returns:
        (N, M) distances; 0 for identical images, 1 for black against white.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"tiled_l2 needs images of one size, got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
    a, b = a.double(), b.double()
    rows, cols = tile_edges(a.shape[1], grid), tile_edges(a.shape[2], grid)
    worst = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for r0, r1 in zip(rows[:-1], rows[1:], strict=True):
        for c0, c1 in zip(cols[:-1], cols[1:], strict=True):
            ta = a[:, r0:r1, c0:c1].reshape(a.shape[0], -1)  # (N, P)
            tb = b[:, r0:r1, c0:c1].reshape(b.shape[0], -1)  # (M, P)
            mse = torch.cdist(ta, tb).pow(2) / ta.shape[1]  # (N, M) mean squared difference in the tile
            worst = torch.maximum(worst, mse.clamp_min(0).sqrt())
    return worst.float()


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosine similarities (Somepalli et al. 2023's L2-normalized dot product)."""
    a = torch.nn.functional.normalize(a.flatten(1).double(), dim=1)
    b = torch.nn.functional.normalize(b.flatten(1).double(), dim=1)
    return (a @ b.T).float()


def max_clique_size(adjacent: torch.Tensor) -> int:
    """Size of the largest clique of an undirected graph (Bron-Kerbosch with pivoting, Tomita et al. 2006).

    Carlini et al. 2023 flag a prompt when its generations form a large clique under a tiled-L2 edge
    threshold. Exact search; graphs here have one node per seed (tens of nodes).

    Args:
        adjacent: (N, N) bool, symmetric; the diagonal is ignored.
    """
    n = adjacent.shape[0]
    if n == 0:
        return 0
    adj = adjacent.bool().clone()
    adj.fill_diagonal_(False)
    neighbours = [set(torch.nonzero(adj[i]).flatten().tolist()) for i in range(n)]
    best = [0]

    def expand(r: int, p: set[int], x: set[int]) -> None:
        if not p and not x:
            best[0] = max(best[0], r)
            return
        if r + len(p) <= best[0]:
            return
        pivot = max(p | x, key=lambda u: len(neighbours[u] & p))
        for v in list(p - neighbours[pivot]):
            expand(r + 1, p & neighbours[v], x & neighbours[v])
            p = p - {v}
            x = x | {v}

    expand(0, set(range(n)), set())
    return best[0]


def clique_fraction(distances: torch.Tensor, threshold: float) -> float:
    """Largest clique of generations within ``threshold`` tiled L2 of each other, as a share of N."""
    n = distances.shape[0]
    return max_clique_size(distances <= threshold) / n if n else float("nan")


def diversity(distances: torch.Tensor) -> float:
    """Mean pairwise distance among N generations of one prompt (off-diagonal of an (N, N) matrix)."""
    n = distances.shape[0]
    if n < 2:
        return float("nan")
    off = ~torch.eye(n, dtype=torch.bool)
    return float(distances[off].double().mean())


def coverage(distances: torch.Tensor, threshold: float) -> float:
    """Share of training images (columns) that some generation (row) reproduces within ``threshold``.

    Args:
        distances: (N generations, M training images).
    """
    if distances.shape[1] == 0:
        return float("nan")
    return float((distances <= threshold).any(dim=0).double().mean())


def auc(positive: list[float] | torch.Tensor, negative: list[float] | torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted 1/2.

    The Mann-Whitney U statistic divided by n_pos x n_neg (the ``sklearn.metrics.roc_auc_score`` value).
    NaN scores are dropped; NaN when either side is empty.
    """
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    pos, neg = pos[~pos.isnan()], neg[~neg.isnan()]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    both = torch.cat([pos, neg])
    ranks = _average_ranks(both)
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return float(u / (pos.numel() * neg.numel()))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing their mean rank (``scipy.stats.rankdata(method="average")``)."""
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    ranks = torch.empty_like(values)
    i = 0
    while i < len(sorted_vals):
        j = i
        while j + 1 < len(sorted_vals) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis, ``-sum p log p`` with 0 log 0 = 0 (Ren et al. 2024).

    ``p`` is normalized to sum to 1 first (attention mass summed over layers, say).
    """
    p = p.double() / p.double().sum(dim=-1, keepdim=True)
    return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=-1).float()


def text_cond_norm(eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
    """Wen et al. 2024's ``||eps(x_t, c) - eps(x_t, empty)||_2`` per row, divided by sqrt(D).

    Normalizing by sqrt(D) (D = C x h x w) makes SDXL's 4 x 128 x 128 latent comparable to smaller ones
    (the reference's §C.5). (B, C, h, w) x 2 -> (B,).
    """
    diff = (eps_cond.float() - eps_uncond.float()).flatten(1)
    return diff.norm(dim=1) / math.sqrt(diff.shape[1])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation, ``numpy.percentile``'s default); NaNs dropped."""
    kept = torch.tensor([v for v in values if not math.isnan(v)], dtype=torch.float64)
    if kept.numel() == 0:
        return float("nan")
    return float(torch.quantile(kept, q / 100.0))
