"""Caption encoding on tiny components: sd-scripts semantics, diffusers equality, bookkeeping."""

from __future__ import annotations

import pytest
import torch

from sdxl_probe.errors import ConfigError, ProbeError
from sdxl_probe.pipeline.conditioning import encode_captions
from sdxl_probe.text.bpe import get_bpe
from sdxl_probe.text.vocab import load_vocab

LENGTHS = (0, 74, 75, 76, 150, 151, 225, 300)


def single_token_words(n: int) -> list[str]:
    """``n`` distinct words that are each one CLIP token (so a word's context position is its index + 1)."""
    bpe, found = get_bpe(), []
    for tok, i in load_vocab().items():
        word = tok.removesuffix("</w>")
        if tok.endswith("</w>") and word.isalpha() and word.isascii() and len(word) > 3 and bpe.encode(word) == [i]:
            found.append(word)
        if len(found) == n:
            return found
    raise AssertionError("not enough single-token words")


@pytest.fixture(scope="module")
def words() -> list[str]:
    return single_token_words(320)


def sd_scripts_reference(components, captions: list[str], max_token_length: int | None):
    """Transcription of sd-scripts' SDXL tokenize + encode_tokens, on the HF tokenizers."""
    max_length = 77 if max_token_length is None else max_token_length + 2
    ids1 = torch.tensor([_ids(components.tokenizer, c, max_length) for c in captions])  # (B, n, 77)
    ids2 = torch.tensor([_ids(components.tokenizer_2, c, max_length) for c in captions])
    b, n = ids1.shape[:2]
    out1 = components.text_encoder(ids1.reshape(-1, 77), output_hidden_states=True)
    out2 = components.text_encoder_2(ids2.reshape(-1, 77), output_hidden_states=True)
    h1, h2 = out1.hidden_states[-2], out2.hidden_states[-2]
    first_eos = (ids2.reshape(-1, 77) == components.tokenizer_2.eos_token_id).int().argmax(dim=1)
    pool2 = components.text_encoder_2.text_projection(out2.last_hidden_state[torch.arange(b * n), first_eos])
    h1, h2 = h1.reshape(b, -1, h1.shape[-1]), h2.reshape(b, -1, h2.shape[-1])
    if n > 1:
        total = n * 77
        h1 = torch.cat([h1[:, :1]] + [h1[:, i : i + 75] for i in range(1, total, 77)] + [h1[:, -1:]], dim=1)
        h2 = torch.cat([h2[:, :1]] + [h2[:, i : i + 75] for i in range(1, total, 77)] + [h2[:, -1:]], dim=1)
        pool2 = pool2[::n]
    return h1, h2, pool2


