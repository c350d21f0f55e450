"""The generation cache: a re-run generates nothing new; a new seed or setting generates only what is new.

Oracle: counting the calls to the project's sampler (``pipeline.sampling.sample_latents``) and the images
each call makes, on the tiny SDXL-architecture model; an image generated alone equals the same
(caption, seed) generated inside a batch (its noise comes from its own seed).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdxl_probe.pipeline import sampling
from sdxl_probe.probes.memorization.generate import GenerationCache, SamplerSettings, generate_all


@pytest.fixture
def counted(monkeypatch):
    """Wrap the sampler so that the test sees how many batches and images it was asked for."""
    calls: list[int] = []
    real = sampling.sample_latents

    def counting(components, prompts, noise, **kwargs):
        calls.append(len(prompts))
        return real(components, prompts, noise, **kwargs)

    monkeypatch.setattr(sampling, "sample_latents", counting)
    return calls


def test_rerun_reuses_every_cached_generation(tmp_path, tiny_components, counted):
    settings = SamplerSettings(steps=2, cfg=5.0, sampler="euler", height=32, width=32, first_steps=2)
    cache = GenerationCache(tmp_path / "cache")
    jobs = [("a red circle", 1000), ("a red circle", 1001), ("a blue square, white background", 1000)]
    first, made = generate_all(tiny_components, "base:x", jobs, settings, cache, batch_size=16)
    assert (made, counted) == (3, [3])  # one batch of three
    again, made = generate_all(tiny_components, "base:x", jobs, settings, cache, batch_size=16)
    assert (made, counted) == (0, [3])  # nothing new: no sampler call
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image.numpy(), b.image.numpy())
        assert np.allclose(a.wen.numpy(), b.wen.numpy()) and np.allclose(a.mass.numpy(), b.mass.numpy())
    _, made = generate_all(tiny_components, "base:x", [*jobs, ("a red circle", 1002)], settings, cache, batch_size=16)
    assert (made, counted[-1]) == (1, 1)  # only the new seed
    _, made = generate_all(tiny_components, "lora:y", jobs[:1], settings, cache, batch_size=16)
    assert made == 1  # another checkpoint is another key
    _, made = generate_all(tiny_components, "base:x", jobs[:1], dataclasses.replace(settings, steps=3), cache,
                           batch_size=16)  # fmt: skip
    assert made == 1  # other sampler settings are another key


def test_batched_image_equals_the_image_generated_alone(tmp_path, tiny_components, counted):
    settings = SamplerSettings(steps=2, cfg=5.0, sampler="euler", height=32, width=32, first_steps=1)
    jobs = [("a red circle", 1000), ("a blue square", 1001), ("a green star", 1002)]
    batched, _ = generate_all(tiny_components, "m", jobs, settings, GenerationCache(None), batch_size=3)
    alone, _ = generate_all(tiny_components, "m", jobs[1:2], settings, GenerationCache(None), batch_size=1)
    diff = np.abs(batched[1].image.numpy().astype(int) - alone[0].image.numpy().astype(int))
    assert diff.max() <= 1  # float summation order may move a pixel by one level
    assert counted == [3, 1]
