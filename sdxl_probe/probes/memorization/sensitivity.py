"""Is the copying keyed to the exact caption? Somepalli's perturbations as probes, and Wen's token significance.

Caption sensitivity (Somepalli et al. 2023, "Understanding and Mitigating Copying", ``sd_mitigation.py``):
the nearest tiled L2 of each training caption's generations to its image, exact caption against
2 random tokens added, 2 words repeated, ``0.1 * N(0, I)`` on the text embeddings, and a class-only
caption. A copy that vanishes under a small caption change is keyed to the caption.

Token significance (Wen et al. 2024, ``||grad_{e_token} ||eps(x_T, c) - eps(x_T, empty)|| ||``, BOS, EOS and
padding excluded): which caption tokens drive the text-conditional noise at the first step.
"""

from __future__ import annotations

import random

import torch

PERTURBATIONS = ("random_tokens", "word_repeat", "embedding_noise", "class_caption")
ADDED = 2  # Somepalli's training-time mitigations add 2 tokens / repeat 2 words
EMBEDDING_NOISE = 0.1  # Somepalli's README example lambda
FIRST_WORD_ID = 256  # BPE ids below this are the single bytes; random tokens are drawn above


def random_tokens(caption: str, rng: random.Random, n: int = ADDED) -> str:
    """Insert ``n`` random BPE vocabulary tokens at random word positions (Somepalli's ``randwordadd``)."""
    from sdxl_probe.text.bpe import get_bpe

    bpe = get_bpe()
    words = caption.split()
    for _ in range(n):
        token = bpe.decode([rng.randrange(FIRST_WORD_ID, bpe.bos_id)]).strip() or "x"
        words.insert(rng.randrange(len(words) + 1), token)
    return " ".join(words)


def word_repeat(caption: str, rng: random.Random, n: int = ADDED) -> str:
    """Repeat ``n`` random words of the caption at random positions (Somepalli's ``wordrepeat``)."""
    words = caption.split()
    if not words:
        return caption
    for _ in range(n):
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def perturbed_caption(kind: str, caption: str, index: int, class_caption: str) -> str:
    """The caption as the ``kind`` probe sends it (embedding noise leaves the text alone)."""
    rng = random.Random(f"{kind}:{index}:{caption}")
    if kind == "random_tokens":
        return random_tokens(caption, rng)
    if kind == "word_repeat":
        return word_repeat(caption, rng)
    if kind == "class_caption":
        return class_caption
    return caption


def token_significance(components, caption: str, seeds: list[int], steps: int, sampler: str,
                       size: tuple[int, int]) -> list[tuple[str, float]]:  # fmt: skip
    """(token text, gradient norm) per caption token, averaged over seeds at the sampler's first step.

    The gradient is taken with respect to the joined context rows of each token (TE1 and TE2 states).
    """
    from sdxl_probe.pipeline import sampling
    from sdxl_probe.pipeline.conditioning import encode_captions, predict_noise, time_ids
    from sdxl_probe.probes.memorization.scores import text_cond_norm

    lh, lw = sampling.check_size(components, *size)
    sched = sampling.make_scheduler(components, sampler)
    sched.set_timesteps(steps)
    t = sched.timesteps[0]
    with torch.no_grad():
        enc = encode_captions(components, [caption])
        unc = encode_captions(components, [""])
    if not components.is_toy:
        unc.context, unc.pooled = torch.zeros_like(unc.context), torch.zeros_like(unc.pooled)
    tids = time_ids(1, *size, like=enc.context)
    total = torch.zeros(enc.context.shape[1])
    for seed in seeds:
        x = sampling.initial_noise(1, (components.unet.config.in_channels, lh, lw), seed).to(enc.context)
        x = sched.scale_model_input(x * sched.init_noise_sigma, t)
        ctx = enc.context.detach().clone().requires_grad_(True)  # (1, L, D)
        eps_c = predict_noise(components.unet, x, t, context=ctx, pooled=enc.pooled, tids=tids)
        with torch.no_grad():
            eps_u = predict_noise(components.unet, x, t, context=unc.context, pooled=unc.pooled, tids=tids)
        (grad,) = torch.autograd.grad(text_cond_norm(eps_c, eps_u).sum(), ctx)
        total += grad[0].float().norm(dim=-1).cpu()  # (L,)
    layout, tokens = enc.layouts_te1[0], enc.captions[0].tokens
    return [(tok.text, float(total[pos]) / len(seeds))
            for tok, pos in zip(tokens, layout.positions, strict=True) if pos is not None]  # fmt: skip
