"""Model loading: tiny parts, SAI single-file round trip, diffusers folders, refusals, ``model info``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.models.folder import save_folder
from sdxl_probe.models.load import load_components
from sdxl_probe.models.single_file import save_single_file
from sdxl_probe.models.tiny import TE2_PROJECTION, TIME_EMBED_DIM, build_tiny_components


@pytest.fixture(scope="module")
def sai_file(tiny_components, tmp_path_factory):
    return save_single_file(tiny_components, tmp_path_factory.mktemp("sai") / "tiny_sdxl.safetensors")


def assert_same_weights(a, b):
    for name, model in a.models():
        sa, sb = model.state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, f"{name}.{key}"
            assert torch.equal(sa[key], sb[key]), f"{name}.{key} differs"


def test_tiny_components_have_sdxl_structure(tiny_components):
    c = tiny_components
    d1, d2 = c.text_encoder.config.hidden_size, c.text_encoder_2.config.hidden_size
    assert d1 != d2
    assert c.unet.config.cross_attention_dim == d1 + d2
    assert c.unet.config.addition_embed_type == "text_time"
    assert c.unet.config.projection_class_embeddings_input_dim == TE2_PROJECTION + 6 * TIME_EMBED_DIM
    assert c.text_encoder_2.config.projection_dim == TE2_PROJECTION
    assert c.kind == "tiny" and c.is_toy
    assert c.vae_scale_factor == 2 ** (len(c.vae.config.block_out_channels) - 1)
    assert (c.scheduler.config.beta_start, c.scheduler.config.beta_end) == (0.00085, 0.012)
    assert c.scheduler.config.beta_schedule == "scaled_linear"
    assert c.tokenizer.pad_token_id == c.tokenizer.eos_token_id == 49407
    assert c.tokenizer_2.pad_token_id == 0


def test_tiny_components_forward_shapes(tiny_components):
    c = tiny_components
    ids = c.tokenizer(
        ["a red cube"], padding="max_length", max_length=c.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        h1 = c.text_encoder(ids, output_hidden_states=True).hidden_states[-2]  # (1, 77, d1)
        out2 = c.text_encoder_2(ids, output_hidden_states=True)
        context = torch.cat([h1, out2.hidden_states[-2]], dim=-1)  # (1, 77, d1 + d2)
        time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=torch.float32)
        latents = torch.randn(1, c.unet.config.in_channels, 8, 8)
        cond = {"text_embeds": out2.text_embeds, "time_ids": time_ids}
        noise = c.unet(latents, 10, encoder_hidden_states=context, added_cond_kwargs=cond).sample
    assert noise.shape == latents.shape
    assert out2.text_embeds.shape == (1, TE2_PROJECTION)


def test_tiny_components_are_seeded():
    state = torch.random.get_rng_state()
    a, b, other = build_tiny_components(0), build_tiny_components(0), build_tiny_components(1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.model_hash() == b.model_hash() != other.model_hash()


def test_single_file_has_sai_layout(sai_file):
    with safe_open(sai_file, "pt") as f:
        keys = set(f.keys())
        q = f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()
    prefixes = (
        "model.diffusion_model.",
        "conditioner.embedders.0.transformer.text_model.",
        "conditioner.embedders.1.model.",
        "first_stage_model.",
    )
    assert all(k.startswith(prefixes) for k in keys)
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
    ):
        assert key in keys, key
    assert len(q) == 4  # 1x1 conv layout, as in sd_xl_base_1.0.safetensors


def test_single_file_round_trip_is_bit_identical(tiny_components, sai_file):
    loaded = load_components(sai_file)
    assert loaded.kind == "tiny" and loaded.source == str(sai_file)
    assert_same_weights(tiny_components, loaded)
    assert loaded.scheduler.config == tiny_components.scheduler.config
    assert loaded.model_hash() == tiny_components.model_hash()


def test_single_file_loads_identically_in_diffusers(tiny_components, sai_file, tmp_path):
    """diffusers' own from_single_file reads our SAI layout to the same tensors (independent check)."""
    from diffusers import StableDiffusionXLPipeline

    config_dir = save_folder(tiny_components, tmp_path / "config")
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(sai_file), config=str(config_dir), local_files_only=True
    )
    assert_same_weights(tiny_components, pipe)


