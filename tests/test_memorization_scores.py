"""Unit tests of the memorization scores on hand-built tensors with known answers (no model)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from sdxl_probe.probes.memorization import scores


def brute_tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = 4) -> np.ndarray:
    """Carlini's definition written out: per pair, per tile, sqrt(mean squared difference); max over tiles."""
    h, w = a.shape[1:3]
    rows = [round(i * h / grid) for i in range(grid + 1)]
    cols = [round(i * w / grid) for i in range(grid + 1)]
    out = np.zeros((len(a), len(b)))
    for i, j in itertools.product(range(len(a)), range(len(b))):
        tiles = [np.sqrt(np.mean((a[i, r0:r1, c0:c1] - b[j, r0:r1, c0:c1]) ** 2))
                 for (r0, r1), (c0, c1) in itertools.product(zip(rows[:-1], rows[1:], strict=True),
                                                             zip(cols[:-1], cols[1:], strict=True))]  # fmt: skip
        out[i, j] = max(tiles)
    return out


def test_tiled_l2_one_changed_tile_gives_its_rms():
    """Oracle: a change confined to one 16x16 tile of a 64x64 image, by v everywhere, has tiled L2 = v
    (the max over tiles picks that tile; its RMS is v), while the global RMS is only v / 4."""
    a = torch.zeros(1, 64, 64, 3)
    b = a.clone()
    b[0, 16:32, 48:64] = 0.6
    assert scores.tiled_l2(a, b).item() == pytest.approx(0.6, abs=1e-6)
    assert scores.tiled_l2(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert scores.tiled_l2(torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 8, 3)).item() == pytest.approx(1.0)


def test_tiled_l2_matches_brute_force_on_random_images_of_odd_size():
    """Oracle: ``brute_tiled_l2`` above (per-tile numpy loop), on 30x22 images whose tiles are unequal."""
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 30, 22, 3)), rng.random((4, 30, 22, 3))
    got = scores.tiled_l2(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, brute_tiled_l2(a, b), rtol=1e-5, atol=1e-6)


def brute_max_clique(adj: np.ndarray) -> int:
    """The largest subset whose every pair is adjacent, by trying every subset (largest first)."""
    n = len(adj)
    for size in range(n, 0, -1):
        for nodes in itertools.combinations(range(n), size):
            if all(adj[i, j] for i, j in itertools.combinations(nodes, 2)):
                return size
    return 0


def test_max_clique_known_graphs():
    """Oracle: two triangles joined by one edge have cliques of 3; K4 plus an isolated node has 4; no edges: 1."""
    adj = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]:
        adj[i, j] = adj[j, i] = True
    assert scores.max_clique_size(adj) == 3
    k4 = torch.ones(5, 5, dtype=torch.bool)
    k4[4, :] = k4[:, 4] = False
    assert scores.max_clique_size(k4) == 4
    assert scores.max_clique_size(torch.zeros(4, 4, dtype=torch.bool)) == 1


def test_max_clique_matches_brute_force_on_random_graphs():
    """Oracle: exhaustive subset search on 30 random graphs of 4..10 nodes and densities 0.3..0.8."""
    rng = random.Random(1)
    for _ in range(30):
        n, p = rng.randint(4, 10), rng.uniform(0.3, 0.8)
        adj = np.zeros((n, n), dtype=bool)
        for i, j in itertools.combinations(range(n), 2):
            adj[i, j] = adj[j, i] = rng.random() < p
        assert scores.max_clique_size(torch.from_numpy(adj)) == brute_max_clique(adj)


def test_clique_fraction_diversity_and_coverage_on_a_hand_matrix():
    """Oracle: hand counts. Generations 0, 1, 2 lie within 0.05 of each other, 3 is far: clique 3 of 4;
    the mean of the 12 off-diagonal distances; training image 0 is matched, image 1 is not."""
    d = torch.tensor([[0.0, 0.05, 0.05, 0.9], [0.05, 0.0, 0.05, 0.9], [0.05, 0.05, 0.0, 0.9], [0.9, 0.9, 0.9, 0.0]])
    assert scores.clique_fraction(d, 0.1) == 0.75
    assert scores.diversity(d) == pytest.approx((6 * 0.05 + 6 * 0.9) / 12)
    to_train = torch.tensor([[0.1, 0.5], [0.3, 0.4], [0.2, 0.2], [0.9, 0.16]])
    assert scores.coverage(to_train, 0.15) == 0.5


def brute_auc(pos: list[float], neg: list[float]) -> float:
    """Count every (positive, negative) pair: 1 when the positive is higher, 1/2 on a tie."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pair_counting_with_ties():
    """Oracle: ``brute_auc`` on random integer scores (many ties), plus perfect, inverted and chance cases."""
    rng = random.Random(2)
    for _ in range(50):
        pos = [rng.randint(0, 5) for _ in range(rng.randint(1, 9))]
        neg = [rng.randint(0, 5) for _ in range(rng.randint(1, 9))]
        assert scores.auc(pos, neg) == pytest.approx(brute_auc(pos, neg))
    assert scores.auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert scores.auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert scores.auc([1.0], [1.0]) == 0.5
    assert math.isnan(scores.auc([], [1.0]))


def test_entropy_known_distributions():
    """Oracle: uniform over K has entropy ln K; a one-hot has 0; (1/2, 1/4, 1/4) has 1.5 ln 2 nats;
    unnormalized mass is normalized first."""
    assert scores.entropy(torch.full((77,), 1 / 77)).item() == pytest.approx(math.log(77), rel=1e-6)
    assert scores.entropy(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-9)
    assert scores.entropy(torch.tensor([0.5, 0.25, 0.25])).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert scores.entropy(torch.tensor([[2.0, 1.0, 1.0]])).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_text_cond_norm_is_per_row_norm_over_sqrt_d():
    """Oracle: a difference of c in every one of D entries has norm c sqrt(D), so the score is |c|."""
    eps_u = torch.zeros(2, 4, 8, 8)
    eps_c = torch.stack([torch.full((4, 8, 8), 0.5), torch.full((4, 8, 8), -2.0)])
    assert scores.text_cond_norm(eps_c, eps_u).tolist() == pytest.approx([0.5, 2.0])


def test_cosine_and_percentile():
    """Oracle: orthogonal vectors have cosine 0, parallel 1; numpy.percentile for the 99th percentile."""
    a = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    np.testing.assert_allclose(scores.cosine_matrix(a, b).numpy(), [[0.0, math.sqrt(0.5)], [math.sqrt(0.5), 1.0]],
                               atol=1e-6)  # fmt: skip
    values = [0.3, 0.1, 0.7, 0.2, float("nan")]
    assert scores.percentile(values, 99) == pytest.approx(np.percentile([0.3, 0.1, 0.7, 0.2], 99))
