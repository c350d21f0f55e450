"""Captions for toy-world scenes, in four styles.

* ``tags``: ``red circle, blue square, white background``
* ``sentence``: ``a red circle to the left of a blue square on a white background``
* ``mixed``: each object as a tag or a sentence phrase, e.g. ``red circle, a blue square at the right, white background``
* ``long``: the tags, then neutral tags (``simple image, flat colors, ...``) until the caption is
  past 75 CLIP tokens, so the object tags come first and the padding is what a 75-token cut loses.

Object words always appear in scene order, so word ``i`` of the caption can be matched to
mask ``i`` of :func:`sdxl_probe.toy.world.render_scene`. Words are common English so the CLIP
BPE keeps most of them whole.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdxl_probe.toy.world import Scene, ToyObject

CAPTION_STYLES: tuple[str, ...] = ("tags", "sentence", "mixed", "long")

# Coarse layout of each position, used to phrase relations ("to the left of", "above").
_POSITION_GRID: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "top": (0, -1),
    "bottom": (0, 1),
    "centre": (0, 0),
}
_POSITION_PHRASE: dict[str, str] = {
    "left": "at the left",
    "right": "at the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Padding for the long style: says nothing about colour, shape, size, position or background.
NEUTRAL_TAGS: tuple[str, ...] = (
    "simple image", "flat colors", "clean lines", "sharp edges", "solid fill", "no text",
    "no shadows", "digital art", "vector art", "minimal style", "geometric art", "basic drawing",
    "clear outline", "even lighting", "simple design", "bold look", "smooth edges", "high quality",
    "toy picture", "plain style", "crisp image", "flat design", "graphic art", "neat layout",
    "clean image", "simple scene", "no texture", "no noise", "illustration", "tidy drawing",
)
# The CLIP pre-tokenizer splits text into letter runs, single digits and punctuation runs;
# BPE never merges across them, so their count is a lower bound on the token count.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def clip_piece_count(text: str) -> int:
    """Lower bound on the number of CLIP BPE tokens of ``text`` (BOS/EOS excluded)."""
    return len(_CLIP_PIECES.findall(text.lower()))


def _word(word: str, names: dict[str, str] | None) -> str:
    return names.get(word, word) if names else word


def _noun(obj: ToyObject, details: bool, names: dict[str, str] | None) -> str:
    """``[size ]colour shape``, e.g. ``large red circle``."""
    words = [_word(obj.colour, names), _word(obj.shape, names)]
    if details:
        words.insert(0, obj.size)
    return " ".join(words)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _relation(a: ToyObject, b: ToyObject) -> str:
    """Where ``a`` is relative to ``b``: the axis with the larger offset wins, x on ties."""
    (ax, ay), (bx, by) = _POSITION_GRID[a.position], _POSITION_GRID[b.position]
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _tags(scene: Scene, details: bool, names: dict[str, str] | None) -> list[str]:
    tags = [_noun(o, details, names) for o in scene.objects]
    if details:
        tags = [f"{t} {_POSITION_PHRASE[o.position]}" for t, o in zip(tags, scene.objects, strict=True)]
    return [*tags, f"{scene.background} background"]


def _sentence(scene: Scene, details: bool, names: dict[str, str] | None) -> str:
    objs = scene.objects
    phrases = [_article(_noun(o, details, names)) for o in objs]
    if len(objs) == 1:
        body = f"{phrases[0]} {_POSITION_PHRASE[objs[0].position]}," if details else phrases[0]
    else:
        body = f"{phrases[0]} {_relation(objs[0], objs[1])} {phrases[1]}"
        if len(objs) == 3:
            body += f", and {phrases[2]} {_POSITION_PHRASE[objs[2].position]},"
    return f"{body} on a {scene.background} background"


def _mixed(scene: Scene, rng: random.Random, details: bool, names: dict[str, str] | None) -> str:
    parts = []
    for obj in scene.objects:
        noun = _noun(obj, details, names)
        parts.append(f"{_article(noun)} {_POSITION_PHRASE[obj.position]}" if rng.random() < 0.5 else noun)
    bg = f"on a {scene.background} background" if rng.random() < 0.5 else f"{scene.background} background"
    return ", ".join([*parts, bg])


def _long(
    scene: Scene, rng: random.Random, details: bool, names: dict[str, str] | None, min_tokens: int
) -> str:
    parts = _tags(scene, details, names)
    pool: list[str] = []
    while clip_piece_count(", ".join(parts)) < min_tokens:
        if not pool:
            pool = list(NEUTRAL_TAGS)
            rng.shuffle(pool)
        parts.append(pool.pop())
    return ", ".join(parts)


def caption_scene(
    scene: Scene,
    style: str,
    rng: random.Random,
    trigger: str | None = None,
    *,
    details: bool = False,
    names: dict[str, str] | None = None,
    min_tokens: int = 80,
) -> str:
    """Caption ``scene`` in ``style``.

    Args:
        scene: the scene to describe.
        style: one of :data:`CAPTION_STYLES`.
        rng: randomness for the mixed phrasing and the long padding order.
        trigger: prepended as its own tag (``"sks, red circle, ..."``) when given.
        details: also name each object's size and position (``"a large red circle at the top"``).
        names: replaces vocabulary words in object phrases, e.g. ``{"heart": "sks"}`` names a new
            concept by a trigger word.
        min_tokens: the long style pads until at least this many CLIP tokens (default 80: past
            the 75 a single SDXL chunk holds, with margin).
    """
    if style == "tags":
        text = ", ".join(_tags(scene, details, names))
    elif style == "sentence":
        text = _sentence(scene, details, names)
    elif style == "mixed":
        text = _mixed(scene, rng, details, names)
    elif style == "long":
        text = _long(scene, rng, details, names, min_tokens)
    else:
        raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")
    return f"{trigger}, {text}" if trigger else text
