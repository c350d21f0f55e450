"""The toy world: sampling rules, rendering with masks, captions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sdxl_probe.toy.captions import NEUTRAL_TAGS, clip_piece_count
from sdxl_probe.toy.world import (
    ALL_COLOURS,
    BACKGROUNDS,
    CAPTION_STYLES,
    COLOURS,
    CONCEPT_COLOURS,
    CONCEPT_SHAPES,
    HELDOUT_COMBOS,
    SHAPES,
    Scene,
    ToyObject,
    caption_scene,
    render_scene,
    render_scenes,
    sample_scene,
)


@pytest.fixture(scope="module")
def train_scenes() -> list[Scene]:
    rng = random.Random(0)
    return [sample_scene(rng) for _ in range(1500)]


def test_train_split_never_uses_heldout_or_concepts(train_scenes):
    seen = {(o.colour, o.shape) for s in train_scenes for o in s.objects}
    assert not seen & HELDOUT_COMBOS
    assert seen == {(c, s) for c in COLOURS for s in SHAPES} - HELDOUT_COMBOS


def test_heldout_combos_keep_every_colour_and_shape_in_training():
    assert 4 <= len(HELDOUT_COMBOS) <= 6
    train = {(c, s) for c in COLOURS for s in SHAPES} - HELDOUT_COMBOS
    for colour, shape in HELDOUT_COMBOS:
        assert any(c == colour for c, _ in train) and any(s == shape for _, s in train)


def test_heldout_split_uses_only_heldout_combos():
    rng = random.Random(1)
    scenes = [sample_scene(rng, split="heldout") for _ in range(300)]
    combos = {(o.colour, o.shape) for s in scenes for o in s.objects}
    assert combos == set(HELDOUT_COMBOS)


def test_scene_rules(train_scenes):
    counts = {len(s.objects) for s in train_scenes}
    assert counts == {1, 2, 3}
    assert {s.background for s in train_scenes} == set(BACKGROUNDS)
    for s in train_scenes:
        colours = [o.colour for o in s.objects]
        assert len(set(colours)) == len(colours)
        assert all(ALL_COLOURS[c] != BACKGROUNDS[s.background] for c in colours)
        assert len({o.position for o in s.objects}) == len(s.objects)


@pytest.mark.parametrize("concept", [*CONCEPT_SHAPES, *CONCEPT_COLOURS])
def test_concept_scenes_show_the_concept_first(concept):
    rng = random.Random(2)
    for _ in range(30):
        scene = sample_scene(rng, concept=concept)
        first = scene.objects[0]
        assert concept in (first.shape, first.colour)
        for o in scene.objects[1:]:
            assert o.shape in SHAPES and o.colour in COLOURS


def test_sampling_and_rendering_are_deterministic():
    a = sample_scene(random.Random(7), n_objects=3)
    b = sample_scene(random.Random(7), n_objects=3)
    assert a == b
    assert np.array_equal(render_scene(a)[0], render_scene(b)[0])
    assert Scene.from_dict(a.to_dict()) == a


def test_render_masks_match_pixels(train_scenes):
    for scene in train_scenes[:200]:
        image, masks = render_scene(scene)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert masks.shape == (len(scene.objects), 64, 64) and masks.dtype == bool
        assert masks.sum(0).max() <= 1  # visible pixels belong to one object at most
        bg = np.asarray(BACKGROUNDS[scene.background])
        assert (image[~masks.any(0)].astype(int) - bg).__abs__().max(1).mean() < 10
        for obj, mask in zip(scene.objects, masks, strict=True):
            assert mask.sum() > 20
            colour = np.asarray(ALL_COLOURS[obj.colour])
            inner = np.abs(image[mask].astype(int) - colour).max(1)
            assert np.median(inner) == 0


def test_render_size_and_size_words():
    small = Scene([ToyObject("circle", "red", "small", "centre")], "white")
    large = Scene([ToyObject("circle", "red", "large", "centre")], "white")
    assert render_scene(large)[1].sum() > 2 * render_scene(small)[1].sum()
    image, masks = render_scene(large, size=128)
    assert image.shape == (128, 128, 3) and masks.shape == (1, 128, 128)
    assert render_scenes([small, large]).shape == (2, 64, 64, 3)


def test_position_words_place_the_object():
    for pos, (axis, side) in {"left": (1, -1), "right": (1, 1), "top": (0, -1), "bottom": (0, 1)}.items():
        _, masks = render_scene(Scene([ToyObject("square", "blue", "small", pos)], "white"))
        centre = np.argwhere(masks[0]).mean(0)[axis]
        assert (centre - 32) * side > 10


TWO = Scene(
    [ToyObject("circle", "red", "large", "left"), ToyObject("square", "orange", "small", "right")], "white"
)


def test_caption_styles_exact():
    rng = random.Random(0)
    assert caption_scene(TWO, "tags", rng) == "red circle, orange square, white background"
    assert caption_scene(TWO, "sentence", rng) == (
        "a red circle to the left of an orange square on a white background"
    )
    assert caption_scene(TWO, "sentence", rng, details=True) == (
        "a large red circle to the left of a small orange square on a white background"
    )
    assert caption_scene(TWO, "tags", rng, "sks") == "sks, red circle, orange square, white background"
    assert caption_scene(TWO, "tags", rng, names={"circle": "zkw"}).startswith("red zkw, ")


def test_mixed_and_long_captions():
    rng = random.Random(3)
    mixed = {caption_scene(TWO, "mixed", rng) for _ in range(20)}
    assert len(mixed) > 1
    assert all("red circle" in m and "orange square" in m and "white background" in m for m in mixed)
    long = caption_scene(TWO, "long", rng)
    assert long.startswith("red circle, orange square, white background, ")
    assert clip_piece_count(long) >= 80
    tail = long.split(", ")[3:]
    assert set(tail) <= set(NEUTRAL_TAGS)
    with pytest.raises(ValueError, match="caption style"):
        caption_scene(TWO, "poem", rng)


def test_clip_piece_count_is_a_lower_bound_on_words_and_punctuation():
    assert clip_piece_count("red circle, white background") == 5
    assert clip_piece_count("a 64x64 image!!") == 8  # a, 6, 4, x, 6, 4, image, !!
    assert all(caption_scene(sample_scene(random.Random(i)), s, random.Random(i)) for s in CAPTION_STYLES for i in range(5))
