"""What the sampler feeds the UNet: long and weighted prompts reach ``encoder_hidden_states`` as sd-scripts encodes them.

A forward pre-hook on the tiny UNet records every call's ``encoder_hidden_states`` and ``text_embeds``
during :func:`sdxl_probe.pipeline.sampling.generate_images`; they are compared with an independent
transcription of sd-scripts' SDXL tokenize + encode (``sd_scripts_reference`` of test_text_encode, on
the HF tokenizers), with token weights applied as the conditioning docstring says: the joined hidden
states are multiplied by the token weights, BOS/EOS by 1, the pooled vector never.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from test_text_encode import sd_scripts_reference, single_token_words

from sdxl_probe.pipeline.sampling import generate_images


@pytest.fixture(scope="module")
def words() -> list[str]:
    return single_token_words(230)


@contextmanager
def unet_inputs(unet):
    """Record ``(encoder_hidden_states, text_embeds)`` of every UNet call, positional or keyword."""
    calls = []

    def hook(module, args, kwargs):
        ehs = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        calls.append((ehs.detach().clone(), kwargs["added_cond_kwargs"]["text_embeds"].detach().clone()))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _reference(components, captions: list[str], max_token_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (B, L, d1 + d2), pooled (B, P)) from the sd-scripts transcription."""
    h1, h2, pooled = sd_scripts_reference(components, captions, max_token_length)
    return torch.cat([h1, h2], dim=-1), pooled


def _check_calls(calls, steps: int, context: torch.Tensor, pooled: torch.Tensor) -> None:
    assert len(calls) == steps
    for ehs, text_embeds in calls:
        torch.testing.assert_close(ehs, context, rtol=0, atol=1e-5)
        torch.testing.assert_close(text_embeds, pooled, rtol=0, atol=1e-5)


@torch.no_grad()
def test_long_prompts_reach_the_unet_as_sd_scripts_encodes_them(tiny_components, words):
    """Prompts of 200 and 140 tokens at max_token_length 225, with CFG: [negative "" ; prompts], 227 slots.

    Oracle: sd-scripts' chunked encoding (three 77-token chunks joined, pooled from the first chunk).
    """
    prompts = [" ".join(words[:200]), " ".join(words[30:170])]
    with unet_inputs(tiny_components.unet) as calls:
        generate_images(tiny_components, prompts, seed=0, steps=2, cfg=3.0, max_token_length=225)
    cond, cond_pooled = _reference(tiny_components, prompts, 225)
    unc, unc_pooled = _reference(tiny_components, ["", ""], 225)  # the toy family encodes "" (no zeros)
    assert cond.shape[1] == 227
    _check_calls(calls, 2, torch.cat([unc, cond]), torch.cat([unc_pooled, cond_pooled]))
    # Tokens 151..200 reach the UNet: the first prompt's last chunk differs from a 150-token prompt's.
    short, _ = _reference(tiny_components, [" ".join(words[:150])], 225)
    assert not torch.allclose(cond[0, 152:201], short[0, 152:201])


@torch.no_grad()
def test_weighted_prompts_scale_the_unet_context_by_token_weight(tiny_components, words):
    """``(words:0.5)`` past token 100 of a 150-token window, and ``(red hair:2)``, without CFG.

    Oracle: the unweighted sd-scripts encoding times the token weights (BOS/EOS 1); pooled unchanged.
    """
    long_weighted = " ".join(words[:100]) + " (" + " ".join(words[100:110]) + ":0.5)"
    prompts = [long_weighted, "(red hair:2) blue eyes"]
    with unet_inputs(tiny_components.unet) as calls:
        generate_images(tiny_components, prompts, seed=0, steps=2, cfg=1.0, max_token_length=150, weighted=True)
    plain, pooled = _reference(tiny_components, [" ".join(words[:110]), "red hair blue eyes"], 150)
    scale = torch.ones(2, 152, 1)
    scale[0, 101:111] = 0.5  # words 101..110 at context positions 101..110
    scale[1, 1:3] = 2.0  # "red", "hair"
    _check_calls(calls, 2, plain * scale, pooled)
