"""Measures recorded while sampling, and the caption perturbations, against direct recomputation (tiny model).

Oracles: Wen's first-step noise norm recomputed by hand from the pipeline's public functions (initial noise,
scheduler scaling, the CFG pair of encodings, one UNet call each); Ren's per-step attention mass is a
distribution over the context (sums to 1); Somepalli's perturbations add exactly 2 words, repeated words
come from the caption.
"""

from __future__ import annotations

import random

import pytest
import torch

from sdxl_probe.pipeline import sampling
from sdxl_probe.pipeline.conditioning import encode_pair, predict_noise, time_ids
from sdxl_probe.probes.memorization.generate import SamplerSettings, run_batch
from sdxl_probe.probes.memorization.scores import text_cond_norm
from sdxl_probe.probes.memorization.sensitivity import random_tokens, word_repeat


def test_recorded_noise_norm_equals_the_hand_computed_first_step(tiny_components):
    c = tiny_components
    caption, seed = "a red circle on a white background", 1234
    settings = SamplerSettings(steps=3, cfg=5.0, sampler="euler", height=32, width=32, first_steps=2)
    gen = run_batch(c, [caption, "a blue square"], [seed, seed + 1], settings)[0]
    sched = sampling.make_scheduler(c, "euler")
    sched.set_timesteps(3)
    t = sched.timesteps[0]
    lh, lw = sampling.check_size(c, 32, 32)
    x = sampling.initial_noise(1, (c.unet.config.in_channels, lh, lw), seed) * sched.init_noise_sigma
    with torch.no_grad():
        context, pooled = encode_pair(c, [caption], "", max_token_length=None, weighted=False, zero_negative=False)
        x2 = sched.scale_model_input(torch.cat([x, x]), t)
        eps = predict_noise(c.unet, x2, t, context=context, pooled=pooled, tids=time_ids(2, 32, 32, like=context))
    eps_u, eps_c = eps.chunk(2)
    assert gen.wen.shape == (2,)
    assert gen.wen[0].item() == pytest.approx(text_cond_norm(eps_c, eps_u).item(), rel=1e-4)
    assert gen.mass.shape[0] == 2
    assert gen.mass.sum(dim=-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_perturbations_add_two_words():
    caption = "a small red circle on a white background"
    rng = random.Random(0)
    added = random_tokens(caption, rng)
    assert len(added.split()) == len(caption.split()) + 2
    repeated = word_repeat(caption, random.Random(1))
    assert len(repeated.split()) == len(caption.split()) + 2
    assert set(repeated.split()) == set(caption.split())
