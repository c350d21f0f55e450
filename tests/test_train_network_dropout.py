"""``[network] rank_dropout`` and ``module_dropout`` are sd-scripts' ``network_args`` of the same names.

Oracles:
- one layer: sd-scripts ``networks/lora.py`` ``LoRAModule.forward`` transcribed below
  (:func:`sd_scripts_forward`), with network dropout, the per-sample rank mask ``torch.rand((B, r)) > p``
  and its ``1 / (1 - p)``, and ``torch.rand(1) < p`` skipping the branch, drawing from the same torch
  seed in the same order; for DoRA, LoHa and LoKr, LyCORIS' ``return org_forward(x)`` on a skip, else
  the same layer without module dropout;
- the toy trainer's real optimizer step: which layers module dropout skipped, replayed from the loop's
  per-micro-step seed (:func:`sdxl_probe.train.lora.loop.draw_micro_batch`) and the layers' forward
  order recorded in a run without it; rank dropout zeroes whole columns of ``up``'s gradient (a rank
  dropped for every sample), which network dropout or no dropout never does; the run without
  checkpointing for the checkpointed one; the default run for rate 0 (``torch.equal``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from sdxl_probe.config import from_dict
from sdxl_probe.errors import ConfigError
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora import loop
from sdxl_probe.train.lora.config import NetworkSection, TrainConfig
from sdxl_probe.train.lora.network import ADAPTER, NetworkKind, inject_lora, is_adapter_param
from sdxl_probe.train.toy_recipe.data import step_rng

DIM, ALPHA = 4, 2.0
F = torch.nn.functional


# ----------------------------------------------------------------------------- one layer


def plain(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Linear or Conv2d through torch.nn.functional (no hooks)."""
    if isinstance(module, torch.nn.Linear):
        return F.linear(x, module.weight, module.bias)
    return F.conv2d(x, module.weight, module.bias, module.stride, module.padding)


def sd_scripts_forward(x, base, down, up, scale: float, *, dropout: float, rank_dropout: float,
                       module_dropout: float) -> torch.Tensor:  # fmt: skip
    """sd-scripts ``networks/lora.py`` ``LoRAModule.forward`` in training mode, multiplier 1, transcribed."""
    org = plain(base, x)
    if module_dropout and torch.rand(1) < module_dropout:
        return org
    lx = plain(down, x)
    if dropout:
        lx = F.dropout(lx, p=dropout)
    if rank_dropout:
        lora_dim = down.weight.shape[0]
        mask = torch.rand((lx.size(0), lora_dim), device=lx.device) > rank_dropout
        if lx.dim() == 3:
            mask = mask.unsqueeze(1)
        elif lx.dim() == 4:
            mask = mask.unsqueeze(-1).unsqueeze(-1)
        lx = lx * mask
        scale = scale * (1.0 / (1.0 - rank_dropout))
    return org + plain(up, lx) * scale


def layer_model(shape: str, **rates) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    if shape == "conv":
        model.proj = torch.nn.Conv2d(6, 5, 3, padding=1)
        inject_lora(
            model, [], dim=DIM, alpha=ALPHA, conv_targets=["proj"], conv_dim=DIM, conv_alpha=ALPHA, **rates
        )
    else:
        model.proj = torch.nn.Linear(16, 12)
        inject_lora(model, ["proj"], dim=DIM, alpha=ALPHA, **rates)
    with torch.no_grad():
        model.proj.lora_B[ADAPTER].weight.normal_()  # up starts at zero: make the branch visible
    return model


