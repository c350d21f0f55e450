"""A classical judge for toy-world images: which colours and shapes an image holds, and where.

It reads pixels only (numpy, no learned parts), so it can score generations of any model:

1. **Background**: the per-channel median of the border pixels, named by the nearest
   :data:`~sdxl_probe.toy.world.BACKGROUNDS` colour.
2. **Colour per pixel** by a mixing model: an anti-aliased or blurred pixel is
   ``bg + alpha * (colour - bg)``. Each pixel takes the palette colour whose segment from the
   background passes closest to it; it is foreground when that colour's ``alpha >= 0.5``
   (the world's mask rule). Edge pixels, halfway between an object and the background, thus
   keep the object's colour instead of looking like a third colour.
3. **Objects**: connected components (8-neighbour, computed here in numpy) of the foreground;
   a component holding several colours is split by colour, minority colours below a share of
   the component join its main colour, and blobs below ``min_area`` (a fraction of the image)
   are specks and dropped.
4. **Shape** from the blob, rotation-free. Rays from the blob's coverage-weighted centroid find
   the sub-pixel ``alpha = 0.5`` contour of its colour (the smooth coverage, not the thresholded
   mask, so small and blurred corners survive). The Fourier harmonics of that radial profile
   name the shape (a triangle's profile has 3 bumps, a square's 4, a star's 5; a heart's has
   strong 2nd and 3rd); solidity (area / convex-hull area of the contour) and the 4th
   harmonic's strength separate a cross from a square. A circle has no strong harmonic.
5. **Position** is the nearest coarse position to the centroid; **size** compares the area to
   the geometric mean of the small and large areas of that shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from sdxl_probe.toy.world import (
    ALL_COLOURS,
    ALL_SHAPES,
    BACKGROUNDS,
    POSITION_XY,
    SIZE_RADIUS,
    shape_unit_area,
)

__all__ = [
    "JudgedObject",
    "Judgement",
    "classify_shape",
    "judge_image",
    "judge_matches",
    "label_components",
    "radial_profile",
    "shape_features",
]

BORDER = 2  # pixels of border used to estimate the background
MIN_AREA_FRAC = 0.004  # specks below this fraction of the image are ignored (16 px at 64x64)
MINOR_COLOUR_SHARE = 0.15  # a colour below this share of a blob is edge noise, not an object
RAYS = 64  # rays of the radial profile (harmonics up to 6 need far fewer; more smooths noise)
RAY_STEP = 0.25  # pixels between samples along a ray
CIRCLE_LEVEL = 0.055  # circles, clean or blurred, stay below this (<= 0.045); blurred squares and stars above
CROSS_SOLIDITY = 0.84  # 4-fold blobs below this solidity are crosses (clean <= 0.8); squares are >= 0.88
CROSS_H4 = 0.2  # ... or with a 4th harmonic above this (crosses >= 0.23 blurred; squares <= 0.17)
MIN_CONTRAST = 60.0  # RGB distance: a palette colour closer than this to the background is not sought
HEART_RATIO = 0.4  # a heart's 2nd harmonic is >= 0.55 of its 3rd; a triangle's <= 0.27


@dataclass
class JudgedObject:
    """One object found in an image. Coordinates are pixels, x right and y down."""

    colour: str
    shape: str
    size: str
    position: str
    area: int
    centroid: tuple[float, float]  # (x, y)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), end-exclusive
    mask: np.ndarray = field(repr=False)  # (H, W) bool
    solidity: float = 1.0
    harmonics: tuple[float, ...] = ()  # relative amplitudes of harmonics 1..6 of the radial profile

    def to_dict(self) -> dict:
        """JSON-ready summary (the mask is left out)."""
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "position": self.position,
            "area": self.area,
            "centroid": [round(v, 2) for v in self.centroid],
            "bbox": list(self.bbox),
            "solidity": round(self.solidity, 3),
            "harmonics": [round(h, 3) for h in self.harmonics],
        }


@dataclass
class Judgement:
    """What the judge saw in one image: the background and the objects, largest first."""

    background: str
    background_rgb: tuple[int, int, int]
    objects: list[JudgedObject]

    def colours(self) -> set[str]:
        return {o.colour for o in self.objects}

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def find(self, colour: str | None = None, shape: str | None = None) -> list[JudgedObject]:
        """Objects matching ``colour`` and ``shape`` (None matches anything)."""
        return [
            o for o in self.objects if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
        ]

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "background_rgb": list(self.background_rgb),
            "objects": [o.to_dict() for o in self.objects],
        }


def judge_matches(judgement: Judgement, colour: str | None = None, shape: str | None = None) -> bool:
    """True when some object has ``colour`` and ``shape`` (None matches anything)."""
    return bool(judgement.find(colour, shape))


# ---------------------------------------------------------------- pixels -> labels


def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float64 in 0..255 from uint8 or float-in-[0, 1] RGB(A)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 2 * BORDER + 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float64)
    if np.asarray(image).dtype != np.uint8 and arr.max() <= 1.0:
        arr = arr * 255.0
    return arr


def _background(img: np.ndarray) -> np.ndarray:
    """Median RGB ``(3,)`` of the ``BORDER``-pixel frame of ``img (H, W, 3)``."""
    b = BORDER
    frame = np.concatenate([img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3),
                            img[b:-b, :b].reshape(-1, 3), img[b:-b, -b:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def _pixel_colours(img: np.ndarray, bg: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best palette index ``(H, W)`` and every colour's alpha ``(H, W, K)`` under the mixing model.

    ``palette (K, 3)``: pixel ``p`` is scored by its distance to the segment ``bg + a (c_k - bg)``,
    ``a`` in [0, 1]. Palette colours within :data:`MIN_CONTRAST` of the background never win:
    their segment is so short that noise would pass for them (white on a white background).
    """
    d = palette - bg  # (K, 3)
    dd = (d * d).sum(1)  # (K,)
    rel = img - bg  # (H, W, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.clip(np.einsum("hwc,kc->hwk", rel, d) / dd, 0.0, 1.0)  # (H, W, K)
    resid = np.linalg.norm(rel[..., None, :] - alpha[..., None] * d, axis=-1)  # (H, W, K)
    resid[..., dd < MIN_CONTRAST**2] = np.inf
    return resid.argmin(-1), alpha


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of ``mask (H, W)`` bool: labels ``(H, W)`` int (0 = off) and their count.

    Max-label propagation with pointer jumping (each pixel also takes the label of the pixel
    its label names), so it converges in few passes; labels are then renumbered 1..n.
    """
    h, w = mask.shape
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        pad = np.pad(lab, 1)
        new = lab.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                np.maximum(new, pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], out=new)
        new = np.where(mask, new, 0)
        on = new > 0
        new[on] = np.maximum(new[on], new.ravel()[new[on] - 1])
        if np.array_equal(new, lab):
            break
        lab = new
    uniq, inv = np.unique(lab[mask], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int64)
    out[mask] = inv + 1
    return out, len(uniq)


def _blobs(best: np.ndarray, fg: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    """Split the foreground into ``(palette index, mask)`` blobs of at least ``min_area`` pixels."""
    labels, n = label_components(fg)
    blobs = []
    for comp in range(1, n + 1):
        region = labels == comp
        total = int(region.sum())
        if total < min_area:
            continue
        idx, counts = np.unique(best[region], return_counts=True)
        main = idx[counts.argmax()]
        keep = idx[counts >= max(min_area, MINOR_COLOUR_SHARE * total)]
        if len(keep) <= 1:  # one colour: the whole component is one object of the main colour
            blobs.append((int(main), region))
            continue
        colour_of = np.where(np.isin(best, keep), best, main)
        for k in keep:
            sub, m = label_components(region & (colour_of == k))
            blobs += [(int(k), sub == j) for j in range(1, m + 1) if (sub == j).sum() >= min_area]
    return blobs


# ---------------------------------------------------------------- blob -> shape


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of ``points (N, 2)`` (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def half(seq: list) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2 and (
                (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
            ) <= 0:
                out.pop()
            out.append(p)
        return out

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _bilinear(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``a (H, W)`` sampled at pixel coordinates ``x, y`` (pixel centres at +0.5), clamped at the edges."""
    h, w = a.shape
    x = np.clip(x - 0.5, 0.0, w - 1.001)
    y = np.clip(y - 0.5, 0.0, h - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = x - x0, y - y0
    return (a[y0, x0] * (1 - fx) * (1 - fy) + a[y0, x0 + 1] * fx * (1 - fy)
            + a[y0 + 1, x0] * (1 - fx) * fy + a[y0 + 1, x0 + 1] * fx * fy)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask (H, W)`` grown by ``steps`` pixels (8-neighbour)."""
    for _ in range(steps):
        pad = np.pad(mask, 1)
        h, w = mask.shape
        mask = np.logical_or.reduce([pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    return mask


def radial_profile(alpha: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Sub-pixel radius ``(RAYS,)`` of the ``alpha = 0.5`` contour along evenly spaced rays from ``(cx, cy)``.

    ``alpha (H, W)`` is the object's coverage (0..1, interpolated bilinearly); each ray keeps its
    outermost crossing, refined linearly between samples. Reading the smooth coverage instead of
    the thresholded mask keeps small and blurred shapes' corners.
    """
    theta = np.arange(RAYS) * (2 * np.pi / RAYS)
    radii = np.arange(0.0, math.hypot(*alpha.shape) / 2, RAY_STEP)
    vals = _bilinear(alpha, cx + np.cos(theta)[:, None] * radii, cy + np.sin(theta)[:, None] * radii)  # (RAYS, R)
    inside = vals >= 0.5
    last = np.where(inside.any(1), radii.size - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    rows = np.arange(RAYS)
    v0, v1 = vals[rows, last], vals[rows, np.minimum(last + 1, radii.size - 1)]
    return radii[last] + RAY_STEP * np.clip((v0 - 0.5) / np.maximum(v0 - v1, 1e-6), 0.0, 1.0)


def shape_features(mask: np.ndarray, alpha: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """``(solidity, harmonics (6,))`` of a blob.

    Args:
        mask: ``(H, W)`` bool, the blob.
        alpha: ``(H, W)`` coverage of the blob alone (zero on other objects); the mask itself
            when None. The profile's centre is the coverage-weighted centroid.

    Returns:
        solidity: area / convex-hull area of the contour polygon traced by the radial profile.
        harmonics: ``2 |F_k| / F_0`` for k = 1..6 of the radial profile (the peak-to-mean ratio
            of each sinusoid): 3 for a triangle, 4 for a square, 5 for a star.
    """
    cov = mask.astype(np.float64) if alpha is None else alpha
    yy, xx = np.indices(mask.shape)
    total = max(float(cov.sum()), 1e-9)
    r = radial_profile(cov, float((xx * cov).sum()) / total + 0.5, float((yy * cov).sum()) / total + 0.5)
    theta = np.arange(RAYS) * (2 * np.pi / RAYS)
    px, py = r * np.cos(theta), r * np.sin(theta)
    area = 0.5 * abs(float(np.dot(px, np.roll(py, -1)) - np.dot(py, np.roll(px, -1))))
    hull = _hull_area(np.stack([px, py], axis=1))
    spec = np.abs(np.fft.rfft(r))
    return (area / hull if hull > 0 else 1.0), 2.0 * spec[1:7] / max(spec[0], 1e-9)


def classify_shape(solidity: float, harmonics: np.ndarray, shapes: Iterable[str] = ALL_SHAPES) -> str:
    """The allowed shape with the strongest evidence.

    Evidence: a circle scores the noise level :data:`CIRCLE_LEVEL`; a triangle its 3rd
    harmonic, a star its 5th; the 4th goes to a cross when the blob is hollow or the 4th
    harmonic very strong, else to a square (to whichever is allowed if only one is). A heart
    has strong 2nd *and* 3rd harmonics (a triangle has a weak 2nd): it scores their sum when
    both pass the noise level and the 2nd is at least :data:`HEART_RATIO` of the 3rd.
    """
    allowed = set(shapes)
    h2, h3, h4, h5 = harmonics[1:5]
    four_fold = "cross" if solidity < CROSS_SOLIDITY or h4 >= CROSS_H4 else "square"
    four_folds = {"square", "cross"} & allowed
    if len(four_folds) == 1:
        four_fold = four_folds.pop()
    is_heart = min(h2, h3) >= CIRCLE_LEVEL and h2 >= HEART_RATIO * h3
    evidence = {"circle": CIRCLE_LEVEL, "triangle": h3, "star": h5, "heart": (h2 + h3) * is_heart, four_fold: h4}
    ranked = [s for s in sorted(evidence, key=evidence.get, reverse=True) if s in allowed]
    if not ranked:
        raise ValueError(f"no known shape among {sorted(allowed)}; expected some of {ALL_SHAPES}")
    return ranked[0]


# ---------------------------------------------------------------- the judge


def _size_word(shape: str, area: int, side: int) -> str:
    """``large`` when ``area`` exceeds the geometric mean of the small and large areas of ``shape``."""
    r = math.sqrt(SIZE_RADIUS["small"] * SIZE_RADIUS["large"]) * side
    return "large" if area > shape_unit_area(shape) * r * r else "small"


def _position_word(cx: float, cy: float, w: int, h: int) -> str:
    return min(POSITION_XY, key=lambda p: (POSITION_XY[p][0] - cx / w) ** 2 + (POSITION_XY[p][1] - cy / h) ** 2)


def _own_alpha(alpha: np.ndarray, mask: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """The blob's coverage ``(H, W)``: its colour's alpha on the blob and its 2-pixel rim, zero on
    other foreground (a neighbour of a similar hue would otherwise leak in)."""
    return np.where(_dilate(mask, 2) & (mask | ~fg), alpha, 0.0)


def _judge_blob(colour: str, mask: np.ndarray, alpha: np.ndarray, shapes: Iterable[str]) -> JudgedObject:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    solidity, harm = shape_features(mask, alpha)
    shape = classify_shape(solidity, harm, shapes)
    return JudgedObject(
        colour=colour,
        shape=shape,
        size=_size_word(shape, len(xs), math.sqrt(h * w)),
        position=_position_word(cx, cy, w, h),
        area=len(xs),
        centroid=(float(cx), float(cy)),
        bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
        mask=mask,
        solidity=float(solidity),
        harmonics=tuple(float(v) for v in harm),
    )


def judge_image(
    image: np.ndarray,
    *,
    colours: Iterable[str] | None = None,
    shapes: Iterable[str] | None = None,
    min_area_frac: float = MIN_AREA_FRAC,
) -> Judgement:
    """Find the background and the objects of an image.

    Made for toy-world sizes (64-256 px): memory grows with pixels x palette colours.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in [0, 1] (an alpha channel is dropped).
        colours: palette names the objects may have (default every world colour, concepts too).
        shapes: shape names the objects may have (default every world shape, concepts too).
        min_area_frac: blobs smaller than this fraction of the image are ignored as specks.

    Returns:
        A :class:`Judgement`, objects sorted by area, largest first.
    """
    img = _as_rgb_float(image)
    names = list(colours) if colours is not None else list(ALL_COLOURS)
    unknown = [c for c in names if c not in ALL_COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; expected some of {tuple(ALL_COLOURS)}")
    shape_names = tuple(shapes) if shapes is not None else ALL_SHAPES
    bg = _background(img)
    best, alpha = _pixel_colours(img, bg, np.array([ALL_COLOURS[c] for c in names], dtype=np.float64))
    min_area = max(1, int(round(min_area_frac * img.shape[0] * img.shape[1])))
    fg = np.take_along_axis(alpha, best[..., None], -1)[..., 0] >= 0.5
    blobs = _blobs(best, fg, min_area)
    objects = [_judge_blob(names[k], m, _own_alpha(alpha[..., k], m, fg), shape_names) for k, m in blobs]
    objects.sort(key=lambda o: -o.area)
    bg_name = min(BACKGROUNDS, key=lambda b: float(((np.array(BACKGROUNDS[b]) - bg) ** 2).sum()))
    return Judgement(background=bg_name, background_rgb=tuple(int(round(v)) for v in bg), objects=objects)
