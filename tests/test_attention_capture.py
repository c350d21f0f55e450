"""Tests for sdxl_probe.probes.attention.capture on a tiny SDXL-architecture UNet built from config."""

from __future__ import annotations

import pytest
import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.probes.attention.capture import (
    RecordingAttnProcessor,
    capture_cross_attention,
    infer_map_hw,
    select_cross_attention_layers,
)

CROSS_DIM = 48  # TE1 16 + TE2 32 wide


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2, 4), cross_attention_dim=CROSS_DIM, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )  # fmt: skip
    return unet.eval()


@pytest.fixture(scope="module")
def unet():
    return build_unet()


def unet_inputs(batch: int, hw: tuple[int, int], tokens: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, *hw, generator=g)
    context = torch.randn(batch, tokens, CROSS_DIM, generator=g)
    added = {
        "text_embeds": torch.randn(batch, 32, generator=g),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
    }
    return sample, context, added


def run(unet, sample, context, added, t=500):
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


def test_infer_map_hw_follows_ceil_halving():
    assert infer_map_hw(8 * 12, (16, 24)) == (8, 12)
    assert infer_map_hw(4 * 6, (16, 24)) == (4, 6)
    assert infer_map_hw(4 * 4, (13, 13)) == (4, 4)  # 13 -> 7 -> 4
    assert infer_map_hw(64, None) == (8, 8)
    with pytest.raises(ProbeError, match="latent_hw"):
        infer_map_hw(24, None)


def test_processors_restored_and_output_identical(unet):
    sample, context, added = unet_inputs(2, (16, 16), 77)
    before = dict(unet.attn_processors)
    reference = run(unet, sample, context, added)
    with capture_cross_attention(unet) as rec:
        inside = dict(unet.attn_processors)
        captured = run(unet, sample, context, added)
    after = dict(unet.attn_processors)
    assert all(after[k] is before[k] for k in before)
    swapped = {k for k in inside if isinstance(inside[k], RecordingAttnProcessor)}
    assert swapped and all(k.endswith("attn2.processor") and not k.startswith("mid_block") for k in swapped)
    assert all(inside[k] is before[k] for k in before if k not in swapped)  # attn1 keeps its fast path
    assert torch.allclose(captured, reference, atol=1e-6)
    assert set(rec.sums) == {k.removesuffix(".processor") for k in swapped}


