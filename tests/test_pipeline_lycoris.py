"""Hand-written LoHa, LoKr and DoRA kohya files load through ``lora_loaded`` and act as ComfyUI computes them.

Oracle: the formulas of ComfyUI's ``weight_adapter`` (``LoHaAdapter``: ``(w1a@w1b) * (w2a@w2b) * alpha/r``;
``LoKrAdapter``: ``kron(w1, w2) * alpha/r`` with ``r`` from the low-rank factor, scale 1 when both factors
are full; DoRA on the output axis as LyCORIS ``apply_weight_decompose``: ``(W + dW) * m / ||W + dW||_row``)
applied by hand to each module's stored weight. The files are written by hand with sd-scripts' key names
(``lora_unet_`` + the SAI path, ``lora_te1_text_model_...``), with factor shapes peft would not choose itself.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.models.ldm_names import _unet_prefixes
from sdxl_probe.pipeline.lora import lora_loaded, loras_loaded

UNET_LINEAR = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"  # (64, 96)
UNET_CONV = "down_blocks.1.resnets.0.conv1"  # (64, 32, 3, 3)
TE1 = "encoder.layers.0.self_attn.q_proj"  # (32, 32)
TE2 = "text_model.encoder.layers.1.mlp.fc1"  # (128, 64)


def name_of(components, model: str, path: str) -> str:
    if model == "unet":
        for diffusers_prefix, ldm_prefix, _ in _unet_prefixes(components.unet.config):
            if path.startswith(diffusers_prefix):
                rest = path[len(diffusers_prefix):]
                if ".resnets." in path:  # ldm ResBlock: in_layers = [GroupNorm, SiLU, conv] (conv1 is index 2)
                    rest = rest.replace("conv1", "in_layers.2")
                return "lora_unet_" + (ldm_prefix + rest).replace(".", "_")
        raise AssertionError(path)
    prefix = "lora_te1_" if model == "text_encoder" else "lora_te2_"
    return prefix + ("" if path.startswith("text_model.") else "text_model_") + path.replace(".", "_")


@pytest.fixture()
def components(tiny_components):
    return copy.deepcopy(tiny_components)


def rand(*shape, gen):
    return torch.randn(*shape, generator=gen) * 0.3


def effective(module: torch.nn.Module) -> torch.Tensor:
    """The weight a Linear or 3x3 conv (padding 1) acts with, read off its outputs."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    with torch.no_grad():
        if isinstance(base, torch.nn.Linear):
            return (module(torch.eye(base.in_features)) - module(torch.zeros(1, base.in_features))).T
        c, (kh, kw) = base.in_channels, base.kernel_size
        probe = torch.eye(c * kh * kw).reshape(-1, c, kh, kw)  # one unit per (channel, tap)
        out = module(probe) - module(torch.zeros(1, c, kh, kw))
        return out[:, :, kh // 2, kw // 2].T.reshape(-1, c, kh, kw)  # the centre output reads W[o, c, i, j]


def loha_file(components, path, gen, targets) -> dict:
    tensors, expected = {}, {}
    for model, p in targets:
        w = getattr(components, model).get_submodule(p).weight.detach()
        r, alpha = 3, 1.5
        t = {"hada_w1_a": rand(w.shape[0], r, gen=gen), "hada_w1_b": rand(r, w[0].numel(), gen=gen),
             "hada_w2_a": rand(w.shape[0], r, gen=gen), "hada_w2_b": rand(r, w[0].numel(), gen=gen)}  # fmt: skip
        dw = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * alpha / r
        expected[(model, p)] = dw.reshape(w.shape)
        tensors |= {f"{name_of(components, model, p)}.{k}": v for k, v in (t | {"alpha": torch.tensor(alpha)}).items()}
    save_file(tensors, str(path))
    return expected


def test_loha_acts_as_comfyui_formula_scales_and_unloads(components, tmp_path):
    targets = [("unet", UNET_LINEAR), ("unet", UNET_CONV), ("text_encoder", TE1), ("text_encoder_2", TE2)]
    before = {t: getattr(components, t[0]).get_submodule(t[1]).weight.detach().clone() for t in targets}
    deltas = loha_file(components, tmp_path / "loha.safetensors", torch.Generator().manual_seed(0), targets)
    for weight in (1.0, 0.5):
        with lora_loaded(components, tmp_path / "loha.safetensors", weight=weight) as loaded:
            assert sorted(loaded) == ["text_encoder", "text_encoder_2", "unet"]
            for (model, p), dw in deltas.items():
                got = effective(getattr(components, model).get_submodule(p))
                torch.testing.assert_close(got, before[(model, p)] + weight * dw, atol=1e-5, rtol=1e-4)
    for model, p in targets:
        module = getattr(components, model).get_submodule(p)
        assert type(module) in (torch.nn.Linear, torch.nn.Conv2d) and torch.equal(module.weight, before[(model, p)])


@pytest.mark.parametrize("layout", ["both_full", "w2_low_rank", "both_low_rank"])
def test_lokr_acts_as_comfyui_formula(components, tmp_path, layout):
    """(64, 96) Linear as kron((2, 8), (32, 12)): a split peft's balanced factorization would not pick."""
    gen = torch.Generator().manual_seed(1)
    module = components.unet.get_submodule(UNET_LINEAR)
    w = module.weight.detach().clone()
    r, alpha = 2, 3.0
    t = {"alpha": torch.tensor(alpha)}
    if layout == "both_low_rank":
        t |= {"lokr_w1_a": rand(2, r, gen=gen), "lokr_w1_b": rand(r, 8, gen=gen)}
    else:
        t["lokr_w1"] = rand(2, 8, gen=gen)
    if layout == "both_full":
        t["lokr_w2"] = rand(32, 12, gen=gen)
    else:
        t |= {"lokr_w2_a": rand(32, r, gen=gen), "lokr_w2_b": rand(r, 12, gen=gen)}
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
    scale = 1.0 if layout == "both_full" else alpha / r  # ComfyUI: alpha ignored without a low-rank factor
    name = name_of(components, "unet", UNET_LINEAR)
    save_file({f"{name}.{k}": v for k, v in t.items()}, str(tmp_path / "lokr.safetensors"))
    with lora_loaded(components, tmp_path / "lokr.safetensors"):
        got = effective(components.unet.get_submodule(UNET_LINEAR))
    torch.testing.assert_close(got, w + torch.kron(w1, w2) * scale, atol=1e-5, rtol=1e-4)


def test_lokr_conv_with_a_4d_right_factor(components, tmp_path):
    """ComfyUI unsqueezes w1 to (a, b, 1, 1) before ``kron`` with a (c, d, 3, 3) w2."""
    gen = torch.Generator().manual_seed(2)
    w = components.unet.get_submodule(UNET_CONV).weight.detach().clone()  # (64, 32, 3, 3)
    w1, w2 = rand(4, 2, gen=gen), rand(16, 16, 3, 3, gen=gen)
    name = name_of(components, "unet", UNET_CONV)
    save_file({f"{name}.lokr_w1": w1, f"{name}.lokr_w2": w2, f"{name}.alpha": torch.tensor(7.0)},
              str(tmp_path / "lokr.safetensors"))  # fmt: skip
    with lora_loaded(components, tmp_path / "lokr.safetensors"):
        got = effective(components.unet.get_submodule(UNET_CONV))
    torch.testing.assert_close(got, w + torch.kron(w1[:, :, None, None], w2), atol=1e-5, rtol=1e-4)


def test_dora_on_the_output_axis_acts_as_lycoris(components, tmp_path):
    gen = torch.Generator().manual_seed(3)
    module = components.text_encoder.get_submodule(TE1)
    w = module.weight.detach().clone()
    r, alpha = 2, 1.0
    down, up, m = rand(r, 32, gen=gen), rand(32, r, gen=gen), torch.rand(32, 1, generator=gen) + 0.5
    name = name_of(components, "text_encoder", TE1)
    more = {f"{name_of(components, 'text_encoder', TE1.replace('q_proj', 'out_proj'))}.{k}": v for k, v in
            {"lora_down.weight": rand(r, 32, gen=gen), "lora_up.weight": rand(32, r, gen=gen),
             "alpha": torch.tensor(alpha), "dora_scale": torch.ones(32, 1)}.items()}  # fmt: skip
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(alpha),
               f"{name}.dora_scale": m, **more}, str(tmp_path / "dora.safetensors"))  # fmt: skip
    merged = w + alpha / r * up @ down
    want = merged * m / merged.norm(dim=1, keepdim=True)
    with lora_loaded(components, tmp_path / "dora.safetensors"):
        got = effective(components.text_encoder.get_submodule(TE1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_two_lycoris_files_add_their_weighted_deltas(components, tmp_path):
    gen = torch.Generator().manual_seed(4)
    a = loha_file(components, tmp_path / "a.safetensors", gen, [("unet", UNET_LINEAR)])
    b = loha_file(components, tmp_path / "b.safetensors", gen, [("text_encoder", TE1)])
    before = {k: getattr(components, k[0]).get_submodule(k[1]).weight.detach().clone() for k in (*a, *b)}
    with loras_loaded(components, [(tmp_path / "a.safetensors", 0.5), (tmp_path / "b.safetensors", 2.0)]):
        for deltas, weight in ((a, 0.5), (b, 2.0)):
            for (model, p), dw in deltas.items():
                got = effective(getattr(components, model).get_submodule(p))
                torch.testing.assert_close(got, before[(model, p)] + weight * dw, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("tensors", "pattern"), [
    ({"lora_unet_input_blocks_4_1_proj_in.hada_t1": torch.zeros(1)}, "use_tucker"),
    ({"lora_unet_no_such_module.hada_w1_a": torch.zeros(1)}, "lora_unet_no_such_module is not in this model"),
])  # fmt: skip
def test_unreadable_lycoris_files_are_one_line_errors(components, tmp_path, tensors, pattern):
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match=pattern) as e:
        with lora_loaded(components, tmp_path / "bad.safetensors"):
            pass
    assert "\n" not in str(e.value)


def test_input_axis_dora_is_refused_and_leaves_no_layers(components, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    name = name_of(components, "unet", UNET_LINEAR)
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 96), f"{name}.lora_up.weight": torch.zeros(64, 2),
               f"{name}.alpha": torch.tensor(1.0), f"{name}.dora_scale": torch.ones(1, 96)},
              str(tmp_path / "dora_in.safetensors"))  # fmt: skip
    with pytest.raises(ModelLoadError, match="input axis"):
        with lora_loaded(components, tmp_path / "dora_in.safetensors"):
            pass
    assert not any(isinstance(m, BaseTunerLayer) for m in components.unet.modules())


def test_dora_on_only_some_modules_of_a_model_is_refused(components, tmp_path):
    """One peft config per model: a module without ``dora_scale`` would get peft's DoRA magnitude init."""
    te1, te1_out = name_of(components, "text_encoder", TE1), name_of(components, "text_encoder", TE1.replace("q_", "out_"))
    lora = {"lora_down.weight": torch.zeros(2, 32), "lora_up.weight": torch.zeros(32, 2), "alpha": torch.tensor(1.0)}
    tensors = {f"{te1}.{k}": v for k, v in lora.items()} | {f"{te1_out}.{k}": v.clone() for k, v in lora.items()}
    save_file(tensors | {f"{te1}.dora_scale": torch.ones(32, 1)}, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(ModelLoadError, match="DoRA on some modules"):
        with lora_loaded(components, tmp_path / "mixed.safetensors"):
            pass
