"""The kohya file round-trips: diffusers' ``load_lora_weights`` into a plain ``StableDiffusionXLPipeline``
built from the toy folder gives the trainer's in-memory latents; every key is one ComfyUI's kohya mapping accepts.

Oracles: diffusers' own LoRA loader and pipeline; for names, the rules ComfyUI's ``model_lora_keys_unet`` /
``model_lora_keys_clip`` use (``lora_unet_`` + every SAI UNet weight path, ``lora_te1_text_model_encoder_layers_*``
/ ``lora_te2_...`` for the CLIPAttention and CLIPMLP Linears).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

from sdxl_probe.config import from_dict
from sdxl_probe.models.ldm_names import SAI_PREFIXES, unet_entries
from sdxl_probe.models.load import TOY_WEIGHTS, load_components
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import train
from sdxl_probe.train.lora.network import ADAPTER

DIM, ALPHA = 4, 2.0  # alpha != dim: a loader reading alpha = rank would be off by 2x
PROMPT = "zkw circle, white background"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The toy model after 6 LoRA steps on UNet (full preset), TE1 and TE2; and the kohya file."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("export")
    write_dataset(tmp / "ds", n=4, seed=0, concept="pink", trigger="zkw")
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(tmp / "ds"), "caption_extension": ".txt", "resolution": 64, "batch_size": 2},
        "network": {"dim": DIM, "alpha": ALPHA, "target": "full", "conv_dim": 2, "conv_alpha": 1.0,
                    "train_text_encoder_1": True, "train_text_encoder_2": True},
        "optimizer": {"unet_lr": 3e-3, "text_encoder_1_lr": 3e-3, "text_encoder_2_lr": 3e-3},
        "training": {"max_train_steps": 6, "seed": 1},
        "saving": {"output_dir": str(tmp / "run"), "output_name": "t"},
        "logging": {"progress_bar": False},
    })  # fmt: skip
    components = load_components("toy", dtype=torch.float32)
    path = train(cfg, tmp / "run", components=components, log=lambda s: None)
    for _, m in components.models():
        m.eval()
    return components, path


def comfy_accepted(components) -> set[str]:
    """Module names ComfyUI's kohya mapping knows for this model."""
    names = set()
    plain_keys = [k.replace(".base_layer.", ".") for k in components.unet.state_dict() if ".lora_" not in k]
    for e in unet_entries(plain_keys, components.unet.config):
        if e.key.endswith(".weight"):
            names.add("lora_unet_" + e.key.removeprefix(SAI_PREFIXES["unet"]).removesuffix(".weight").replace(".", "_"))
    leaves = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
    for prefix, enc in (("lora_te1_", components.text_encoder), ("lora_te2_", components.text_encoder_2)):
        for b in range(enc.config.num_hidden_layers):
            names |= {f"{prefix}text_model_encoder_layers_{b}_{leaf.replace('.', '_')}" for leaf in leaves}
    return names


def test_keys_are_kohya_names_with_configured_alpha(trained):
    components, path = trained
    accepted = comfy_accepted(components)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alphas = {k: f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        conv = [k for k in alphas if f.get_tensor(k.replace(".alpha", ".lora_down.weight")).shape[-1] == 3]
    modules = {re.sub(r"\.(lora_down\.weight|lora_up\.weight|alpha)$", "", k) for k in keys}
    assert modules <= accepted, sorted(modules - accepted)[:5]
    assert not any("down_blocks" in k or "lora_te1_encoder" in k for k in keys)
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k" in modules  # toy: 1 layer per block
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= set(keys)
    assert any("in_layers_2" in k for k in conv) and all(alphas[k] == 1.0 for k in conv)
    assert {v for k, v in alphas.items() if k not in conv} == {ALPHA}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_dim"] == str(DIM)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora" and "ss_tag_frequency" in meta


def pipeline_latents(pipe, seed: int = 0) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(PROMPT, num_inference_steps=8, guidance_scale=5.0, height=64, width=64, output_type="latent",
                    generator=torch.Generator().manual_seed(seed)).images  # fmt: skip


def test_kohya_file_loads_in_diffusers_and_matches_the_trainer(trained):
    from diffusers import StableDiffusionXLPipeline

    components, path = trained
    plain = StableDiffusionXLPipeline.from_pretrained(str(TOY_WEIGHTS), local_files_only=True).to(torch.float32)
    base = pipeline_latents(plain)
    plain.load_lora_weights(str(path))
    from_file = pipeline_latents(plain)
    in_memory = StableDiffusionXLPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=plain.tokenizer, tokenizer_2=plain.tokenizer_2, unet=components.unet,
        scheduler=plain.scheduler, force_zeros_for_empty_prompt=False,
    )  # fmt: skip
    skipped = diffusers_skips(components, path)
    assert skipped == ["up_blocks.0.upsamplers.0.conv"], skipped  # see diffusers_skips
    muted = []
    for name in skipped:  # compare like with like: what diffusers could load
        module = components.unet.get_submodule(name)
        muted.append((module, module.scaling[ADAPTER]))
        module.scaling[ADAPTER] = 0.0
    try:
        trainer = pipeline_latents(in_memory)
    finally:
        for module, value in muted:
            module.scaling[ADAPTER] = value
    assert (from_file - base).abs().max() > 1e-2  # the LoRA does something, so the match below means something
    assert (from_file - trainer).abs().max() < 1e-4


def diffusers_skips(components, path) -> list[str]:
    """UNet modules with a LoRA in the trainer that diffusers' loader leaves out.

    diffusers 0.42's kohya converter maps ``output_blocks_N_2_conv`` (sd-scripts' and ComfyUI's name for the
    upsampler conv that follows an attention block) to ``up_blocks.*.attentions.1.conv``, which does not exist,
    and drops it with a warning: the file is right (the key test checks the names), the loader skips it.
    """
    import warnings

    from peft.tuners.lora import LoraLayer

    from sdxl_probe.pipeline.lora import lora_loaded

    fresh = load_components("toy", dtype=torch.float32)
    ours = {n for n, m in components.unet.named_modules() if isinstance(m, LoraLayer)}
    with warnings.catch_warnings(), lora_loaded(fresh, path):
        warnings.simplefilter("ignore")
        got = {n for n, m in fresh.unet.named_modules() if isinstance(m, LoraLayer)}
    assert got <= ours
    return sorted(ours - got)