def _ids(tokenizer, text: str, max_length: int) -> list[list[int]]:
    ids = tokenizer(text, padding="max_length", truncation=True, max_length=max_length).input_ids
    if max_length <= 77:
        return [ids]
    chunks = []
    for i in range(1, max_length - 77 + 2, 75):
        chunk = [ids[0], *ids[i : i + 75], ids[-1]]
        if tokenizer.pad_token_id != tokenizer.eos_token_id:
            if chunk[-2] not in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                chunk[-1] = tokenizer.eos_token_id
            if chunk[1] == tokenizer.pad_token_id:
                chunk[1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("limit", [None, 150, 225])
@torch.no_grad()
def test_matches_sd_scripts_reference(tiny_components, words, limit):
    captions = [" ".join(words[:n]) for n in LENGTHS]
    enc = encode_captions(tiny_components, captions, max_token_length=limit)
    d1 = tiny_components.text_encoder.config.hidden_size
    d2 = tiny_components.text_encoder_2.config.hidden_size
    proj = tiny_components.text_encoder_2.config.projection_dim
    length = 77 if limit is None else limit + 2
    assert enc.context.shape == (len(captions), length, d1 + d2)
    assert enc.hidden_te1.shape == (len(captions), length, d1)
    assert enc.pooled.shape == (len(captions), proj)
    h1, h2, pool2 = sd_scripts_reference(tiny_components, captions, limit)
    torch.testing.assert_close(enc.hidden_te1, h1, rtol=0, atol=1e-6)
    torch.testing.assert_close(enc.hidden_te2, h2, rtol=0, atol=1e-6)
    torch.testing.assert_close(enc.pooled, pool2, rtol=0, atol=1e-6)
    torch.testing.assert_close(enc.context, torch.cat([h1, h2], dim=-1), rtol=0, atol=1e-6)
    for lay, n in zip(enc.layouts_te1, LENGTHS, strict=True):
        assert lay.n_tokens == n and lay.context_length == length
        assert lay.n_kept == min(n, length - 2)


@torch.no_grad()
def test_diffusers_mode_equals_encode_prompt(tiny_components, words):
    from diffusers import StableDiffusionXLPipeline

    c = tiny_components
    pipe = StableDiffusionXLPipeline(
        vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2, tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=c.scheduler,
    )
    captions = ["a photo of a cat, long hair", "", " ".join(words[:74]), " ".join(words[:75]), "Red, (blue) ä 😀"]
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    enc = encode_captions(c, captions, mode="diffusers")
    torch.testing.assert_close(enc.context, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(enc.pooled, pooled, rtol=0, atol=1e-6)
    same = encode_captions(c, captions, mode="sd-scripts")  # up to 75 tokens the modes agree
    torch.testing.assert_close(same.context, enc.context, rtol=0, atol=1e-6)
    torch.testing.assert_close(same.pooled, enc.pooled, rtol=0, atol=1e-6)


@torch.no_grad()
def test_pooled_sees_first_chunk_only(tiny_components, words):
    base = words[:100]
    changed = words[:80] + words[200:220]  # tokens 81..100 differ
    a, b = encode_captions(tiny_components, [" ".join(base), " ".join(changed)], max_token_length=150).pooled
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    enc = encode_captions(tiny_components, [" ".join(base), " ".join(changed)], max_token_length=150)
    assert not torch.allclose(enc.context[0, 81:101], enc.context[1, 81:101])
    torch.testing.assert_close(enc.context[0, :76], enc.context[1, :76], rtol=0, atol=0)  # chunk 1 unchanged
    assert not torch.allclose(*encode_captions(tiny_components, [" ".join(words[:5]), " ".join(words[5:10])]).pooled)


@torch.no_grad()
def test_cut_tokens_change_nothing(tiny_components, words):
    a = " ".join(words[:160])
    b = " ".join(words[:150] + words[300:310])  # differs only after token 150
    enc = encode_captions(tiny_components, [a, b], max_token_length=150)
    torch.testing.assert_close(enc.context[0], enc.context[1], rtol=0, atol=0)
    torch.testing.assert_close(enc.pooled[0], enc.pooled[1], rtol=0, atol=0)
    assert enc.layouts_te1[0].positions[150:] == [None] * 10


@torch.no_grad()
def test_weighted_scales_hidden_states_not_pooled(tiny_components):
    plain = encode_captions(tiny_components, ["red hair blue eyes"])
    weighted = encode_captions(tiny_components, ["(red hair:2) blue eyes"], weighted=True)
    assert [t.id for t in weighted.captions[0].tokens] == [t.id for t in plain.captions[0].tokens]
    scale = torch.ones(77, 1)
    scale[1:3] = 2.0  # "red", "hair" at context positions 1 and 2
    torch.testing.assert_close(weighted.hidden_te1[0], plain.hidden_te1[0] * scale, rtol=0, atol=1e-6)
    torch.testing.assert_close(weighted.hidden_te2[0], plain.hidden_te2[0] * scale, rtol=0, atol=1e-6)
    torch.testing.assert_close(weighted.pooled, plain.pooled, rtol=0, atol=0)


@torch.no_grad()
def test_weighted_long_caption_positions(tiny_components, words):
    caption = " ".join(words[:100]) + " (" + " ".join(words[100:110]) + ":0.5)"
    plain = encode_captions(tiny_components, [" ".join(words[:110])], max_token_length=150)
    weighted = encode_captions(tiny_components, [caption], max_token_length=150, weighted=True)
    scale = torch.ones(152, 1)
    scale[101:111] = 0.5
    torch.testing.assert_close(weighted.context[0], plain.context[0] * scale, rtol=0, atol=1e-6)


def test_mode_errors(tiny_components):
    with pytest.raises(ConfigError, match="max_token_length=150 needs mode='sd-scripts'"):
        encode_captions(tiny_components, ["a"], max_token_length=150, mode="diffusers")
    with pytest.raises(ConfigError, match="weighted captions need"):
        encode_captions(tiny_components, ["a"], mode="diffusers", weighted=True)
    with pytest.raises(ConfigError, match="mode='comfy'"):
        encode_captions(tiny_components, ["a"], mode="comfy")
    with pytest.raises(ProbeError, match="no captions"):
        encode_captions(tiny_components, [])
