"""The toy world: scenes of 1-3 flat coloured shapes, rendered with a ground-truth mask per object.

The world is small enough that a tiny SDXL-architecture model can learn it on two CPU cores
(``sdxl_probe/toy/weights/README.md`` has the measurements), and plain enough that a classical judge
(:mod:`sdxl_probe.toy.judge`) can read any image back.

Vocabulary:
    * base shapes :data:`SHAPES` and colours :data:`COLOURS` used in pretraining, minus the
      colour-shape pairs in :data:`HELDOUT_COMBOS`;
    * concept shapes :data:`CONCEPT_SHAPES` and colours :data:`CONCEPT_COLOURS`, never used in
      pretraining, kept for LoRA tests (``sample_scene(..., concept="heart")``);
    * sizes :data:`SIZES`, coarse positions :data:`POSITIONS`, plain :data:`BACKGROUNDS`.

Colours are saturated and far apart in RGB so they survive a lossy tiny VAE; a scene never
puts an object on a background of its own colour, and the objects of a scene have distinct
colours and do not overlap (their circumscribed circles are disjoint).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

from sdxl_probe.toy.captions import CAPTION_STYLES, caption_scene

__all__ = [
    "ALL_COLOURS",
    "ALL_SHAPES",
    "BACKGROUNDS",
    "CAPTION_STYLES",
    "COLOURS",
    "CONCEPT_COLOURS",
    "CONCEPT_SHAPES",
    "HELDOUT_COMBOS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Scene",
    "ToyObject",
    "caption_scene",
    "object_centre",
    "object_extent",
    "render_scene",
    "render_scenes",
    "sample_scene",
    "shape_unit_area",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 180, 40),
    "blue": (25, 70, 230),
    "yellow": (245, 225, 20),
    "purple": (150, 40, 200),
    "orange": (255, 140, 0),
    "white": (255, 255, 255),
}
# Never used by sample_scene(split="train"): new concepts for LoRA tests.
CONCEPT_SHAPES: tuple[str, ...] = ("heart", "cross")
CONCEPT_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (255, 120, 200),
    "turquoise": (0, 210, 230),
}
ALL_SHAPES: tuple[str, ...] = SHAPES + CONCEPT_SHAPES
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **CONCEPT_COLOURS}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

# (colour, shape) pairs never shown in pretraining; every colour and shape still appears elsewhere.
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("red", "star"), ("green", "triangle"), ("blue", "circle"), ("yellow", "square"), ("orange", "star")}
)

# Geometry, as fractions of the image side. Positions sit a quarter in from the edges so a
# large object fits inside the frame with its jitter.
POSITION_XY: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
SIZE_RADIUS: dict[str, float] = {"small": 0.105, "large": 0.175}
# Circumradius of each shape in units of its size radius (the shapes' areas are comparable).
SHAPE_EXTENT: dict[str, float] = {
    "circle": 0.9,
    "square": 0.8 * math.sqrt(2.0),
    "triangle": 1.2,
    "star": 1.15,
    "heart": 1.05,
    "cross": 1.0,
}
STAR_INNER_RATIO = 0.5  # fatter than a classic star (0.38) so its points survive 64 px and a tiny VAE
JITTER_XY = 0.025  # centre jitter, fraction of the side
JITTER_SCALE = 0.08  # relative size jitter
JITTER_ANGLE = 12.0  # degrees of rotation jitter (circles ignore it)
MAX_LAYOUT_TRIES = 200
_SDF_GRID = 384  # lookup-table resolution for shape distances
_SDF_EXTENT = 1.4  # table half-width in size radii (covers every shape's circumradius + margin)


@dataclass
class ToyObject:
    """One shape in a scene. ``dx, dy, scale, angle`` jitter the coarse size and position."""

    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scene:
    """A background and 1-3 objects, drawn in list order (later objects on top)."""

    objects: list[ToyObject]
    background: str

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(objects=[ToyObject(**o) for o in data["objects"]], background=data["background"])


def object_centre(obj: ToyObject) -> tuple[float, float]:
    """Centre ``(x, y)`` of ``obj`` as fractions of the image side (y grows downwards)."""
    x, y = POSITION_XY[obj.position]
    return x + obj.dx, y + obj.dy


def object_extent(obj: ToyObject) -> float:
    """Circumradius of ``obj`` as a fraction of the image side."""
    return SIZE_RADIUS[obj.size] * obj.scale * SHAPE_EXTENT[obj.shape]


# ---------------------------------------------------------------- sampling


def _allowed_combos(split: str, background: str) -> list[tuple[str, str]]:
    """Colour-shape pairs a ``split`` may draw on ``background`` (no object on its own colour)."""
    combos = [(c, s) for c in COLOURS for s in SHAPES if COLOURS[c] != BACKGROUNDS[background]]
    if split == "train":
        return [cs for cs in combos if cs not in HELDOUT_COMBOS]
    if split == "heldout":
        return [cs for cs in combos if cs in HELDOUT_COMBOS]
    return combos


def _concept_combos(concept: str, background: str) -> list[tuple[str, str]]:
    """Colour-shape pairs showing ``concept`` (a concept shape or colour) on ``background``."""
    if concept in CONCEPT_SHAPES:
        return [(c, concept) for c in COLOURS if COLOURS[c] != BACKGROUNDS[background]]
    if concept in CONCEPT_COLOURS:
        return [(concept, s) for s in SHAPES]
    raise ValueError(f"unknown concept {concept!r}; expected one of {CONCEPT_SHAPES + tuple(CONCEPT_COLOURS)}")


def _pick_combos(
    rng: random.Random, n: int, split: str, background: str, concept: str | None
) -> list[tuple[str, str]]:
    """Draw ``n`` colour-shape pairs with distinct colours (the concept object first)."""
    picked: list[tuple[str, str]] = []
    if concept is not None:
        picked.append(rng.choice(_concept_combos(concept, background)))
    pool = _allowed_combos("train" if concept is not None else split, background)
    while len(picked) < n:
        used = {c for c, _ in picked}
        candidates = [cs for cs in pool if cs[0] not in used]
        if not candidates:
            break
        picked.append(rng.choice(candidates))
    return picked


def _separated(objects: list[ToyObject]) -> bool:
    """True when no two objects' circumscribed circles intersect."""
    for i, a in enumerate(objects):
        ax, ay = object_centre(a)
        for b in objects[i + 1 :]:
            bx, by = object_centre(b)
            if math.hypot(ax - bx, ay - by) < object_extent(a) + object_extent(b):
                return False
    return True


