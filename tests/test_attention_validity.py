"""Validity on ground truth: object-word maps against toy-world object masks (issue #6 acceptance).

Needs the trained toy model (``load_components("toy")``); skipped with the reason otherwise.
Bar from the toy-world issue (#3): mean IoU >= 0.40 over >= 50 images, and a clear margin
over the shuffled baseline (the same map scored against another image's mask).

The shipped toy model is undertrained (sdxl_probe/toy/weights/README.md: IoU 0.136 vs 0.065 shuffled
at t=400), so the bar tests are strict xfails: they start to fail (XPASS) the day a better model
reaches the bar, and the marker must then go. What the current model does support is tested
plainly: object-word maps land on their own object more than on another image's object.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sdxl_probe.attention import metrics
from sdxl_probe.probes import attention

N_IMAGES = 50
IOU_BAR = 0.40
MARGIN = 0.15
WEAK_MARGIN = 0.03  # the shipped model's measured margin is 0.07 (64 images, evaluate.py)
BELOW_BAR = pytest.mark.xfail(
    reason="shipped toy model is below the issue #3 bar (IoU 0.136 at t=400, see toy/weights/README.md)",
    raises=AssertionError,
    strict=True,
)
INSPECT_T = 400  # mid timestep, inside the 300-500 range
BATCH = 25

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy():
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.models.load import load_components

    try:
        return load_components("toy", dtype=torch.float32)
    except ProbeError as e:
        pytest.skip(f"trained toy weights not available: {e}")


def _scenes(n: int, seed: int):
    from sdxl_probe.toy.world import caption_scene, sample_scene

    rng = random.Random(seed)
    scenes = [sample_scene(rng, n_objects=rng.randint(1, 2)) for _ in range(n)]
    return scenes, [caption_scene(s, "tags", rng) for s in scenes]


def _shape_masks(scene, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Shape word -> union of the masks of the objects with that shape."""
    out: dict[str, np.ndarray] = {}
    for obj, mask in zip(scene.objects, masks, strict=True):
        out[obj.shape] = out.get(obj.shape, np.zeros_like(mask)) | mask
    return out


def _score(result, targets: list[dict[str, np.ndarray]]) -> tuple[list[float], list[float]]:
    """IoU of each shape word's map with its own mask, and with the next image's mask (shuffled)."""
    own, shuffled = [], []
    for b, masks in enumerate(targets):
        other = next(iter(targets[(b + 1) % len(targets)].values()))
        own += attention.mask_ious(result, 0, b, masks).values()
        shuffled += attention.mask_ious(result, 0, b, {w: other for w in masks}).values()
    return own, shuffled


def _report(label: str, own: list[float], shuffled: list[float]) -> None:
    mean, base = float(np.mean(own)), float(np.mean(shuffled))
    print(
        f"\n{label} (toy model): mean IoU {mean:.3f} over {len(own)} object words, shuffled baseline {base:.3f}"
    )
    assert mean >= IOU_BAR, f"mean IoU {mean:.3f} below the toy-world bar {IOU_BAR}"
    assert mean - base >= MARGIN, (
        f"mean IoU {mean:.3f} does not beat the shuffled baseline {base:.3f} by {MARGIN}"
    )


@pytest.fixture(scope="module")
def inspect_scores(toy):
    """Own-mask and shuffled-mask IoUs of shape-word maps on 50 training images at t=400."""
    from sdxl_probe.toy.world import render_scene

    side = toy.unet.config.sample_size * toy.vae_scale_factor
    scenes, captions = _scenes(N_IMAGES, seed=6)
    rendered = [render_scene(s, size=side) for s in scenes]
    images = np.stack([im for im, _ in rendered])
    targets = [_shape_masks(s, masks) for s, (_, masks) in zip(scenes, rendered, strict=True)]
    own, shuffled = [], []
    for start in range(0, N_IMAGES, BATCH):
        part = slice(start, start + BATCH)
        res = attention.inspect(toy, images[part], captions[part], timesteps=(INSPECT_T,))
        scores = _score(res, targets[part])
        own, shuffled = own + scores[0], shuffled + scores[1]
    return own, shuffled


def test_inspect_maps_prefer_their_own_object(inspect_scores):
    own, shuffled = inspect_scores
    mean, base = float(np.mean(own)), float(np.mean(shuffled))
    print(f"\ninspect t={INSPECT_T} (toy model): mean IoU {mean:.3f} over {len(own)} words, shuffled {base:.3f}")
    assert mean - base >= WEAK_MARGIN, f"IoU {mean:.3f} does not beat the shuffled baseline {base:.3f}"


@BELOW_BAR
def test_inspect_maps_match_object_masks(inspect_scores):
    _report(f"inspect t={INSPECT_T}, {N_IMAGES} training images", *inspect_scores)


def _judged(res, scenes) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(index, shape word -> judged mask) for generations where the judge finds every object."""
    from sdxl_probe.toy.judge import judge_image

    kept = []
    for b, scene in enumerate(scenes):
        judgement = judge_image(res.images[0, b])
        found = {o.shape: judgement.find(o.colour, o.shape) for o in scene.objects}
        if all(found.values()):
            kept.append((b, {shape: np.any([j.mask for j in js], axis=0) for shape, js in found.items()}))
    return kept


@BELOW_BAR
def test_generated_maps_match_judged_objects(toy):
    scenes, captions = _scenes(4 * N_IMAGES, seed=7)
    maps, targets = [], []
    for start in range(0, len(captions), BATCH):
        if len(targets) >= N_IMAGES:
            break
        res = attention.generate(toy, captions[start : start + BATCH], steps=25, guidance=5.0, seed=start)
        for b, masks in _judged(res, scenes[start : start + BATCH]):
            maps.append({w: attention.word_map(res, 0, b, w) for w in masks})
            targets.append(masks)
    assert len(targets) >= N_IMAGES, f"only {len(targets)} of {len(captions)} generations passed the judge"
    own, shuffled = [], []
    for b, masks in enumerate(targets):
        other = torch.from_numpy(next(iter(targets[(b + 1) % len(targets)].values())))
        for word, mask in masks.items():
            own.append(metrics.mask_iou(maps[b][word], torch.from_numpy(mask)))
            shuffled.append(metrics.mask_iou(maps[b][word], other))
    _report(f"generate, {len(targets)} judged generations", own, shuffled)
