"""LoRA files in kohya and SGM naming load through the pipeline, act as ``W + alpha/r * up @ down``, and unload.

Oracle: the LoRA formula itself (Hu et al. 2021, scaled by ``alpha / rank`` as sd-scripts' ``LoRAModule``),
applied by hand to each targeted Linear's stored weight; the file is written by hand with the key names
sd-scripts' ``create_network`` gives SDXL modules (``lora_unet_``/``lora_te1_``/``lora_te2_`` + the module
path with dots as underscores; the UNet path in SAI/SGM ``input_blocks`` form or in diffusers form).
"""

from __future__ import annotations

import copy

import pytest
import torch

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.models.ldm_names import _unet_prefixes
from sdxl_probe.pipeline.lora import lora_loaded

RANK, ALPHA = 2, 1.0  # alpha != rank, so a loader that ignores .alpha fails

# (model, diffusers module path) of the layers the hand-made file targets.
TARGETS = [
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
    ("unet", "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"),
    ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.2"),
    ("text_encoder", "encoder.layers.0.self_attn.q_proj"),
    # sd-scripts targets every Linear of CLIPAttention, so real files always carry out_proj; diffusers'
    # converter needs it to tell the old text-encoder format apart (a q-only TE file is not inferable).
    ("text_encoder", "encoder.layers.0.self_attn.out_proj"),
    ("text_encoder_2", "text_model.encoder.layers.1.mlp.fc1"),
]


def sgm_path(unet_config, path: str) -> str:
    """The SAI/SGM (``input_blocks``...) path of a diffusers UNet module path."""
    for diffusers_prefix, ldm_prefix, _ in _unet_prefixes(unet_config):
        if path.startswith(diffusers_prefix):
            return ldm_prefix + path[len(diffusers_prefix):]
    raise AssertionError(f"no SGM block for {path}")


def kohya_name(components, model: str, path: str, unet_style: str) -> str:
    """sd-scripts' LoRA module name for a module of ``model``."""
    if model == "unet":
        return "lora_unet_" + (sgm_path(components.unet.config, path) if unet_style == "sgm" else path).replace(".", "_")
    prefix = "lora_te1_" if model == "text_encoder" else "lora_te2_"
    if not path.startswith("text_model."):  # transformers 5 flattens CLIPTextModel; kohya names keep text_model
        path = "text_model." + path
    return prefix + path.replace(".", "_")


def write_lora(
    components, path, unet_style: str, weight: float = 1.0, seed: int = 0
) -> dict[tuple[str, str], torch.Tensor]:
    """Write a LoRA file; return each target's expected weight ``W + weight * alpha/r * up @ down``."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors, expected = {}, {}
    for model, module_path in TARGETS:
        linear = getattr(components, model).get_submodule(module_path)
        out_f, in_f = linear.weight.shape
        down = torch.randn(RANK, in_f, generator=gen) * 0.5
        up = torch.randn(out_f, RANK, generator=gen) * 0.5
        name = kohya_name(components, model, module_path, unet_style)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(ALPHA)}
        expected[(model, module_path)] = linear.weight.detach() + weight * (ALPHA / RANK) * up @ down
    save_file(tensors, str(path))
    return expected


def effective(module: torch.nn.Module) -> torch.Tensor:
    """The weight a Linear acts with, read off its outputs: f(I) - f(0) = W^T for a bias-carrying layer."""
    in_f = module.in_features if hasattr(module, "in_features") else module.base_layer.in_features
    with torch.no_grad():
        eye = torch.eye(in_f)
        return (module(eye) - module(torch.zeros(1, in_f))).T


@pytest.fixture()
def components(tiny_components):
    return copy.deepcopy(tiny_components)


@pytest.mark.parametrize("unet_style", ["sgm", "diffusers"])
def test_kohya_lora_acts_as_the_formula_and_unloads(components, tmp_path, unet_style):
    before = {t: effective(getattr(components, t[0]).get_submodule(t[1])) for t in TARGETS}
    expected = write_lora(components, tmp_path / "lora.safetensors", unet_style)
    with lora_loaded(components, tmp_path / "lora.safetensors") as loaded:
        assert sorted(loaded) == ["text_encoder", "text_encoder_2", "unet"]
        for model, module_path in TARGETS:
            got = effective(getattr(components, model).get_submodule(module_path))
            torch.testing.assert_close(got, expected[(model, module_path)], atol=1e-5, rtol=1e-5)
    for model, module_path in TARGETS:
        module = getattr(components, model).get_submodule(module_path)
        assert type(module) is torch.nn.Linear, f"{model}.{module_path} still wrapped: {type(module)}"
        torch.testing.assert_close(effective(module), before[(model, module_path)], atol=0, rtol=0)


def test_weight_scales_the_delta(components, tmp_path):
    expected = write_lora(components, tmp_path / "lora.safetensors", "sgm", weight=0.5)
    with lora_loaded(components, tmp_path / "lora.safetensors", weight=0.5):
        for model, module_path in TARGETS:
            got = effective(getattr(components, model).get_submodule(module_path))
            torch.testing.assert_close(got, expected[(model, module_path)], atol=1e-5, rtol=1e-5)


def test_parse_lora_spec():
    from pathlib import Path

    from sdxl_probe.pipeline.lora import parse_lora_spec

    assert parse_lora_spec("a/b.safetensors") == (Path("a/b.safetensors"), 1.0)
    assert parse_lora_spec("a/b.safetensors:0.5") == (Path("a/b.safetensors"), 0.5)
    assert parse_lora_spec("C:/x.safetensors") == (Path("C:/x.safetensors"), 1.0)


def _patched_folder(components, expected, folder):
    """The oracle model: the LoRA merged by hand into a copy's weights, saved as a diffusers folder."""
    from sdxl_probe.models.folder import save_folder

    merged = copy.deepcopy(components)
    for (model, module_path), weight in expected.items():
        getattr(merged, model).get_submodule(module_path).weight.data.copy_(weight)
    return save_folder(merged, folder)


