"""The device and dtype policy (sdxl_probe.pipeline.device) and the commands that use it, on tiny parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import sdxl_probe.models.load as load_module
from sdxl_probe.errors import ProbeError
from sdxl_probe.pipeline import device as policy
from sdxl_probe.pipeline.device import resolve_device, resolve_dtype, resolve_precision, vae_dtype_for


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_devices_without_an_accelerator(no_accelerator):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ProbeError) as e:
        resolve_device("cuda")
    assert str(e.value) == "--device cuda: CUDA is not available on this machine; devices here: cpu"
    with pytest.raises(ProbeError, match="MPS is not available on this machine; devices here: cpu"):
        resolve_device("mps")
    with pytest.raises(ProbeError, match=r"--device 'gpu': not a device; use one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu")


def test_devices_with_two_gpus(two_gpus):
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ProbeError) as e:
        resolve_device("cuda:2")
    assert str(e.value) == "--device cuda:2: there is no cuda:2; devices here: cpu, cuda:0, cuda:1"


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_the_cpu_follows_the_bf16_probe(monkeypatch, native):
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_dtype("auto", "cuda:0") == "fp16"  # whatever the CPU
    assert resolve_dtype("fp16", "cpu") == "fp16"  # an explicit choice is kept
    with pytest.raises(ProbeError, match="--dtype 'float8': not a dtype; use one of auto, fp32, bf16, fp16"):
        resolve_dtype("float8", "cpu")


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(True, False, True), (False, True, True),
                                                              (False, False, False)])  # fmt: skip
def test_cpu_bf16_probe_reads_torch_cpu_features(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert policy.cpu_has_native_bf16() is expected


def test_vae_upcast_only_for_fp16_when_the_config_asks(two_gpus):
    assert vae_dtype_for("fp16", {"force_upcast": True}) == "fp32"
    assert vae_dtype_for("fp16", {"force_upcast": False}) == "fp16"
    assert vae_dtype_for("bf16", {"force_upcast": True}) == "bf16"  # bf16 has fp32's range: no overflow
    p = resolve_precision("cuda", "auto", {"force_upcast": True})
    assert (p.device, p.dtype, p.vae_dtype) == ("cuda:0", "fp16", "fp32")
    assert p.describe() == "cuda:0, fp16, VAE fp32 (auto)"


# ---------------------------------------------------------------- commands on tiny parts


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from sdxl_probe.models.folder import save_folder
    from sdxl_probe.models.tiny import build_tiny_components

    return save_folder(build_tiny_components(0), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def loads(monkeypatch):
    """Every load_components call: (kwargs, a shallow copy of the components returned, as loaded).

    The copy keeps the networks a command later releases (``generate_images(release=True)``).
    """
    import copy

    calls = []
    real = load_module.load_components

    def recording(source, **kwargs):
        components = real(source, **kwargs)
        calls.append((kwargs, copy.copy(components)))
        return components

    monkeypatch.setattr(load_module, "load_components", recording)
    return calls


def _dtypes(components) -> dict[str, set[torch.dtype]]:
    return {name: {p.dtype for p in module.parameters()} for name, module in components.models()}


def _invoke(args):
    from sdxl_probe.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_generate_honours_device_and_dtype(tiny_folder, tmp_path, loads):
    _invoke(["generate", "red circle", "--model", str(tiny_folder), "--steps", "1", "--device", "cpu",
             "--dtype", "bf16", "--out", str(tmp_path / "a.png")])  # fmt: skip
    (kwargs, components), = loads
    assert _dtypes(components) == {n: {torch.bfloat16} for n in ("text_encoder", "text_encoder_2", "unet", "vae")}
    assert {p.device.type for _, m in components.models() for p in m.parameters()} == {"cpu"}


def test_attention_generate_fp16_upcasts_the_vae(tiny_folder, tmp_path, loads):
    from sdxl_probe.probes.attention.report import REPORT_NAME

    vae_config = json.loads((tiny_folder / "vae" / "config.json").read_text())
    assert vae_config["force_upcast"] is True  # AutoencoderKL's default, as SDXL's VAE
    out = tmp_path / "attn"
    _invoke(["attention", "generate", "red circle", "--model", str(tiny_folder), "--steps", "1", "--device", "cpu",
             "--dtype", "fp16", "--out", str(out)])  # fmt: skip
    (_, components), = loads
    assert _dtypes(components) == {"text_encoder": {torch.float16}, "text_encoder_2": {torch.float16},
                                   "unet": {torch.float16}, "vae": {torch.float32}}  # fmt: skip
    model = json.loads((out / "attention.json").read_text())["model"]
    assert (model["device"], model["dtype"], model["vae_dtype"]) == ("cpu", "fp16", "fp32")
    assert "cpu, fp16, VAE fp32" in (out / REPORT_NAME).read_text()


def test_attention_inspect_honours_dtype(tiny_folder, tmp_path, loads):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    _invoke(["attention", "inspect", str(tmp_path / "a.png"), "--caption", "red circle", "--timesteps", "200",
             "--model", str(tiny_folder), "--dtype", "fp32", "--out", str(tmp_path / "ins")])  # fmt: skip
    (_, components), = loads
    assert set().union(*_dtypes(components).values()) == {torch.float32}


def test_embed_loads_the_text_encoders_alone_in_the_dtype(tiny_folder, tmp_path, loads):
    from sdxl_probe.probes.embed.core import EmbedResult

    out = tmp_path / "embed"
    _invoke(["embed", "--model", str(tiny_folder), "--toy-pairs", "3", "--shuffles", "1", "--device", "cpu",
             "--dtype", "bf16", "--no-cache", "--out", str(out)])  # fmt: skip
    (kwargs, components), = loads
    assert kwargs["parts"] == ("text_encoder", "text_encoder_2")
    assert components.unet is None and components.vae is None
    assert _dtypes(components) == {"text_encoder": {torch.bfloat16}, "text_encoder_2": {torch.bfloat16}}
    saved = EmbedResult.load(out)
    assert (saved.model["device"], saved.model["dtype"]) == ("cpu", "bf16")
    assert "cpu, bf16" in (out / "embed.html").read_text()


def test_embed_reads_no_unet_or_vae_tensor_from_a_single_file(tiny_components, tmp_path, monkeypatch):
    from sdxl_probe.cli import app
    from sdxl_probe.models import single_file

    path = single_file.save_single_file(tiny_components, tmp_path / "tiny.safetensors")
    read = []
    real = single_file._load_component
    monkeypatch.setattr(single_file, "_load_component", lambda src, comp, *a: read.append(comp) or real(src, comp, *a))
    result = CliRunner().invoke(app, ["embed", "--model", str(path), "--pair", "red, circle|||a red circle",
                                      "--shuffles", "1", "--no-cache", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert read == ["text_encoder", "text_encoder_2"]


def test_toy_evaluate_honours_dtype(tiny_folder, tmp_path, loads):
    from sdxl_probe.probes.toy_eval.core import ToyEvaluation

    out = tmp_path / "eval"
    _invoke(["toy", "evaluate", "--model", str(tiny_folder), "--n-prompts", "2", "--steps", "1",
             "--n-attention", "0", "--dtype", "bf16", "--out", str(out)])  # fmt: skip
    (_, components), = loads
    assert set().union(*_dtypes(components).values()) == {torch.bfloat16}
    assert ToyEvaluation.load(out).precision == {"device": "cpu", "dtype": "bf16", "vae_dtype": "bf16"}


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_in_a_command_follows_the_probe(tiny_folder, tmp_path, loads, monkeypatch, native):
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: native)
    _invoke(["generate", "red circle", "--model", str(tiny_folder), "--steps", "1", "--device", "cpu",
             "--out", str(tmp_path / "a.png")])  # fmt: skip
    (_, components), = loads
    assert set().union(*_dtypes(components).values()) == {torch.bfloat16 if native else torch.float32}


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "x", "--height", "6"],  # tiny model: multiples of 2 (VAE) x 2 (UNet levels) = 4
        ["attention", "generate", "x", "--width", "30"],
        ["generate", "x", "--steps", "1001"],  # num_train_timesteps is 1000
    ],
)
def test_bad_sizes_and_steps_are_refused_before_any_weight_loads(tiny_folder, tmp_path, loads, args):
    from sdxl_probe.cli import app

    result = CliRunner().invoke(app, [*args, "--model", str(tiny_folder), "--out", str(tmp_path / "o.png")])
    assert isinstance(result.exception, ProbeError), result.output
    assert loads == []


def test_inspect_refuses_timesteps_and_image_sizes_before_loading(tiny_folder, tmp_path, loads, monkeypatch):
    import numpy as np
    from PIL import Image

    from sdxl_probe.cli import app

    scheduler = json.loads((tiny_folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler["num_train_timesteps"] = 500  # a model trained on fewer timesteps: 600 no longer fits
    (tiny_folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    try:
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
        Image.fromarray(np.zeros((34, 34, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
        common = ["--caption", "x", "--model", str(tiny_folder), "--out", str(tmp_path / "o")]
        late = CliRunner().invoke(app, ["attention", "inspect", str(tmp_path / "ok.png"), "--timesteps", "600", *common])
        assert "timesteps must lie in 0..499" in str(late.exception)
        odd = CliRunner().invoke(app, ["attention", "inspect", str(tmp_path / "odd.png"), "--timesteps", "10", *common])
        assert "image size 34x34" in str(odd.exception) and "multiples of 4" in str(odd.exception)
        assert loads == []
    finally:
        scheduler["num_train_timesteps"] = 1000
        (tiny_folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))


def test_sdxl_sizes_must_be_multiples_of_32():
    from sdxl_probe.models.configs import base_config
    from sdxl_probe.pipeline.checks import check_image_size

    unet, vae = base_config("unet"), base_config("vae")
    # SDXL base: VAE 4 levels (x8), UNet 3 levels (x4) -> 32; native 128 latent cells x 8 = 1024 px.
    assert check_image_size(unet, vae, None, None) == (1024, 1024)
    assert check_image_size(unet, vae, 32, 96) == (32, 96)
    with pytest.raises(ProbeError, match="multiples of 32"):
        check_image_size(unet, vae, 8, 1024)
    with pytest.raises(ProbeError, match="multiples of 32"):
        check_image_size(unet, vae, 1024, 1000)


@pytest.mark.parametrize("command", [["generate", "x", "--out", "o.png"], ["embed", "--toy-pairs", "2"],
                                     ["attention", "generate", "x"], ["toy", "evaluate"]])  # fmt: skip
def test_cuda_without_cuda_is_one_line_exit_2(command, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "sdxl_probe.cli", *command, "--device", "cuda"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: --device cuda: CUDA is not available on this machine; devices here: cpu"
    ]


def test_release_frees_networks_after_their_last_use_without_changing_images(tiny_components):
    import copy

    import numpy as np

    from sdxl_probe.pipeline.sampling import generate_images

    kept = generate_images(tiny_components, ["red circle", "blue star"], seed=3, steps=2, cfg=3.0, batch_size=1)
    parts = copy.deepcopy(tiny_components)
    released = generate_images(parts, ["red circle", "blue star"], seed=3, steps=2, cfg=3.0, batch_size=1,
                               release=True)  # fmt: skip
    np.testing.assert_array_equal(kept, released)
    assert (parts.text_encoder, parts.text_encoder_2, parts.unet) == (None, None, None)
    assert parts.vae is not None and tiny_components.unet is not None
