"""``[network] dropout`` is sd-scripts' ``network_dropout``: on the rank-r hidden, in training mode only.

Oracle: a hand computation of sd-scripts' ``LoRAModule.forward``,
``W x + b + up(mask * down(x) / (1 - p)) * alpha / r``, with the Bernoulli(1 - p) mask drawn from the
same torch seed (on the CPU ``torch.nn.functional.dropout`` draws ``bernoulli_(1 - p)`` over its
input's shape); peft's own ``lora_dropout`` (a mask over the input x) is shown to give another number.
"""

from __future__ import annotations

import pytest
import torch

from sdxl_probe.train.lora.network import ADAPTER, inject_lora

DIM, ALPHA, P = 4, 2.0, 0.5


def lora_model(kind: str, dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    if kind == "linear":
        model.proj = torch.nn.Linear(16, 12)
        inject_lora(model, ["proj"], dim=DIM, alpha=ALPHA, dropout=dropout)
    else:
        model.proj = torch.nn.Conv2d(6, 5, 3, padding=1)
        inject_lora(model, [], dim=DIM, alpha=ALPHA, dropout=dropout, conv_targets=["proj"], conv_dim=DIM,
                    conv_alpha=ALPHA)  # fmt: skip
    with torch.no_grad():
        model.proj.lora_B[ADAPTER].weight.normal_()  # up starts at zero: make the branch visible
    return model


def parts(model: torch.nn.Module):
    layer = model.proj
    return layer.base_layer, layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]


def plain(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Linear or Conv2d applied through torch.nn.functional (no hooks: the oracle's own down/up)."""
    F = torch.nn.functional
    if isinstance(module, torch.nn.Linear):
        return F.linear(x, module.weight, module.bias)
    return F.conv2d(x, module.weight, module.bias, module.stride, module.padding)


def inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn((3, 16) if kind == "linear" else (2, 6, 7, 7), generator=g)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dropout_masks_the_rank_r_hidden_as_sd_scripts(kind):
    """Oracle: W x + up(mask * down(x) / (1 - p)) * alpha / r, mask ~ Bernoulli(1 - p) from the same seed."""
    model = lora_model(kind, P).train()
    base, down, up = parts(model)
    x = inputs(kind)
    torch.manual_seed(7)
    got = model.proj(x)
    with torch.no_grad():
        hidden = plain(down, x)  # (B, r) or (B, r, H, W)
        torch.manual_seed(7)
        mask = torch.empty_like(hidden).bernoulli_(1 - P)
        expected = plain(base, x) + plain(up, mask * hidden / (1 - P)) * (ALPHA / DIM)
        torch.manual_seed(7)
        x_mask = torch.empty_like(x).bernoulli_(1 - P)
        peft_way = plain(base, x) + plain(up, plain(down, x * x_mask / (1 - P))) * (ALPHA / DIM)  # peft's way
    assert 0 < mask.mean() < 1
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, peft_way, atol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_eval_mode_has_no_dropout(kind):
    """Oracle: W x + up(down(x)) * alpha / r, whatever the torch seed."""
    model = lora_model(kind, P).eval()
    base, down, up = parts(model)
    x = inputs(kind)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(model.proj(x))
    with torch.no_grad():
        expected = plain(base, x) + plain(up, plain(down, x)) * (ALPHA / DIM)
    torch.testing.assert_close(outs[0], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(outs[0], outs[1])


def test_dropout_leaves_the_weights_and_their_names_as_without_it():
    """Oracle: the model injected with dropout 0 (export and resumable state read these names)."""
    with_dropout, without = lora_model("linear", P), lora_model("linear", 0.0)
    a, b = dict(with_dropout.named_parameters()), dict(without.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(with_dropout.proj.lora_dropout[ADAPTER], torch.nn.Identity)  # peft drops nothing itself
