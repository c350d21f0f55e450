"""Study metrics on hand-built images with known answers (diversity, the sample grid, caption adherence)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sdxl_probe.studies.metrics import Prompt, adherence, diversity, grid


def test_diversity_known_answers():
    """Identical seeds give 0; black against white gives RMS 1; (black, white, black) averages the 3 pairs to 2/3.

    Oracle: the RMS difference written out by hand on constant images (pixels scaled to 0..1).
    """
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert diversity(np.stack([np.stack([black, black])])) == 0.0
    assert diversity(np.stack([np.stack([black, white])])) == pytest.approx(1.0)
    assert diversity(np.stack([np.stack([black, white, black])])) == pytest.approx(2 / 3)
    two_prompts = np.stack([np.stack([black, white]), np.stack([white, white])])
    assert diversity(two_prompts) == pytest.approx(0.5)  # the mean over prompts of 1 and 0


def test_grid_places_each_image_in_its_cell():
    """Cell (i, j) of the grid is image (i, j); the gaps are white.

    Oracle: slicing the grid at (i * (H + pad), j * (W + pad)) by hand.
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(2, 3, 5, 4, 3), dtype=np.uint8)
    g = grid(images, pad=2)
    assert g.shape == (2 * 5 + 2, 3 * 4 + 2 * 2, 3)
    for i in range(2):
        for j in range(3):
            assert (g[i * 7 : i * 7 + 5, j * 6 : j * 6 + 4] == images[i, j]).all()
    assert (g[5:7] == 255).all()


def test_caption_adherence_on_rendered_toy_scenes():
    """Rendered one-object scenes adhere to their own captions and not to a different colour-and-shape.

    Oracle: the toy world's renderer draws exactly the scene's object, so the judge finds it (1.0), and a
    prompt naming another colour and shape is not found (0.0).
    """
    from sdxl_probe.toy.world import render_scene, sample_scene

    rng = random.Random(5)
    scenes = [sample_scene(rng, n_objects=1, split="train") for _ in range(4)]
    images = np.stack([np.stack([render_scene(s, 64)[0]]) for s in scenes])  # (4, 1, 64, 64, 3)
    right = [Prompt("", s.objects[0].colour, s.objects[0].shape) for s in scenes]
    assert adherence(images, right) == 1.0
    wrong = [Prompt("", "green" if s.objects[0].colour != "green" else "red",
                    "star" if s.objects[0].shape != "star" else "circle") for s in scenes]  # fmt: skip
    assert adherence(images, wrong) == 0.0
