"""Network types (LoRA, rsLoRA, DoRA, LoHa, LoKr) train, export in kohya/LyCORIS form, reload, and match.

Oracles:
- round trip: the trainer's in-memory model (peft's own layers) against the file reloaded into fresh toy
  components by the project's one loader (diffusers' ``load_lora_weights`` route for LoRA/rsLoRA, the
  own route for DoRA/LoHa/LoKr), within 1e-4;
- tensors: the upstream formulas, written here from the file's tensors: LoRA ``W + alpha/r up@down``
  (sd-scripts ``LoRAModule``), rsLoRA ``alpha/sqrt(r)`` (Kalajdzievski 2023), DoRA
  ``(W + dW) * m / ||W + dW||_row`` (LyCORIS ``apply_weight_decompose`` with ``wd_on_out``), LoHa
  ``(w1a@w1b) * (w2a@w2b) * alpha/r`` and LoKr ``kron(w1, w2) * alpha/r`` (ComfyUI ``LoHaAdapter`` /
  ``LoKrAdapter``), LoKr factor shapes from LyCORIS ``factorization`` worked by hand;
- names: ComfyUI's kohya mapping (``lora_unet_`` + each SAI UNet weight path, ``lora_te1_text_model_...``).
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdxl_probe.config import from_dict
from sdxl_probe.errors import ConfigError
from sdxl_probe.models.ldm_names import SAI_PREFIXES, unet_entries
from sdxl_probe.models.load import load_components
from sdxl_probe.pipeline.lora import lora_loaded
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora.config import NetworkSection, TrainConfig
from sdxl_probe.train.lora.export import lora_tensors
from sdxl_probe.train.lora.loop import train
from sdxl_probe.train.lora.network import network_from_config

DIM, ALPHA = 4, 2.0  # alpha != dim: a reader that takes alpha = rank is off by 2x
CASES = {
    "lora": {"target": "transformer"},
    "rslora": {"target": "transformer", "use_rslora": True},
    "dora": {"target": "full", "use_dora": True},
    "loha": {"target": "full", "type": "loha"},
    "lokr": {"target": "full", "type": "lokr", "factor": 4},
}
SUFFIXES = {
    "lora": {"lora_down.weight", "lora_up.weight", "alpha"},
    "rslora": {"lora_down.weight", "lora_up.weight", "alpha"},
    "dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
}
LINEAR = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # (64, 64) in the toy UNet
CONV = "down_blocks.1.resnets.0.conv1"  # 3x3, 32 -> 64


def quiet_toy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_components("toy", dtype=torch.float32)


def config(tmp, name: str, **network) -> TrainConfig:
    return from_dict(TrainConfig, {
        "dataset": {"path": str(tmp / "ds"), "caption_extension": ".txt", "resolution": 64, "batch_size": 2},
        "network": {"dim": DIM, "alpha": ALPHA, "conv_dim": 2, "conv_alpha": 1.0, "train_text_encoder_1": True,
                    **network},
        "optimizer": {"unet_lr": 1e-2, "text_encoder_1_lr": 1e-2},
        "training": {"max_train_steps": 3, "seed": 1},
        "saving": {"output_dir": str(tmp / name), "output_name": name},
        "logging": {"progress_bar": False},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each network type after 3 steps (batch 2) on UNet and TE1 of the toy model, and its kohya file."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("networks")
    write_dataset(tmp / "ds", n=2, seed=0, concept="pink", trigger="zkw")
    out = {}
    for name, network in CASES.items():
        components = quiet_toy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = train(config(tmp, name, **network), tmp / name, components=components, log=lambda s: None)
        for _, m in components.models():
            m.eval()
        out[name] = (components, path)
    return out


def outputs(components) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet noise prediction and TE1 hidden states on fixed random inputs (shapes from the configs)."""
    u = components.unet.config
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, u.in_channels, 8, 8, generator=g)
    text = torch.randn(1, components.tokenizer.model_max_length, u.cross_attention_dim, generator=g)
    pooled = u.projection_class_embeddings_input_dim - 6 * u.addition_time_embed_dim  # 6 SDXL time ids
    added = {"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    ids = torch.randint(0, components.text_encoder.config.vocab_size, (1, 16), generator=g)
    with torch.no_grad():
        eps = components.unet(latents, torch.tensor([500]), text, added_cond_kwargs=added).sample
        hidden = components.text_encoder(ids).last_hidden_state
    return eps, hidden


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_file_reloads_to_the_in_memory_output(trained, name):
    """Oracle: the trained model in memory; the file goes through ``lora_loaded`` into fresh components."""
    components, path = trained[name]
    want_eps, want_hidden = outputs(components)
    fresh = quiet_toy()
    base_eps, base_hidden = outputs(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with lora_loaded(fresh, path) as loaded:
            got_eps, got_hidden = outputs(fresh)
    assert sorted(loaded) == ["text_encoder", "unet"]
    assert (want_eps - base_eps).abs().max() > 1e-3 and (want_hidden - base_hidden).abs().max() > 1e-3
    assert (got_eps - want_eps).abs().max() < 1e-4
    assert (got_hidden - want_hidden).abs().max() < 1e-4
    after_eps, _ = outputs(fresh)
    assert torch.equal(after_eps, base_eps)  # unloaded on exit


def comfy_names(components) -> set[str]:
    """Module names ComfyUI's kohya mapping (``model_lora_keys_unet`` / ``model_lora_keys_clip``) knows."""
    names = set()
    plain = [k.replace(".base_layer.", ".") for k in quiet_toy().unet.state_dict()]
    for e in unet_entries(plain, components.unet.config):
        if e.key.endswith(".weight"):
            names.add("lora_unet_" + e.key.removeprefix(SAI_PREFIXES["unet"]).removesuffix(".weight").replace(".", "_"))
    leaves = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
    for b in range(components.text_encoder.config.num_hidden_layers):
        names |= {f"lora_te1_text_model_encoder_layers_{b}_{leaf}" for leaf in leaves}
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_keys_follow_comfyui_names_and_lycoris_suffixes(trained, name):
    components, path = trained[name]
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    by_module: dict[str, set[str]] = {}
    for k in keys:
        module, _, suffix = k.partition(".")
        by_module.setdefault(module, set()).add(suffix)
    assert set(by_module) <= comfy_names(components), sorted(set(by_module) - comfy_names(components))[:3]
    assert {m.split("_")[1] for m in by_module} == {"unet", "te1"}
    for suffixes in by_module.values():
        if name == "lokr":  # each factor full or low-rank: lokr_w1 | lokr_w1_a + _b, same for w2
            assert "alpha" in suffixes and ({"lokr_w1"} <= suffixes) != ({"lokr_w1_a", "lokr_w1_b"} <= suffixes)
            assert ({"lokr_w2"} <= suffixes) != ({"lokr_w2_a", "lokr_w2_b"} <= suffixes)
        else:
            assert suffixes == SUFFIXES[name]
    expected_module = "networks.lora" if name in ("lora", "rslora") else "lycoris.kohya"
    assert meta["ss_network_module"] == expected_module
    if expected_module == "lycoris.kohya":
        args = __import__("json").loads(meta["ss_network_args"])
        assert args["algo"] == ("lora" if name == "dora" else name)


def effective(module: torch.nn.Module, conv: bool) -> torch.Tensor:
    """The weight a layer acts with, read off its outputs (``f(e_i) - f(0)`` per input unit)."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    with torch.no_grad():
        if not conv:
            eye = torch.eye(base.in_features)
            return (module(eye) - module(torch.zeros(1, base.in_features))).T
        c_in, (kh, kw) = base.in_channels, base.kernel_size
        probe = torch.zeros(c_in * kh * kw, c_in, kh, kw)  # one delta per (input channel, tap), padding 1
        probe.view(c_in * kh * kw, -1)[torch.arange(c_in * kh * kw), torch.arange(c_in * kh * kw)] = 1
        out = module(probe) - module(torch.zeros(1, c_in, kh, kw))  # (c_in*k*k, out, kh, kw)
        centre = out[:, :, kh // 2, kw // 2]  # cross-correlation: the centre output reads W[o, c, i, j]
        return centre.T.reshape(-1, c_in, kh, kw)


def formula_delta(name: str, t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The weight after the adapter, from the file's tensors by the upstream formula (see module docstring)."""
    shape = weight.shape
    if name == "loha":
        r = t["hada_w1_b"].shape[0]
        dw = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * float(t["alpha"]) / r
        return weight + dw.reshape(shape)
    if name == "lokr":
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        dims = [t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t]
        scale = float(t["alpha"]) / dims[-1] if dims else 1.0
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return weight + (torch.kron(w1, w2) * scale).reshape(shape)
    down, up = t["lora_down.weight"].flatten(1), t["lora_up.weight"].flatten(1)
    merged = weight + (up @ down * float(t["alpha"]) / down.shape[0]).reshape(shape)
    if "dora_scale" in t:
        norm = merged.reshape(shape[0], -1).norm(dim=1).reshape(shape[0], *[1] * (len(shape) - 1))
        merged = merged * t["dora_scale"] / norm
    return merged


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dora", "loha", "lokr", "rslora"])
def test_loaded_layers_act_as_the_upstream_formula(trained, name):
    components, path = trained[name]
    tensors = load_file(str(path))
    fresh = quiet_toy()
    targets = [(LINEAR, False)] + ([(CONV, True)] if CASES[name]["target"] == "full" else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with lora_loaded(fresh, path):
            for path_in_unet, conv in targets:
                kohya = "lora_unet_" + unet_entries([path_in_unet + ".weight"], fresh.unet.config)[0].key.removeprefix(
                    SAI_PREFIXES["unet"]).removesuffix(".weight").replace(".", "_")  # fmt: skip
                t = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == kohya}
                module = fresh.unet.get_submodule(path_in_unet)
                want = formula_delta(name, t, module.get_base_layer().weight.detach())
                got = effective(module, conv)
                assert (got - module.get_base_layer().weight).abs().max() > 1e-5  # the adapter acts
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    if name == "rslora":
        alphas = [float(v) for k, v in tensors.items() if k.endswith(".alpha")]
        assert alphas and all(a == pytest.approx(ALPHA * math.sqrt(DIM)) for a in alphas)  # scale folded in


def factorization(dimension: int, factor: int) -> tuple[int, int]:
    """LyCORIS ``factorization`` for a divisor ``factor`` (the branch this test uses), worked out by hand."""
    assert dimension % factor == 0
    return tuple(sorted((factor, dimension // factor)))


def build(n: dict, components=None):
    components = components or quiet_toy()
    section = from_dict(NetworkSection, {"dim": DIM, "alpha": ALPHA, **n})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = network_from_config(components, section, seed=0, log=lambda s: None)
    models = {m: getattr(components, m) for m in network.params}
    return components, network, lora_tensors(models, components.unet.config)


def test_type_options_change_the_state_dict():
    """rsLoRA: alpha*sqrt(r); DoRA: dora_scale = row norms of W (peft's init); LoKr factor/decompose_both: shapes."""
    _, _, plain = build({})
    _, _, rs = build({"use_rslora": True})
    q = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"
    assert float(plain[f"{q}.alpha"]) == ALPHA and float(rs[f"{q}.alpha"]) == pytest.approx(ALPHA * math.sqrt(DIM))
    comps, _, dora = build({"use_dora": True})
    w = comps.unet.get_submodule(LINEAR).get_base_layer().weight
    torch.testing.assert_close(dora[f"{q}.dora_scale"], w.norm(dim=1, keepdim=True))
    _, _, lokr4 = build({"type": "lokr", "factor": 4})
    out_l, out_k = factorization(64, 4)
    in_m, in_n = factorization(64, 4)
    assert tuple(lokr4[f"{q}.lokr_w1"].shape) == (out_l, in_m)  # (4, 4); w2 (16, 16) is low-rank at r=4 < 16/2
    assert tuple(lokr4[f"{q}.lokr_w2_a"].shape) == (out_k, DIM) and tuple(lokr4[f"{q}.lokr_w2_b"].shape) == (DIM, in_n)
    _, _, lokr_both = build({"type": "lokr", "factor": 4, "decompose_both": True, "dim": 1})
    assert f"{q}.lokr_w1_a" in lokr_both and f"{q}.lokr_w1" not in lokr_both  # r=1 < 4/2: w1 low-rank too
    comps, network, loha = build({"type": "loha"})
    assert tuple(loha[f"{q}.hada_w1_a"].shape) == (64, DIM) and tuple(loha[f"{q}.hada_w2_b"].shape) == (DIM, 64)
    state = network.state_module({"unet": comps.unet}).state_dict()  # the resumable state holds every factor
    assert len(state) == len(network.all_params()) == 4 * len([k for k in loha if k.endswith(".alpha")])


def sd_scripts_block(kohya: str) -> int:
    """sd-scripts ``get_block_index(is_sdxl=True)`` read off the name by a regex (independent of blocks.py)."""
    m = re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_", kohya)
    return {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}[m.group(1)] + int(m.group(2))


def ranks_of(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k.removesuffix(".lora_down.weight"): v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")}


def test_block_dims_and_alphas_set_each_blocks_rank():
    """Per module rank/alpha = (conv_)block_dims/(conv_)block_alphas at its sd-scripts block; dim 0: no module."""
    dims = [b % 3 + 1 for b in range(23)]
    dims[4] = 0  # input_blocks_3: the toy's only attention in the down path
    alphas = [float(b + 1) for b in range(23)]
    conv_dims = [2] * 23
    conv_dims[10] = 5
    conv_alphas = [0.5 * (b + 1) for b in range(23)]
    _, _, t = build({"target": "full", "block_dims": dims, "block_alphas": alphas, "conv_block_dims": conv_dims,
                     "conv_block_alphas": conv_alphas})  # fmt: skip
    ranks = ranks_of(t)
    seen = set()
    for name, r in ranks.items():
        if not name.startswith("lora_unet_"):
            assert r == DIM  # text encoders are outside the blocks
            continue
        b = sd_scripts_block(name)
        conv = t[f"{name}.lora_down.weight"].dim() == 4 and t[f"{name}.lora_down.weight"].shape[-1] == 3
        assert r == (conv_dims[b] if conv else dims[b]), name
        assert float(t[f"{name}.alpha"]) == (conv_alphas[b] if conv else alphas[b]), name
        seen.add((b, conv))
    assert (4, True) in seen and (4, False) not in seen  # block 4: dim 0 drops its Linears, not its 3x3 convs
    assert {(2, False), (10, True), (11, False), (13, True), (15, False)} <= seen  # down, mid and up blocks


def test_lr_weights_scale_each_blocks_learning_rate():
    """Optimizer group lr = unet_lr x weight of its block (sd-scripts ``get_block_lr_weight``); weight 0: no module."""
    from sdxl_probe.train.lora.loop import _param_groups

    down = [0.1 * (i + 1) for i in range(9)]
    down[2] = 0.0  # input_blocks_2: the toy's first downsampler
    mid, up = [0.5, 0.25, 2.0], [1.5] * 9
    n = {"target": "full", "down_lr_weight": down, "mid_lr_weight": mid, "up_lr_weight": up}
    comps, network, t = build(n)
    cfg = from_dict(TrainConfig, {"dataset": {"path": "x"}, "network": {"dim": DIM, "alpha": ALPHA, **n},
                                  "optimizer": {"unet_lr": 1e-3}})  # fmt: skip
    groups = _param_groups(cfg, network)
    weight = [1.0] + down + mid + up + [1.0]
    covered = 0
    for g in groups:
        b = int(g["name"].removeprefix("unet_block"))
        assert g["lr"] == pytest.approx(1e-3 * weight[b])
        covered += len(g["params"])
    assert covered == len(network.params["unet"])
    assert {int(g["name"][-2:]) for g in groups} >= {2, 4, 10, 11, 12, 13, 15}
    assert not any(k.startswith("lora_unet_input_blocks_2_") for k in t)  # weight 0: no module


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_network_weights_start_from_the_file(trained, name):
    """The built network's export equals the file it started from (inverse of the export, bit for bit)."""
    _, path = trained[name]
    _, _, t = build({**CASES[name], "train_text_encoder_1": True, "conv_dim": 2, "conv_alpha": 1.0,
                     "network_weights": str(path)})  # fmt: skip
    got = load_file(str(path))
    assert set(t) == set(got)
    for k, v in got.items():
        torch.testing.assert_close(t[k], v, atol=0, rtol=1e-6)


@pytest.mark.slow
def test_network_weights_that_do_not_fit_are_one_line_errors(trained):
    _, path = trained["lora"]
    with pytest.raises(ConfigError, match=r"lora_down.weight has shape .*set the dims") as e:
        build({"target": "transformer", "dim": 8, "train_text_encoder_1": True, "network_weights": str(path)})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"keys do not match the configured network \(\d+ missing"):
        build({"type": "loha", "target": "transformer", "train_text_encoder_1": True, "network_weights": str(path)})
    with pytest.raises(ConfigError, match="file not found"):
        build({"network_weights": str(path) + ".nope"})


@pytest.mark.parametrize(("network", "pattern"), [
    ({"type": "lokrr"}, r"type = 'lokrr': unknown network; did you mean 'lokr'\?"),
    ({"type": "lycoris"}, r"unknown network; .*one of lora, loha, lokr"),
    ({"block_dims": [4] * 22}, r"block_dims has 22 values; expected 23, one per SDXL block \(0 emb, 1-9 input"),
    ({"conv_block_alphas": [1.0] * 24, "target": "full"}, r"conv_block_alphas has 24 values; expected 23"),
    ({"down_lr_weight": [1.0] * 8}, r"down_lr_weight has 8 values; expected 9 for SDXL"),
    ({"mid_lr_weight": [1.0] * 9}, r"mid_lr_weight has 9 values; expected 3"),
    ({"use_dora": True, "type": "loha"}, r"use_dora does not apply to type = 'loha'"),
    ({"factor": 4}, r"factor does not apply to type = 'lora'"),
    ({"dropout": 0.1, "type": "lokr"}, r"dropout does not apply to type = 'lokr'"),
    ({"dropout": 0.1, "use_dora": True}, r"dropout with use_dora: peft's DoRA computes its weight norm"),
    ({"conv_block_dims": [1] * 23}, r'conv_block_dims/conv_block_alphas need target = "full"'),
])  # fmt: skip
def test_bad_network_settings_are_one_line_errors(network, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        from_dict(TrainConfig, {"dataset": {"path": "x"}, "network": network}, where="run.toml")
    assert "\n" not in str(e.value)


def test_cli_names_a_wrong_block_list_in_one_line(tmp_path):
    """Through ``sdxl-probe train``: the error surfaces before any model loads (ProbeApp: exit 2, one line)."""
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.errors import ProbeError

    path = tmp_path / "run.toml"
    path.write_text(f'[dataset]\npath = "{tmp_path}"\n[network]\nup_lr_weight = [1.0, 1.0]\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert isinstance(result.exception, ProbeError)
    assert "up_lr_weight has 2 values; expected 9" in str(result.exception) and "\n" not in str(result.exception)