def test_dtype_cast_on_load(sai_file):
    loaded = load_components(sai_file, dtype=torch.float16)
    for _, model in loaded.models():
        assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_diffusers_folder_round_trip(tiny_components, tmp_path):
    folder = save_folder(tiny_components, tmp_path / "model")
    loaded = load_components(folder)
    assert loaded.kind == "tiny"
    assert_same_weights(tiny_components, loaded)
    save_folder(tiny_components, folder)  # replacing an existing folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_folder_missing_component_is_named(tiny_components, tmp_path):
    folder = save_folder(tiny_components, tmp_path / "model")
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelLoadError, match=r"missing component\(s\): vae \(no vae/config.json\)") as e:
        load_components(folder)
    assert str(folder) in str(e.value)
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_components(folder)


def fake_file(tmp_path, keys: dict[str, tuple[int, ...]], name="fake.safetensors"):
    path = tmp_path / name
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in keys.items()}, str(path))
    return path


UNET = "model.diffusion_model."
FOREIGN = {
    "SD 1.x": {
        f"{UNET}input_blocks.0.0.weight": (2, 2),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
    },
    "SD 2.x": {
        f"{UNET}input_blocks.0.0.weight": (2, 2),
        "cond_stage_model.model.token_embedding.weight": (4, 1024),
    },
    "SD3": {
        f"{UNET}joint_blocks.0.context_block.adaLN_modulation.1.bias": (4,),
        "first_stage_model.encoder.conv_in.weight": (2, 2),
    },
    "Flux": {"double_blocks.0.img_attn.norm.key_norm.scale": (4,), "single_blocks.0.linear1.weight": (2, 2)},
    "SDXL refiner": {
        f"{UNET}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (4, 1280),
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (4,),
    },
}


@pytest.mark.parametrize("arch", list(FOREIGN))
def test_foreign_architectures_are_refused(tmp_path, arch):
    path = fake_file(tmp_path, FOREIGN[arch])
    with pytest.raises(ModelLoadError) as e:
        load_components(path)
    message = str(e.value)
    assert str(path) in message and "found a" in message and arch in message
    assert "expected an SDXL base-architecture checkpoint" in message


def test_refiner_message_gives_context_width(tmp_path):
    with pytest.raises(ModelLoadError, match="UNet context width 1280"):
        load_components(fake_file(tmp_path, FOREIGN["SDXL refiner"]))


def test_unet_only_file_is_refused(tmp_path):
    with pytest.raises(
        ModelLoadError,
        match=r"no keys first_stage_model.\* \(vae\), conditioner.embedders.0.transformer.\* \(text_encoder\)",
    ):
        load_components(fake_file(tmp_path, {f"{UNET}input_blocks.0.0.weight": (2, 2)}))


def test_truncated_file_is_refused(sai_file, tmp_path):
    data = sai_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-1000])
    with pytest.raises(ModelLoadError, match=r"truncated .safetensors file: .*\(1,000 missing\)"):
        load_components(cut)


def test_corrupt_files_are_refused(tmp_path):
    cases = {
        "short.safetensors": b"\x01\x02",
        "huge_header.safetensors": (10**6).to_bytes(8, "little") + b"{}",
        "not_json.safetensors": (4).to_bytes(8, "little") + b"\xff\xfe{[",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelLoadError, match="not a valid .safetensors file") as e:
            load_components(tmp_path / name)
        assert name in str(e.value)


def test_base_shapes_expected_without_stored_configs(sai_file, tmp_path):
    """A tiny file without our metadata is read against the SDXL base configs and refused clearly."""
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(sai_file), str(bare))
    with pytest.raises(ModelLoadError, match="weights do not fit its config: .*shapes differ"):
        load_components(bare)