def layer_input(shape: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = {"rows": (3, 16), "tokens": (2, 5, 16), "conv": (2, 6, 7, 7)}[
        shape
    ]  # (B, C) (B, L, C) (B, C, H, W)
    return torch.randn(size, generator=g)


RATES = [{"dropout": 0.0, "rank_dropout": 0.5, "module_dropout": 0.0},
         {"dropout": 0.0, "rank_dropout": 0.0, "module_dropout": 0.4},
         {"dropout": 0.3, "rank_dropout": 0.5, "module_dropout": 0.4}]  # fmt: skip


@pytest.mark.parametrize("rates", RATES, ids=["rank", "module", "all_three"])
@pytest.mark.parametrize("shape", ["rows", "tokens", "conv"])
def test_layer_equals_sd_scripts_forward(shape, rates):
    """Oracle: :func:`sd_scripts_forward`, 16 calls after the same seed (skips, masks and kept branches)."""
    model = layer_model(shape, **rates).train()
    layer, x = model.proj, layer_input(shape)
    torch.manual_seed(11)
    got = [model.proj(x) for _ in range(16)]
    torch.manual_seed(11)
    with torch.no_grad():
        parts = (layer.base_layer, layer.lora_A[ADAPTER], layer.lora_B[ADAPTER])
        want = [sd_scripts_forward(x, *parts, ALPHA / DIM, **rates) for _ in range(16)]
        org = plain(layer.base_layer, x)
        full = org + plain(parts[2], plain(parts[1], x)) * (ALPHA / DIM)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    skipped = sum(torch.equal(w, org) for w in want)
    assert (0 < skipped < 16) == (rates["module_dropout"] > 0)  # both cases were drawn
    undropped = sum(torch.allclose(w, full) for w in want)
    assert undropped == (
        0 if rates["rank_dropout"] or rates["dropout"] else 16 - skipped
    )  # every call masked


@pytest.mark.parametrize("shape", ["rows", "tokens", "conv"])
def test_eval_mode_draws_nothing_and_drops_nothing(shape):
    """Oracle: W x + up(down(x)) * alpha / r, and the torch RNG state untouched."""
    model = layer_model(shape, dropout=0.3, rank_dropout=0.5, module_dropout=0.4).eval()
    layer, x = model.proj, layer_input(shape)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    got = [model.proj(x) for _ in range(4)]
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        want = (
            plain(layer.base_layer, x)
            + plain(layer.lora_B[ADAPTER], plain(layer.lora_A[ADAPTER], x)) * ALPHA / DIM
        )
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-6)


def test_weights_and_names_are_unchanged():
    """Oracle: the model injected with every rate 0 (the export and the resumable state read these)."""
    a = dict(layer_model("rows", dropout=0.3, rank_dropout=0.5, module_dropout=0.4).state_dict())
    b = dict(layer_model("rows", dropout=0.0).state_dict())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KINDS = {
    "dora": NetworkKind(use_dora=True),
    "loha": NetworkKind(type="loha"),
    "lokr": NetworkKind(type="lokr"),
}


@pytest.mark.parametrize("name", list(KINDS))
def test_module_dropout_returns_the_base_output_for_dora_loha_lokr(name):
    """Oracle: LyCORIS/sd-scripts ``return org_forward(x)`` when ``torch.rand(1) < p``, else the same
    layer without module dropout (a twin with the same weights, in eval mode: it draws nothing)."""

    def build(p: float) -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Module()
        model.proj = torch.nn.Linear(16, 12)
        inject_lora(model, ["proj"], dim=DIM, alpha=ALPHA, dropout=0.0, module_dropout=p, kind=KINDS[name])
        with torch.no_grad():
            for n, w in model.named_parameters():
                if is_adapter_param(n):
                    w.normal_(0, 0.5)  # every factor non-zero: the branch is visible
        return model

    model, twin = build(0.5).train(), build(0.0).eval()
    x = layer_input("tokens")
    torch.manual_seed(5)
    got = [model.proj(x) for _ in range(12)]
    torch.manual_seed(5)
    with torch.no_grad():
        org, full = model.proj.base_layer(x), twin.proj(x)
        want = []
        for _ in range(12):
            skip = bool(torch.rand(1) < 0.5)
            if not skip and name != "dora":
                torch.rand(1)  # peft's LoHa/LoKr forward draws its own module-dropout number (rate 0 here)
            want.append(org if skip else full)
    assert 0 < sum(w is org for w in want) < 12
    assert not torch.allclose(org, full)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("network, key", [({"type": "loha", "rank_dropout": 0.1}, "rank_dropout"),
                                          ({"type": "lokr", "rank_dropout": 0.1}, "rank_dropout"),
                                          ({"use_dora": True, "rank_dropout": 0.1}, "rank_dropout"),
                                          ({"module_dropout": 1.0}, "module_dropout")])  # fmt: skip
def test_unsupported_combinations_are_one_line_errors(network, key):
    """Oracle: LoHa/LoKr have no rank-r hidden; DoRA's norm pass would take the mask; rates are [0, 1)."""
    with pytest.raises(ConfigError) as e:
        from_dict(NetworkSection, network, where="t.toml")
    assert key in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the toy trainer


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("netdrop") / "ds"
    write_dataset(root, n=2, seed=5, size=32, trigger="zkw")
    return root


