"""LoRA minus base, per image and per checkpoint; the calibrated threshold; the recommended checkpoint.

Every score is oriented so that a higher value means more copying, except ``diversity`` (lower means
the seeds collapse onto one image) and ``bos_mass`` (Ren et al. mitigate copying by raising the BOS logit, so
copying shows as less mass on BOS), and is reported as the LoRA's value minus the base model's on the
same captions and seeds (the reference's §C "calibrate against the base model").
"""

from __future__ import annotations

import math

from sdxl_probe.probes.memorization.scores import auc, percentile

HEADLINE = "copy_tiled_l2"
# score -> (raw measure, sign): score = sign * (LoRA raw - base raw)
SCORES: dict[str, tuple[str, int]] = {
    "copy_tiled_l2": ("nearest_l2", -1),  # Carlini: the LoRA's generations come closer to the image
    "copy_cosine": ("copy_cosine", 1),  # Somepalli's copy score: VAE latents or an open_clip encoder
    "clique": ("clique", 1),  # Carlini: share of seeds in the largest near-identical clique
    "diversity": ("diversity", 1),  # mean pairwise tiled L2 among seeds (lower = collapse)
    "noise_norm": ("noise_norm", 1),  # Wen, mean over the first steps
    "noise_norm_step0": ("noise_norm_step0", 1),  # Wen, first step only
    "attn_entropy": ("attn_entropy", 1),  # Ren, first step
    "bos_mass": ("bos_mass", 1),  # Ren, first step: their mitigation pushes attention back onto BOS
    "loss_gap": ("loss", -1),  # membership inference: the LoRA's loss drops on the image
    "cond_gap": ("cond_gap", 1),  # loss(empty) - loss(caption): the caption explains the image
    "adherence": ("adherence", 1),  # toy only: the judge sees the image's content in the generation
}
# +1: higher = more memorized; -1: lower = more memorized; 0: not a memorization score (a curve)
DIRECTION = {name: 1 for name in SCORES} | {"diversity": -1, "bos_mass": -1, "adherence": 0}
CALIBRATION_PERCENTILE = 99.0  # the reference's §C: the null's 99th percentile, about 1 % false positives


def lora_minus_base(lora: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Per-image scores from raw measures (measures missing on either side are left out)."""
    out = {}
    for name, (raw, sign) in SCORES.items():
        if raw in lora and raw in base:
            out[name] = sign * (lora[raw] - base[raw])
    return out


def mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def split_auc(per_image: list[dict[str, float]], splits: list[str], name: str) -> float:
    """AUC of ``name`` separating training from held-out images (oriented by its direction)."""
    sign = DIRECTION.get(name, 1) or 1
    pos = [sign * s[name] for s, sp in zip(per_image, splits, strict=True) if sp == "train" and name in s]
    neg = [sign * s[name] for s, sp in zip(per_image, splits, strict=True) if sp != "train" and name in s]
    return auc(pos, neg)


def threshold(checkpoints: list[dict], base_split_gap: list[float]) -> tuple[float, str]:
    """The headline's calibrated threshold, and how it was calibrated.

    With held-out images: the 99th percentile of the held-out images' headline over every checkpoint (what
    the LoRA does to images it never trained on). Without: the 99th percentile of the base model's own
    seed-to-seed spread (nearest tiled L2 of two disjoint halves of the seeds).
    """
    held = [v for c in checkpoints for v in c.get("held_out", {}).get(HEADLINE, [])]
    if held:
        return percentile(held, CALIBRATION_PERCENTILE), "the 99th percentile over held-out images"
    return percentile(base_split_gap, CALIBRATION_PERCENTILE), "the 99th percentile of the base model's seed-to-seed spread"


def metric_at(metrics: list[dict], step: int, key: str) -> float | None:
    """The last logged ``key`` at or before ``step`` (None when never logged)."""
    found = [r[key] for r in metrics if r.get("step", 0) <= step and r.get(key) is not None]
    return float(found[-1]) if found else None


def recommend(checkpoints: list[dict], limit: float, how: str) -> dict:
    """The last checkpoint before the headline crosses ``limit``, while validation loss still improves.

    Returns:
        {"step", "rule", "crossed_at"}: the rule in plain words, with the figures it used.
    """
    crossed = next((c["step"] for c in checkpoints if c["scores"].get(HEADLINE, float("nan")) > limit), None)
    before = [c for c in checkpoints if crossed is None or c["step"] < crossed]
    best, improving = math.inf, []
    for c in before:
        val = c.get("val_loss")
        if val is None or val <= best:
            improving.append(c)
            best = min(best, val) if val is not None else best
    rule = (f"the last checkpoint before the mean training-image {HEADLINE} (LoRA minus base) first exceeds "
            f"{limit:.4g} ({how}), among those whose validation loss is the best so far (when logged)")  # fmt: skip
    if improving:
        pick = improving[-1]["step"]
        if crossed is None:
            rule += "; no checkpoint crossed it, so the last improving one"
        else:
            rule += f"; it is first exceeded at step {crossed}"
    else:
        pick = checkpoints[0]["step"]
        rule += f"; the first checkpoint already exceeds it (step {crossed}), so the earliest is kept: train less"
    return {"step": pick, "rule": rule, "crossed_at": crossed, "threshold": limit}
