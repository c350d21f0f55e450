"""The classical judge: accuracy on clean and blurred renders, components, helpers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdxl_probe.toy.judge import classify_shape, judge_image, judge_matches, label_components
from sdxl_probe.toy.world import (
    CONCEPT_COLOURS,
    CONCEPT_SHAPES,
    SHAPES,
    Scene,
    ToyObject,
    render_scene,
    sample_scene,
)


def _degrade(image: np.ndarray, rng: np.random.Generator, blur: float, noise: float, shift: tuple) -> np.ndarray:
    """A stand-in for a tiny VAE's losses: Gaussian blur, pixel noise and a colour cast."""
    soft = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur))).astype(np.float64)
    return np.clip(soft + np.asarray(shift) + rng.normal(0.0, noise, soft.shape), 0, 255).astype(np.uint8)


def _score(scenes: list[Scene], degrade: dict | None = None) -> dict[str, float]:
    """Per ground-truth object: is the judged object overlapping its mask most right?"""
    hits = {"colour_and_shape": 0, "size": 0, "position": 0, "count": 0}
    total = 0
    for scene in scenes:
        image, masks = render_scene(scene)
        if degrade:
            image = _degrade(image, **degrade)
        judged = judge_image(image)
        hits["count"] += len(judged.objects) == len(scene.objects)
        for obj, mask in zip(scene.objects, masks, strict=True):
            total += 1
            best = max(judged.objects, key=lambda o: (o.mask & mask).sum(), default=None)
            if best is None:
                continue
            hits["colour_and_shape"] += best.colour == obj.colour and best.shape == obj.shape
            hits["size"] += best.size == obj.size
            hits["position"] += best.position == obj.position
    rates = {k: v / total for k, v in hits.items() if k != "count"}
    rates["count"] = hits["count"] / len(scenes)
    return rates


def test_judge_is_right_on_clean_renders():
    rng = random.Random(1234)
    scenes = [sample_scene(rng, split="all") for _ in range(320)]
    rates = _score(scenes)
    print(f"judge on 320 clean scenes: {rates}")
    assert rates["colour_and_shape"] >= 0.98
    assert rates["count"] >= 0.98
    assert rates["size"] >= 0.95 and rates["position"] >= 0.95


def test_judge_reads_concept_shapes_and_colours():
    rng = random.Random(99)
    concepts = [*CONCEPT_SHAPES, *CONCEPT_COLOURS]
    scenes = [sample_scene(rng, concept=concepts[i % len(concepts)]) for i in range(80)]
    rates = _score(scenes)
    print(f"judge on 80 concept scenes: {rates}")
    assert rates["colour_and_shape"] >= 0.98


def test_judge_tolerates_blur_noise_and_colour_cast():
    rng = random.Random(5)
    scenes = [sample_scene(rng, split="all") for _ in range(100)]
    degrade = {"rng": np.random.default_rng(0), "blur": 1.5, "noise": 6.0, "shift": (15, -10, 10)}
    rates = _score(scenes, degrade)
    print(f"judge on 100 scenes blurred (sigma 1.5 px), noisy (sigma 6) and colour-cast: {rates}")
    assert rates["colour_and_shape"] >= 0.95


def test_label_components_8_connected():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one component
    mask[5:10, 5] = mask[9, 5:10] = mask[5:10, 9] = True  # a U shape: one component
    mask[0, 11] = True
    labels, n = label_components(mask)
    assert n == 3
    assert labels[1, 1] == labels[2, 2] != 0
    assert len({labels[5, 5], labels[9, 7], labels[5, 9]}) == 1
    assert (labels[~mask] == 0).all()
    assert label_components(np.zeros((4, 4), dtype=bool))[1] == 0


def test_empty_image_and_specks():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    judged = judge_image(image)
    assert judged.background == "gray" and judged.objects == []
    image[30:33, 30:33] = (230, 25, 25)  # 9 px: below the 16 px speck limit at 64x64
    assert judge_image(image).objects == []
    image[10:20, 10:20] = (230, 25, 25)
    assert [(o.colour, o.shape) for o in judge_image(image).objects] == [("red", "square")]


def test_helpers_and_inputs():
    scene = Scene([ToyObject("star", "pink", "large", "left"), ToyObject("triangle", "white", "large", "right")], "black")
    image, _ = render_scene(scene)
    judged = judge_image(image)
    assert judged.background == "black"
    assert judge_matches(judged, colour="pink", shape="star")
    assert judge_matches(judged, shape="triangle") and judge_matches(judged)
    assert not judge_matches(judged, colour="red")
    assert not judge_matches(judged, colour="white", shape="star")
    as_float = judge_image(image.astype(np.float32) / 255.0)
    assert [(o.colour, o.shape) for o in as_float.objects] == [(o.colour, o.shape) for o in judged.objects]
    json.dumps(judged.to_dict())
    only_base = judge_image(image, colours=["red", "white", "purple"], shapes=["circle", "triangle"])
    assert {o.shape for o in only_base.objects} <= {"circle", "triangle"}
    with pytest.raises(ValueError, match="unknown colours"):
        judge_image(image, colours=["mauve"])
    with pytest.raises(ValueError, match="RGB image"):
        judge_image(image[..., 0])


def test_classify_shape_respects_allowed_set():
    four_fold = np.array([0.0, 0.0, 0.0, 0.15, 0.0, 0.0])  # a clear 4th harmonic
    assert classify_shape(0.95, four_fold) == "square"
    assert classify_shape(0.7, four_fold) == "cross"  # hollow
    assert classify_shape(0.95, four_fold * 2) == "cross"  # 4th harmonic too strong for a square
    assert classify_shape(0.7, four_fold, shapes=["circle", "square", "triangle", "star"]) == "square"
    assert classify_shape(0.95, np.zeros(6)) == "circle"
    assert classify_shape(0.95, np.array([0.0, 0.16, 0.2, 0.0, 0.0, 0.0])) == "heart"
    assert classify_shape(0.95, np.array([0.0, 0.02, 0.2, 0.0, 0.0, 0.0])) == "triangle"
    assert classify_shape(0.95, np.array([0.0, 0.16, 0.2, 0.0, 0.0, 0.0]), shapes=SHAPES) == "triangle"