def test_generate_lora_equals_hand_merged_model(components, tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.models.folder import save_folder

    base = save_folder(components, tmp_path / "base")
    full = _patched_folder(components, write_lora(components, tmp_path / "lora.safetensors", "sgm"), tmp_path / "full")
    expected = write_lora(components, tmp_path / "lora.safetensors", "sgm", weight=0.5)
    merged = _patched_folder(components, expected, tmp_path / "merged")
    run = ["generate", "red circle", "--seed", "1", "--steps", "2", "--dtype", "fp32"]
    outs = {}
    for name, extra in [("lora", ["--model", str(base), "--lora", f"{tmp_path / 'lora.safetensors'}:0.5"]),
                        ("merged", ["--model", str(merged)]), ("base", ["--model", str(base)]),
                        ("full", ["--model", str(full)])]:  # fmt: skip
        r = CliRunner().invoke(app, [*run, *extra, "--out", str(tmp_path / f"{name}.png")])
        assert r.exit_code == 0, r.output
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.int16)
    off = {n: np.abs(outs["lora"] - outs[n]) for n in ("merged", "base", "full")}
    assert off["merged"].max() <= 1  # fp32: Wx + dWx and (W + dW)x differ only in rounding
    assert off["base"].mean() > 1 and off["full"].mean() > 1


def test_attention_generate_lora_equals_hand_merged_model(components, tmp_path):
    from typer.testing import CliRunner

    from sdxl_probe.commands.attention import attention_app
    from sdxl_probe.models.folder import save_folder
    from sdxl_probe.probes.attention.result import AttentionResult

    base = save_folder(components, tmp_path / "base")
    expected = write_lora(components, tmp_path / "lora.safetensors", "sgm")
    merged = _patched_folder(components, expected, tmp_path / "merged")
    run = ["generate", "red circle", "--steps", "2", "--dtype", "fp32"]
    for name, extra in [("lora", ["--model", str(base), "--lora", str(tmp_path / "lora.safetensors")]),
                        ("merged", ["--model", str(merged)]), ("base", ["--model", str(base)])]:
        r = CliRunner().invoke(attention_app, [*run, *extra, "--out", str(tmp_path / f"maps_{name}")])
        assert r.exit_code == 0, r.output
    maps = {n: AttentionResult.load(tmp_path / f"maps_{n}").token_maps for n in ("lora", "merged", "base")}
    torch.testing.assert_close(maps["lora"], maps["merged"], atol=1e-3, rtol=1e-2)  # summation order only
    assert (maps["lora"] - maps["base"]).abs().max() > 1e-2
    saved = AttentionResult.load(tmp_path / "maps_lora").settings["loras"]
    assert saved == [{"file": str(tmp_path / "lora.safetensors"), "weight": 1.0}]


def test_several_loras_add_their_weighted_deltas_and_unload(components, tmp_path):
    """Oracle: ``W + w1 * alpha/r * up1 @ down1 + w2 * alpha/r * up2 @ down2``, by hand (A1111's stacking)."""
    from sdxl_probe.pipeline.lora import loras_loaded

    before = {t: effective(getattr(components, t[0]).get_submodule(t[1])) for t in TARGETS}
    one = write_lora(components, tmp_path / "a.safetensors", "sgm", weight=0.5, seed=1)
    two = write_lora(components, tmp_path / "b.safetensors", "diffusers", weight=-1.5, seed=2)
    with loras_loaded(components, [(tmp_path / "a.safetensors", 0.5), (tmp_path / "b.safetensors", -1.5)]) as loaded:
        assert loaded == ["text_encoder", "text_encoder_2", "unet"]
        for model, module_path in TARGETS:
            got = effective(getattr(components, model).get_submodule(module_path))
            want = one[(model, module_path)] + two[(model, module_path)] - before[(model, module_path)]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for model, module_path in TARGETS:
        module = getattr(components, model).get_submodule(module_path)
        assert type(module) is torch.nn.Linear, f"{model}.{module_path} still wrapped: {type(module)}"
        torch.testing.assert_close(effective(module), before[(model, module_path)], atol=0, rtol=0)