def test_pickles_refused_unless_allowed(sai_file, tiny_components, tmp_path):
    with safe_open(sai_file, "pt") as f:
        metadata = f.metadata()
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(sai_file), "global_step": 7, **metadata}, ckpt)
    with pytest.raises(ModelLoadError, match="pickled checkpoint .*--allow-pickle"):
        load_components(ckpt)
    assert_same_weights(tiny_components, load_components(ckpt, allow_pickle=True))


class Evil:
    pass


def test_pickles_with_code_are_refused_even_when_allowed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": Evil()}}, path)
    with pytest.raises(ModelLoadError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_components(path, allow_pickle=True)


def test_missing_source_and_unbuilt_preset(tmp_path, monkeypatch):
    from sdxl_probe.models import load

    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_components(tmp_path / "nope.safetensors")
    monkeypatch.setitem(load.PRESETS, "toy", tmp_path / "weights")
    with pytest.raises(ModelLoadError, match="toy model weights are not built yet .*sdxl-probe toy pretrain"):
        load_components("toy")


def test_model_info_on_single_file(sai_file, tiny_components):
    from sdxl_probe.cli import app

    result = CliRunner().invoke(app, ["model", "info", str(sai_file)])
    assert result.exit_code == 0, result.output
    assert "toy model" in result.output and "UNet context 96 = TE1 32 + TE2 64" in result.output
    te2_params = sum(p.numel() for p in tiny_components.text_encoder_2.parameters())
    assert f"{te2_params:,}" in result.output and "float32" in result.output


def test_model_info_refusal_exits_2_without_traceback(tmp_path):
    path = fake_file(tmp_path, FOREIGN["SD 1.x"])
    run = subprocess.run(
        [sys.executable, "-m", "sdxl_probe.cli", "model", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "SD 1.x" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_full_size_key_set_matches_sdxl_base():
    """The SAI names generated from the shipped configs: sd_xl_base_1.0.safetensors' 2,515 tensors."""
    from sdxl_probe.models.configs import base_config
    from sdxl_probe.models.ldm_names import sai_entries
    from sdxl_probe.models.single_file import _empty_model

    names = ("text_encoder", "text_encoder_2", "unet", "vae")
    state = {n: _empty_model(n, base_config(n)).state_dict() for n in names}
    entries = sai_entries({n: list(sd) for n, sd in state.items()}, {n: base_config(n) for n in names})
    assert len(entries) == len({e.key for e in entries}) == 2515
    numel = sum(e.make(lambda k, sd=state[e.component]: sd[k]).numel() for e in entries)
    assert numel == 3_468_837_945  # 6.94 GB in fp16
    assert json.loads(json.dumps(base_config("unet")))["transformer_layers_per_block"] == [1, 2, 10]


@pytest.mark.gpu
def test_load_to_cuda_in_fp16(sai_file):
    loaded = load_components(sai_file, dtype=torch.float16, device="cuda")
    unet = loaded.unet
    assert next(unet.parameters()).device.type == "cuda"
    d = loaded.text_encoder.config.hidden_size + loaded.text_encoder_2.config.hidden_size
    latents = torch.randn(1, unet.config.in_channels, 8, 8, device="cuda", dtype=torch.float16)
    context = torch.randn(1, 77, d, device="cuda", dtype=torch.float16)
    pooled = torch.randn(1, loaded.text_encoder_2.config.projection_dim, device="cuda", dtype=torch.float16)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]], device="cuda", dtype=torch.float16)
    with torch.no_grad():
        out = unet(
            latents, 10, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_model_info_on_folder(tiny_components, tmp_path):
    from sdxl_probe.models.info import model_info

    folder = save_folder(tiny_components, tmp_path / "model")
    summary = model_info(str(folder))
    assert summary.layout == "diffusers folder" and summary.kind == "tiny"
    counts = {c.name: c.params for c in summary.components}
    assert counts == {n: sum(p.numel() for p in m.parameters()) for n, m in tiny_components.models()}


def test_read_tensors_mapped_copied_and_misaligned(tmp_path):
    from sdxl_probe.models.safetensors_file import read_header, read_tensors

    tensors = {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.tensor([7], dtype=torch.int64),
    }
    aligned = tmp_path / "aligned.safetensors"
    save_file(tensors, str(aligned))
    raw = json.dumps({"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}).encode() + b" "
    assert (8 + len(raw)) % 4 != 0  # data section not 4-byte aligned: must fall back to a copy
    misaligned = tmp_path / "misaligned.safetensors"
    misaligned.write_bytes(len(raw).to_bytes(8, "little") + raw + tensors["a"].numpy().tobytes())
    for path in (aligned, misaligned):
        header = read_header(path)
        for mmap in (True, False):
            got = read_tensors(header, list(header.tensors), mmap=mmap)
            assert all(torch.equal(got[k], tensors[k]) for k in got)
        cast = read_tensors(header, ["a"], torch.float16, mmap=True)["a"]
        assert cast.dtype == torch.float16 and torch.equal(cast.float(), tensors["a"])


def _kohya_lora(tmp_path, alpha_dtype):
    """A hand-made kohya LoRA: 3 UNet modules (SGM names) at rank 4, 2 TE1 at rank 8, 1 TE2 at rank 4."""
    modules = [("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 4, 2.0),
               ("lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q", 4, 2.0),
               ("lora_unet_middle_block_1_transformer_blocks_0_ff_net_2", 4, 2.0),
               ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 8, 1.0),
               ("lora_te1_text_model_encoder_layers_0_self_attn_out_proj", 8, 1.0),
               ("lora_te2_text_model_encoder_layers_1_mlp_fc1", 4, 0.5)]  # fmt: skip
    tensors = {}
    for name, rank, alpha in modules:
        tensors |= {f"{name}.lora_down.weight": torch.zeros(rank, 16), f"{name}.lora_up.weight": torch.zeros(16, rank),
                    f"{name}.alpha": torch.tensor(alpha, dtype=alpha_dtype)}  # fmt: skip
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
            "ss_base_model_version": "sdxl_base_v1-0", "ss_tag_frequency": "x" * 500, "modelspec.title": "t"}
    save_file(tensors, str(tmp_path / "lora.safetensors"), metadata=meta)
    return tmp_path / "lora.safetensors"


@pytest.mark.parametrize("alpha_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_model_info_describes_a_lora_without_torch(tmp_path, alpha_dtype):
    from sdxl_probe.cli import app

    path = _kohya_lora(tmp_path, alpha_dtype)
    result = CliRunner().invoke(app, ["model", "info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "kohya (SGM UNet names)" in out and "SDXL (two text encoders)" in out
    assert "rank 4, 8" in out and "alpha 0.5, 1, 2" in out and "unet 3, te1 2, te2 1" in out
    assert "ss_network_module = networks.lora" in out and "ss_base_model_version = sdxl_base_v1-0" in out
    assert "(500 chars)" in out and "modelspec.title" not in out
    code = ("import sys; from sdxl_probe.models.lora_info import read_if_lora; "
            f"info = read_if_lora({str(path)!r}); print(info.ranks); assert 'torch' not in sys.modules")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[4, 8]", run.stderr


def test_model_info_names_an_sd15_lora_and_diffusers_format(tmp_path):
    from sdxl_probe.models.lora_info import read_if_lora

    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 2)},
              str(tmp_path / "sd15.safetensors"))  # fmt: skip
    info = read_if_lora(str(tmp_path / "sd15.safetensors"))
    assert info.targets == {"te": 1} and "not an SDXL LoRA" in info.architecture and info.alphas == []
    save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(3, 4),
               "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.zeros(4, 3),
               "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.zeros(3, 4),
               "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": torch.zeros(4, 3)},
              str(tmp_path / "peft.safetensors"))  # fmt: skip
    info = read_if_lora(str(tmp_path / "peft.safetensors"))
    assert info.format == "diffusers/peft" and info.targets == {"unet": 1, "te2": 1} and info.ranks == [3]
