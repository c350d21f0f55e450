"""Metrics on cross-attention maps: entropy, mass, IoU against masks, base-vs-LoRA change.

Sources: DAAM (Tang et al., ACL 2023) for min-max normalization and tau = 0.4; Ren et al.
(ECCV 2024, renjie3/MemAttn) for token entropy over all context positions, BOS and
padding included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

DAAM_TAU = 0.4  # DAAM's threshold after min-max normalization (plot_mask_heat_map default)


def minmax(heat: torch.Tensor) -> torch.Tensor:
    """Min-max normalize an (H, W) map to [0, 1]; a constant map becomes all zeros."""
    low, high = heat.min(), heat.max()
    if high - low <= 0:
        return torch.zeros_like(heat, dtype=torch.float32)
    return (heat.float() - low) / (high - low)


def resize_to(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic-resize an (H, W) map to ``size`` (DAAM ``expand_as``)."""
    if tuple(heat.shape[-2:]) == tuple(size):
        return heat.float()
    return F.interpolate(heat[None, None].float(), size=size, mode="bicubic", align_corners=False)[0, 0]


def binarize(heat: torch.Tensor, size: tuple[int, int], tau: float = DAAM_TAU) -> torch.Tensor:
    """DAAM mask: resize to ``size``, min-max normalize, threshold at ``tau``. -> (H, W) bool."""
    return minmax(resize_to(heat, size)) >= tau


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def mask_iou(heat: torch.Tensor, mask: torch.Tensor, tau: float = DAAM_TAU) -> float:
    """IoU of a heat map (h, w) with a ground-truth mask (H, W), DAAM-style at ``tau``."""
    return iou(binarize(heat, tuple(mask.shape), tau), mask.bool())


def spatial_entropy(heat: torch.Tensor) -> float:
    """Entropy of the map as a distribution over pixels, divided by log(H*W).

    0 means all attention on one pixel, 1 means uniform. (H, W) -> float.
    """
    p = heat.float().clamp(min=0).flatten()
    total = p.sum()
    if total <= 0:
        return float("nan")
    p = p / total
    h = -(p[p > 0] * p[p > 0].log()).sum().item()
    return h / math.log(p.numel()) if p.numel() > 1 else 0.0


def token_entropy(mass: torch.Tensor) -> float:
    """Ren et al.'s entropy -sum_i a_i log a_i over ALL context positions.

    Args:
        mass: (T,) head- and pixel-averaged conditional attention per position (sums to 1).
    """
    a = mass.float().clamp(min=0)
    a = a / a.sum()
    nz = a[a > 0]
    return -(nz * nz.log()).sum().item()


def mass_shares(mass: torch.Tensor, kinds: Sequence[str]) -> dict[str, float]:
    """Share of attention taken by BOS, caption tokens, EOS and padding.

    Args:
        mass: (T,) attention mass per position.
        kinds: T labels (bos/content/eos/pad).
    """
    total = mass.float().sum().item()
    shares = {k: 0.0 for k in ("bos", "content", "eos", "pad")}
    for value, kind in zip(mass.tolist(), kinds, strict=True):
        shares[kind] += value / total
    return shares


def map_change(base: torch.Tensor, lora: torch.Tensor, tau: float = DAAM_TAU) -> dict[str, float]:
    """How a LoRA moves a word's map: mask IoU at tau, L1 between normalized maps, peak shift.

    Args:
        base: (H, W) map without the LoRA.
        lora: (H, W) map with the LoRA, same size.

    Returns:
        ``mask_iou`` (1 = same region), ``l1`` (0..2 between pixel distributions),
        ``peak_shift`` (distance between argmax pixels, as a fraction of the diagonal).
    """
    size = tuple(base.shape)
    p, q = (m.float().clamp(min=0) for m in (base, lora))
    l1 = (p / p.sum().clamp(min=1e-12) - q / q.sum().clamp(min=1e-12)).abs().sum().item()
    return {
        "mask_iou": iou(binarize(base, size, tau), binarize(lora, size, tau)),
        "l1": l1,
        "peak_shift": _peak_distance(base, lora),
    }


def _peak_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    h, w = a.shape
    ya, xa = divmod(int(a.argmax()), w)
    yb, xb = divmod(int(b.argmax()), w)
    return math.hypot(ya - yb, xa - xb) / math.hypot(max(h - 1, 1), max(w - 1, 1))  # corner to corner = 1
