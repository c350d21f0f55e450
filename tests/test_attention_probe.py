"""The attention probe end to end on tiny random components (shapes, long prompts, LoRA, CLI)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.probes.attention import core as attention
from sdxl_probe.probes.attention.result import AttentionResult
from sdxl_probe.probes.attention.runs import CaptureOptions


def _side(components) -> int:
    return components.unet.config.sample_size * components.vae_scale_factor


def test_generate_batch_non_square_saves_and_reports(tiny_components, tmp_path):
    f = tiny_components.vae_scale_factor
    height, width = _side(tiny_components), _side(tiny_components) + 8 * f
    prompts = ["a red circle, white background", "blue square"]
    res = attention.generate(
        tiny_components, prompts, height=height, width=width, steps=3, guidance=3.0, seed=1
    )
    latent = (height // f, width // f)
    c, b, t, h, w = res.token_maps.shape
    assert (c, b, t) == (1, 2, tiny_components.tokenizer.model_max_length)
    assert h * latent[1] == w * latent[0]  # the maps keep the latent's aspect ratio
    assert res.images.shape == (1, 2, height, width, 3) and res.is_toy
    assert [w["text"] for w in res.words[1]] == ["blue", "square"]
    assert [t["text"] for t in res.tags[0]] == ["a red circle", "white background"]
    assert res.tags[0][1]["positions"] == [5, 6]  # <bos> a red circle , white background
    assert [t["text"] for t in res.metrics["words"][0][0]["tags"]] == ["a red circle", "white background"]
    assert res.kinds[1][:4] == ["bos", "content", "content", "eos"]
    assert torch.allclose(res.token_mass.sum(-1), torch.ones(1, 2), atol=1e-4)
    assert len(res.settings["timesteps"]) == 3 and res.metrics["ren"][0]["first_step_index"] == 0
    line = attention.write_outputs(res, tmp_path)
    assert "toy model" in line
    html = (tmp_path / "attention.html").read_text()
    assert "toy model" in html and "square" in html and "BOS share" in html
    assert (tmp_path / "overlay_generate.png").is_file()
    back = AttentionResult.load(tmp_path)
    assert torch.equal(back.token_maps, res.token_maps) and back.metrics == res.metrics


def test_step_window_changes_maps(tiny_components):
    full = attention.generate(tiny_components, ["red circle"], steps=4, guidance=2.0)
    late = attention.generate(
        tiny_components, ["red circle"], steps=4, guidance=2.0, options=CaptureOptions(steps=(2, 4))
    )
    assert late.metrics["ren"][0]["first_step_index"] == 2
    assert not torch.allclose(full.token_maps, late.token_maps)
    with pytest.raises(ProbeError, match="no cross-attention call"):
        attention.generate(tiny_components, ["red circle"], steps=1, options=CaptureOptions(steps=(5, 6)))


def test_long_prompt_word_in_second_chunk(tiny_components):
    from sdxl_probe.text.tokens import chunk_layout, tokenize_caption

    caption = ", ".join(["red circle"] * 30) + ", zebra"
    layout = chunk_layout(tokenize_caption(caption), encoder="te1", max_token_length=150)
    zebra = [i for i, tok in enumerate(tokenize_caption(caption).tokens) if tok.text == "zebra"]
    assert layout.chunk_of[zebra[0]] == 1  # the word sits in chunk 2
    side = _side(tiny_components)
    image = np.random.default_rng(0).integers(0, 255, (1, side, side, 3), dtype=np.uint8)
    res = attention.inspect(tiny_components, image, [caption], timesteps=(400,), max_token_length=150)
    assert res.token_maps.shape[2] == 152
    heat = attention.word_map(res, 0, 0, "zebra")
    pos = layout.positions[zebra[0]]
    assert pos > tiny_components.tokenizer.model_max_length - 1
    assert torch.equal(heat, res.token_maps[0, 0, pos]) and heat.sum() > 0
    assert any(w["text"] == "zebra" for w in res.metrics["words"][0][0]["words"])
    with pytest.raises(ProbeError, match="not in caption"):
        attention.word_map(res, 0, 0, "giraffe")


def _save_lora(components, path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = copy.deepcopy(components.unet)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"], init_lora_weights=False
    )
    inject_adapter_in_model(config, unet)
    layers = get_peft_model_state_dict(unet)
    StableDiffusionXLPipeline.save_lora_weights(str(path), unet_lora_layers=layers, safe_serialization=True)
    return path / "pytorch_lora_weights.safetensors"


def test_inspect_with_lora_compares_and_unloads(tiny_components, tmp_path):
    components = copy.deepcopy(tiny_components)
    lora = _save_lora(components, tmp_path / "lora")
    side = _side(components)
    image = np.random.default_rng(1).integers(0, 255, (2, side, side, 3), dtype=np.uint8)
    before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    res = attention.inspect(components, image, ["red circle", "blue square"], timesteps=(300, 500), loras=[(lora, 1.0)])
    assert res.conditions == ["t=300/base", "t=300/lora", "t=500/base", "t=500/lora"]
    assert not torch.allclose(res.token_maps[0], res.token_maps[1])
    rows = res.metrics["lora_change"]
    assert {r["word"] for r in rows} == {"red", "circle", "blue", "square"} and len(rows) == 8
    assert any(r["l1"] > 0 for r in rows)
    assert components.unet.state_dict().keys() == before.keys()  # adapter removed again
    again = attention.inspect(components, image, ["red circle", "blue square"], timesteps=(300,))
    assert torch.allclose(again.token_maps[0], res.token_maps[0], atol=1e-6)
    from sdxl_probe.probes.attention.overlay import write_overlays

    paths = write_overlays(res, tmp_path / "out")
    assert any(p.name.startswith("overlay_diff_t_300") for p in paths)


def test_cli_generate_inspect_report(tiny_components, tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    import sdxl_probe.models.load as load
    from sdxl_probe.commands.attention import attention_app

    # a copy: `attention generate` releases the networks it has finished with
    monkeypatch.setattr(load, "load_components", lambda *a, **k: copy.deepcopy(tiny_components))
    runner = CliRunner()
    out = tmp_path / "gen"
    r = runner.invoke(
        attention_app, ["generate", "red circle", "--steps", "2", "--window", "late", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "toy model" in r.output and (out / "attention.html").is_file()
    side = _side(tiny_components)
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("green triangle\n")
    r = runner.invoke(
        attention_app,
        ["inspect", str(tmp_path / "a.png"), "--timesteps", "200", "--out", str(tmp_path / "ins")],
    )
    assert r.exit_code == 0, r.output
    assert AttentionResult.load(tmp_path / "ins").captions == ["green triangle"]
    r = runner.invoke(attention_app, ["report", str(tmp_path / "ins")])
    assert r.exit_code == 0 and "attention.html" in r.output
    r = runner.invoke(attention_app, ["inspect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "missing.png" in str(r.exception)