def step(tiny_components, ds: Path, out: Path, training: dict | None = None,
         **network) -> tuple[float, dict[str, dict[str, torch.Tensor]], list[str]]:  # fmt: skip
    """One real optimizer step (batch 2) on the tiny components; (loss, layer -> param -> grad, call order)."""
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2},
        "network": {"dim": DIM, "alpha": ALPHA, "target": "attn", "train_text_encoder_1": True, **network},
        "optimizer": {"unet_lr": 1e-3, "text_encoder_1_lr": 1e-3, "max_grad_norm": 0.0},
        "training": {"max_train_steps": 1, "seed": 7, "threads": 1, **(training or {})},
        "saving": {"output_dir": str(out), "output_name": "d"},
        "logging": {"progress_bar": False},
    })  # fmt: skip
    run = loop.setup(cfg, out, resume=False, log=lambda s: None, components=copy.deepcopy(tiny_components))
    grads: dict[str, dict[str, torch.Tensor]] = {}
    calls: list[str] = []
    for model_name in run.network.params:
        for name, layer in getattr(run.components, model_name).named_modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
            key = f"{model_name}.{name}"
            layer.register_forward_pre_hook(lambda *_, key=key: calls.append(key))
            for pn, p in layer.named_parameters():
                if is_adapter_param("." + pn):
                    p.register_post_accumulate_grad_hook(
                        lambda q, key=key, pn=pn: grads.setdefault(key, {}).__setitem__(pn, q.grad.clone())
                    )
    loss, _, _ = loop.optimizer_step(run, 0, 0)
    return loss, grads, calls


def test_module_dropout_skips_the_layers_the_seed_says(tiny_components, ds, tmp_path):
    """Oracle: the loop's seed for micro-step 0 replayed, one ``torch.rand(1) < p`` per layer call in the
    forward order of the run without module dropout; a layer skipped in every call gets no gradient."""
    p = 0.5
    loss0, grads0, order = step(tiny_components, ds, tmp_path / "a")
    loss, grads, _ = step(tiny_components, ds, tmp_path / "b", module_dropout=p)
    _, gen = step_rng(7, "lora", 0)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # as draw_micro_batch seeds it
    kept = {key for key in order if not torch.rand(1) < p}
    used = set(grads0)  # without it, every layer but TE1's last (its output is not read) gets a gradient
    assert used <= set(order) and len(used) > 30
    assert set(grads) == kept & used and 0 < len(kept & used) < len(used)
    for key in kept & used:  # lora_B starts at zero: its gradient is the visible one
        assert grads[key]["lora_B.default.weight"].abs().sum() > 0
    assert loss == loss0  # up starts at zero: the step's loss is the base model's in both runs


def test_module_dropout_near_one_leaves_every_layer_without_gradient(tiny_components, ds, tmp_path):
    """Oracle: p = 0.999 skips every one of the ~40 layer calls (each kept with probability 1e-3)."""
    _, grads, order = step(tiny_components, ds, tmp_path, module_dropout=0.999)
    assert order and grads == {}


def test_rank_dropout_zeroes_whole_ranks_and_rate_zero_is_the_default(tiny_components, ds, tmp_path):
    """Oracle: up's gradient is sum_tokens dL/dout x (mask * down(x))^T, so a rank dropped for both samples
    is a zero column of it; the default run and network dropout (a mask per token) have none; rate 0
    gives the default run's gradients bit for bit."""

    def zero_columns(grads) -> int:
        return sum(int((g["lora_B.default.weight"].abs().sum(0) == 0).sum()) for g in grads.values())

    _, default, _ = step(tiny_components, ds, tmp_path / "a")
    _, zero, _ = step(tiny_components, ds, tmp_path / "b", rank_dropout=0.0, module_dropout=0.0)
    _, ranked, _ = step(tiny_components, ds, tmp_path / "c", rank_dropout=0.5)
    _, dropped, _ = step(tiny_components, ds, tmp_path / "d", dropout=0.5)
    assert zero.keys() == default.keys()
    assert all(torch.equal(zero[k][n], default[k][n]) for k in default for n in default[k])
    assert zero_columns(default) == 0 and zero_columns(dropped) == 0
    layers = len(ranked)
    assert layers // 8 < zero_columns(ranked)  # P(a rank dropped for both samples) = 1/4; 4 ranks a layer
    assert any(not torch.allclose(ranked[k]["lora_B.default.weight"], default[k]["lora_B.default.weight"])
               for k in default)  # fmt: skip


def test_checkpointing_replays_the_same_drops(tiny_components, ds, tmp_path):
    """Oracle: the same step without gradient checkpointing (torch's checkpoint restores the RNG state
    before the recompute, so every skip and mask is drawn again the same)."""
    rates = {"dropout": 0.2, "rank_dropout": 0.5, "module_dropout": 0.3}
    _, plain_grads, calls = step(tiny_components, ds, tmp_path / "a", **rates)
    _, gc_grads, gc_calls = step(tiny_components, ds, tmp_path / "b", training={"gradient_checkpointing": True},
                                 **rates)  # fmt: skip
    assert len(gc_calls) > len(calls)  # the recompute really ran the layers again
    assert plain_grads.keys() == gc_grads.keys() and plain_grads
    for k in plain_grads:
        for n in plain_grads[k]:
            torch.testing.assert_close(gc_grads[k][n], plain_grads[k][n], rtol=1e-5, atol=1e-7)