def test_processors_restored_on_exception(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_cross_attention(unet):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert not unet._forward_pre_hooks


def test_maps_are_probabilities_non_square_batch(unet):
    sample, context, added = unet_inputs(3, (16, 24), 152)
    with capture_cross_attention(unet) as rec:
        run(unet, sample, context, added)
    shapes = {tuple(s.shape) for s in rec.sums.values()}
    assert shapes == {(3, 1, 152, 8, 12), (3, 1, 152, 4, 6)}
    for s in rec.sums.values():  # one step: every pixel's probabilities sum to 1 over tokens
        assert torch.allclose(s.sum(dim=2), torch.ones_like(s.sum(dim=2)), atol=1e-5)
    mass = rec.token_mass[0] / rec.token_mass_calls[0]
    assert mass.shape == (3, 152) and torch.allclose(mass.sum(-1), torch.ones(3), atol=1e-5)


def test_conditional_half_and_heads(unet):
    sample, context, added = unet_inputs(1, (16, 16), 77)
    uncond = torch.zeros_like(context)
    doubled = (
        torch.cat([sample, sample]),
        torch.cat([uncond, context]),
        {k: torch.cat([v, v]) for k, v in added.items()},
    )
    with capture_cross_attention(unet) as plain:
        run(unet, sample, context, added)
    with capture_cross_attention(unet, cfg_doubled=True) as cond:
        run(unet, *doubled)
    with capture_cross_attention(unet, cfg_doubled=True, keep_heads=True, heads=[0]) as head0:
        run(unet, *doubled)
    for name, s in plain.sums.items():
        assert cond.sums[name].shape == s.shape
        assert torch.allclose(cond.sums[name], s, atol=1e-5)
        assert head0.sums[name].shape == s.shape
    multi = [n for n in plain.sums if n.startswith("down_blocks.2")]
    assert any(not torch.allclose(head0.sums[n], plain.sums[n], atol=1e-4) for n in multi)


def test_streaming_memory_constant_and_step_window(unet):
    sample, context, added = unet_inputs(1, (16, 16), 77)
    with capture_cross_attention(unet) as rec:
        run(unet, sample, context, added)
        one_step = rec.map_nbytes()
        first = {k: v.clone() for k, v in rec.sums.items()}
        for _ in range(2):
            run(unet, sample, context, added)
    assert rec.map_nbytes() == one_step
    assert all(torch.allclose(rec.sums[k], 3 * first[k], atol=1e-4) for k in first)
    assert sorted(rec.token_mass) == [0, 1, 2]
    with capture_cross_attention(unet, steps=range(1, 3)) as win:
        for _ in range(4):
            run(unet, sample, context, added)
    assert all(c == 2 for c in win.calls.values())
    assert sorted(win.token_mass) == [1, 2]


def test_layer_and_resolution_selection(unet):
    keys = list(unet.attn_processors)
    assert select_cross_attention_layers(keys, include_mid=True) != select_cross_attention_layers(keys)
    assert all(k.startswith("up_blocks.0") for k in select_cross_attention_layers(keys, ["up_blocks.0"]))
    with pytest.raises(ProbeError, match="valid blocks"):
        select_cross_attention_layers(keys, ["up_blocks.9"])
    sample, context, added = unet_inputs(1, (16, 16), 77)
    with capture_cross_attention(unet, factors={2}) as rec:
        run(unet, sample, context, added)
    assert rec.sums and all(rec.map_hw[k] == (8, 8) for k in rec.sums)


def test_peft_lora_layers_fire_under_capture():
    from peft import LoraConfig, inject_adapter_in_model

    unet = build_unet()
    sample, context, added = unet_inputs(1, (16, 16), 77)
    with capture_cross_attention(unet) as base:
        run(unet, sample, context, added)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    inject_adapter_in_model(config, unet)
    reference = run(unet, sample, context, added)
    with capture_cross_attention(unet) as lora:
        captured = run(unet, sample, context, added)
    assert torch.allclose(captured, reference, atol=1e-6)
    changed = [k for k in base.sums if not torch.allclose(base.sums[k], lora.sums[k], atol=1e-4)]
    assert changed, "LoRA on to_k/to_q must change the recorded maps"


def test_maps_equal_independent_softmax_of_q_and_k(unet):
    """Recompute one layer's head-mean probabilities from to_q/to_k outputs and compare pixel by pixel."""
    name = "up_blocks.0.attentions.0.transformer_blocks.0.attn2"
    attn = unet.get_submodule(name)
    seen = {}
    hooks = [
        attn.to_q.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        attn.to_k.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    sample, context, added = unet_inputs(2, (16, 24), 77)
    try:
        with capture_cross_attention(unet, layers=[name]) as rec:
            run(unet, sample, context, added)
    finally:
        for h in hooks:
            h.remove()
    q, k = seen["q"], seen["k"]  # (B, N, C), (B, T, C)
    b, n, c = q.shape
    q = q.view(b, n, attn.heads, c // attn.heads).transpose(1, 2)  # (B, heads, N, d)
    k = k.view(b, -1, attn.heads, c // attn.heads).transpose(1, 2)  # (B, heads, T, d)
    probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)  # (B, N, T)
    h, w = rec.map_hw[name]
    expected = probs.view(b, h, w, -1).permute(0, 3, 1, 2)  # (B, T, h, w), row-major pixels
    assert (h, w) == (4, 6)
    assert torch.allclose(rec.sums[name][:, 0], expected, atol=1e-5)