def _layout(rng: random.Random, combos: list[tuple[str, str]]) -> list[ToyObject]:
    """Give each pair a size, a distinct position and jitter, retrying until none overlap."""
    for _ in range(MAX_LAYOUT_TRIES):
        positions = rng.sample(POSITIONS, len(combos))
        objects = [
            ToyObject(
                shape=s,
                colour=c,
                size=rng.choice(SIZES),
                position=p,
                dx=rng.uniform(-JITTER_XY, JITTER_XY),
                dy=rng.uniform(-JITTER_XY, JITTER_XY),
                scale=rng.uniform(1.0 - JITTER_SCALE, 1.0 + JITTER_SCALE),
                angle=0.0 if s == "circle" else rng.uniform(-JITTER_ANGLE, JITTER_ANGLE),
            )
            for (c, s), p in zip(combos, positions, strict=True)
        ]
        if _separated(objects):
            return objects
    raise RuntimeError(f"no non-overlapping layout for {combos} in {MAX_LAYOUT_TRIES} tries")


def sample_scene(
    rng: random.Random,
    *,
    n_objects: int | None = None,
    split: str = "train",
    concept: str | None = None,
    background: str | None = None,
) -> Scene:
    """Draw a random scene.

    Args:
        rng: the only source of randomness (same state, same scene).
        n_objects: 1, 2 or 3; drawn uniformly when None. The heldout split has few colours,
            so it may return fewer objects than asked only if no distinct colour is left.
        split: "train" never uses :data:`HELDOUT_COMBOS` nor concept shapes/colours;
            "heldout" uses only held-out pairs; "all" uses any base pair.
        concept: a concept shape or colour (e.g. "heart", "pink"); the first object shows it,
            the others are drawn from the train split.
        background: a :data:`BACKGROUNDS` name; drawn uniformly when None.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    n = n_objects if n_objects is not None else rng.randint(1, 3)
    if not 1 <= n <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n}")
    bg = background if background is not None else rng.choice(sorted(BACKGROUNDS))
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown background {bg!r}; expected one of {tuple(BACKGROUNDS)}")
    combos = _pick_combos(rng, n, split, bg, concept)
    return Scene(objects=_layout(rng, combos), background=bg)


# ---------------------------------------------------------------- rendering


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices ``(V, 2)`` of a polygonal shape in units of its size radius, centred on 0, y down."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.8
    if shape == "triangle":
        a = np.deg2rad(-90.0 + 120.0 * np.arange(3))
        return 1.2 * np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.15, 1.15 * STAR_INNER_RATIO)
        return np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1)
    if shape == "cross":
        w, arm = 0.33, 0.95
        return np.array(
            [[-w, -arm], [w, -arm], [w, -w], [arm, -w], [arm, w], [w, w],
             [w, arm], [-w, arm], [-w, w], [-arm, w], [-arm, -w], [-w, -w]]
        )
    if shape == "heart":
        t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
        return np.stack([x, y], axis=1) / 16.0
    raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points ``px, py (N,)`` to a polygon ``verts (V, 2)``."""
    v0, v1 = verts, np.roll(verts, -1, axis=0)
    e = v1 - v0  # (V, 2)
    wx, wy = px[:, None] - v0[:, 0], py[:, None] - v0[:, 1]  # (N, V)
    t = np.clip((wx * e[:, 0] + wy * e[:, 1]) / (e * e).sum(1), 0.0, 1.0)
    dist = np.sqrt(((wx - t * e[:, 0]) ** 2 + (wy - t * e[:, 1]) ** 2).min(axis=1))
    crosses = (v0[:, 1] > py[:, None]) != (v1[:, 1] > py[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = v0[:, 0] + (py[:, None] - v0[:, 1]) * e[:, 0] / e[:, 1]
    inside = (crosses & (px[:, None] < x_at)).sum(axis=1) % 2 == 1
    return np.where(inside, -dist, dist)


@cache
def _sdf_table(shape: str) -> np.ndarray:
    """Signed distance of ``shape`` in size-radius units on a ``(G, G)`` grid over [-L, L]^2.

    Rendering looks distances up here instead of measuring them per pixel: one gather per
    pixel makes 24k scenes take seconds. A cell is 2L/G = 0.007 radii, under 0.1 px at 64 px.
    """
    g = (np.arange(_SDF_GRID) + 0.5) / _SDF_GRID * 2 * _SDF_EXTENT - _SDF_EXTENT
    yy, xx = np.meshgrid(g, g, indexing="ij")
    if shape == "circle":
        sdf = np.hypot(xx, yy) - SHAPE_EXTENT["circle"]
    else:
        sdf = _polygon_sdf(xx.ravel(), yy.ravel(), _unit_polygon(shape)).reshape(xx.shape)
    return sdf.astype(np.float32)


def shape_unit_area(shape: str) -> float:
    """Area of ``shape`` drawn at size radius 1 (multiply by ``(radius * side) ** 2`` for pixels)."""
    return float((_sdf_table(shape) < 0).mean() * (2 * _SDF_EXTENT) ** 2)


def _coverage(obj: ToyObject, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Anti-aliased coverage in [0, 1] of ``obj`` over its bounding window ``(rows, cols)``.

    Coverage is ``0.5 - d`` clipped, with ``d`` the signed distance in pixels at the pixel centre.
    """
    cx, cy = (v * size for v in object_centre(obj))
    r = SIZE_RADIUS[obj.size] * obj.scale * size  # pixels per size-radius unit
    ext = SHAPE_EXTENT[obj.shape] * r + 1.0
    r0, r1 = max(int(cy - ext), 0), min(int(math.ceil(cy + ext)) + 1, size)
    c0, c1 = max(int(cx - ext), 0), min(int(math.ceil(cx + ext)) + 1, size)
    px = (np.arange(c0, c1) + 0.5 - cx)[None, :]  # (1, w)
    py = (np.arange(r0, r1) + 0.5 - cy)[:, None]  # (h, 1)
    th = math.radians(obj.angle)
    u = (math.cos(th) * px + math.sin(th) * py) / r  # rotate back by -angle into the unit frame
    v = (-math.sin(th) * px + math.cos(th) * py) / r
    scale = _SDF_GRID / (2 * _SDF_EXTENT)
    iu = np.clip(((u + _SDF_EXTENT) * scale).astype(np.int32), 0, _SDF_GRID - 1)
    iv = np.clip(((v + _SDF_EXTENT) * scale).astype(np.int32), 0, _SDF_GRID - 1)
    sdf = _sdf_table(obj.shape)[iv, iu] * r
    return (slice(r0, r1), slice(c0, c1)), np.clip(0.5 - sdf, 0.0, 1.0)


def render_scene(scene: Scene, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` at ``size`` x ``size``.

    Edges are anti-aliased from each shape's signed distance (coverage = 0.5 - distance).

    Returns:
        image: ``(size, size, 3)`` uint8 RGB.
        masks: ``(n_objects, size, size)`` bool, the pixels where each object is visible
            (coverage >= 0.5 and not covered by a later object).
    """
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = BACKGROUNDS[scene.background]
    masks = np.zeros((len(scene.objects), size, size), dtype=bool)
    for i, obj in enumerate(scene.objects):
        win, cov = _coverage(obj, size)
        colour = np.asarray(ALL_COLOURS[obj.colour], dtype=np.float32)
        a = cov[..., None].astype(np.float32)
        image[win] = image[win] * (1.0 - a) + colour * a
        masks[(i, *win)] = cov >= 0.5
        masks[:i, win[0], win[1]] &= ~masks[i, win[0], win[1]]
    return np.rint(image).astype(np.uint8), masks


def render_scenes(scenes: list[Scene], size: int = 64) -> np.ndarray:
    """Render many scenes into one ``(N, size, size, 3)`` uint8 array (masks dropped)."""
    out = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = render_scene(scene, size)[0]
    return out