def test_generate_two_loras_equal_the_model_with_both_merged(components, tmp_path):
    """Oracle: a folder whose weights hold both weighted deltas, merged by hand; ``--lora`` given twice."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.models.folder import save_folder

    base = save_folder(components, tmp_path / "base")
    before = {t: getattr(components, t[0]).get_submodule(t[1]).weight.detach().clone() for t in TARGETS}
    one = write_lora(components, tmp_path / "a.safetensors", "sgm", weight=0.5, seed=1)
    two = write_lora(components, tmp_path / "b.safetensors", "sgm", weight=-1.5, seed=2)
    merged = _patched_folder(components, {t: one[t] + two[t] - before[t] for t in TARGETS}, tmp_path / "merged")
    run = ["generate", "red circle", "--seed", "1", "--steps", "2", "--dtype", "fp32"]
    outs = {}
    for name, extra in [("lora", ["--model", str(base), "--lora", f"{tmp_path / 'a.safetensors'}:0.5",
                                  "--lora", f"{tmp_path / 'b.safetensors'}:-1.5"]),
                        ("merged", ["--model", str(merged)]), ("base", ["--model", str(base)])]:  # fmt: skip
        r = CliRunner().invoke(app, [*run, *extra, "--out", str(tmp_path / f"{name}.png")])
        assert r.exit_code == 0, r.output
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.int16)
    assert np.abs(outs["lora"] - outs["merged"]).max() <= 1  # fp32 rounding only
    assert np.abs(outs["lora"] - outs["base"]).mean() > 1


def test_attention_inspect_lora_weight_equals_hand_merged_model(components, tmp_path):
    """Oracle: ``inspect --lora FILE:0.5`` maps equal the maps of a model merged by hand at weight 0.5."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from sdxl_probe.commands.attention import attention_app
    from sdxl_probe.models.folder import save_folder
    from sdxl_probe.probes.attention.result import AttentionResult

    base = save_folder(components, tmp_path / "base")
    expected = write_lora(components, tmp_path / "lora.safetensors", "sgm", weight=0.5)
    merged = _patched_folder(components, expected, tmp_path / "merged")
    size = components.unet.config.sample_size * 2 ** (len(components.vae.config.block_out_channels) - 1)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    (tmp_path / "img.txt").write_text("red circle", encoding="utf-8")
    run = ["inspect", str(tmp_path / "img.png"), "--timesteps", "400", "--dtype", "fp32"]
    for name, extra in [("lora", ["--model", str(base), "--lora", f"{tmp_path / 'lora.safetensors'}:0.5"]),
                        ("merged", ["--model", str(merged)])]:  # fmt: skip
        r = CliRunner().invoke(attention_app, [*run, *extra, "--out", str(tmp_path / f"maps_{name}")])
        assert r.exit_code == 0, r.output
    lora = AttentionResult.load(tmp_path / "maps_lora")
    assert lora.conditions == ["t=400/base", "t=400/lora"]
    merged_maps = AttentionResult.load(tmp_path / "maps_merged").token_maps[0]
    torch.testing.assert_close(lora.token_maps[1], merged_maps, atol=1e-4, rtol=1e-3)
    assert lora.settings["loras"][0]["weight"] == 0.5


def test_generate_refuses_a_lora_for_another_architecture(components, tmp_path):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.models.folder import save_folder

    base = save_folder(components, tmp_path / "base")
    save_file({"lora_unet_nothing_here_to_k.lora_down.weight": torch.zeros(2, 3),
               "lora_unet_nothing_here_to_k.lora_up.weight": torch.zeros(3, 2)}, str(tmp_path / "x.safetensors"))
    r = CliRunner().invoke(app, ["generate", "a", "--model", str(base), "--steps", "1",
                                 "--lora", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "o.png")])
    # the CLI entry point prints a ProbeError's one-line message and exits 2 (sdxl_probe.cli)
    assert isinstance(r.exception, ModelLoadError), r.output
    assert "x.safetensors" in str(r.exception) and "\n" not in str(r.exception)
    assert not (tmp_path / "o.png").exists()


def test_lora_for_another_architecture_is_refused(components, tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_nothing_here_to_k.lora_down.weight": torch.zeros(2, 3),
               "lora_unet_nothing_here_to_k.lora_up.weight": torch.zeros(3, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelLoadError, match="x.safetensors"):
        with lora_loaded(components, tmp_path / "x.safetensors"):
            pass
    from peft.tuners.tuners_utils import BaseTunerLayer

    left = [n for n, m in components.unet.named_modules() if isinstance(m, BaseTunerLayer)]
    assert left == [], f"a failed load left LoRA layers behind: {left[:3]}"
