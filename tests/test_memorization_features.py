"""The copy cosine in an open_clip image encoder's feature space, and its bad inputs.

Oracles: open_clip's own ``encode_image`` of its own eval transform, on the very model whose state dict was
saved, L2-normalised and dotted by hand; the CLI refusals (a pickle, weights of another architecture, a
missing file, an unknown architecture) each one line, exit 2, with the model loader and the sampler
replaced by functions that fail the test if reached (as tests/test_memorization_inputs.py).
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_memorization_inputs import make_run, no_model, run_cli  # noqa: F401  (no_model is a fixture)

from sdxl_probe.errors import ProbeError
from sdxl_probe.probes.memorization.features import load_encoder
from sdxl_probe.probes.memorization.generate import Generation
from sdxl_probe.probes.memorization.measures import image_features, image_measures, to_unit


def tiny_config(width: int) -> dict:
    """A 1-layer ViT on 32 px images (16 px patches) and a 1-layer text tower: builds in milliseconds."""
    return {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": width, "patch_size": 16,
                                            "head_width": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Registers open_clip archs "probe-tiny-a" (width 32) and "probe-tiny-b" (width 48); saves a's weights."""
    folder = tmp_path_factory.mktemp("clip")
    for name, width in (("probe-tiny-a", 32), ("probe-tiny-b", 48)):
        (folder / f"{name}.json").write_text(json.dumps(tiny_config(width)))
        open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("probe-tiny-a", pretrained=None)
    weights = folder / "a.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return model.eval(), preprocess, weights


def by_hand(model, preprocess, images: np.ndarray) -> torch.Tensor:
    from PIL import Image

    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
        f = model.encode_image(x).float()
    return f / f.norm(dim=1, keepdim=True)


def test_feature_cosine_is_open_clips_normalised_dot_product(tiny_clip):
    """Oracle: the saved model's encode_image on its eval transform of each image (40 x 48 px: resized and
    cropped), divided by its norm; the copy cosine is the largest dot product of a generation with the image."""
    model, preprocess, weights = tiny_clip
    rng = np.random.default_rng(0)
    gens_px = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    own_px = rng.integers(0, 256, (1, 40, 48, 3), dtype=np.uint8)
    encoder = load_encoder("probe-tiny-a", weights)
    got_gen = image_features(None, gens_px, 2, encoder)  # batch 2: the batching must not change a row
    got_own = image_features(None, own_px, 2, encoder)
    want_gen, want_own = by_hand(model, preprocess, gens_px), by_hand(model, preprocess, own_px)
    torch.testing.assert_close(got_gen, want_gen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_own, want_own, atol=1e-5, rtol=1e-5)
    gens = [Generation(torch.from_numpy(p), torch.zeros(1), torch.full((1, 4), 0.25)) for p in gens_px]
    measured = image_measures(gens, to_unit(own_px), got_own, got_gen)
    assert measured["copy_cosine"] == pytest.approx(float((want_gen @ want_own[0]).max()), abs=1e-5)
    assert "open_clip probe-tiny-a" in encoder.label


def test_weights_of_another_architecture_are_one_error(tiny_clip):
    """Oracle: a (width 32) state dict loaded into "probe-tiny-b" (width 48) cannot fit."""
    with pytest.raises(ProbeError, match="does not fit open_clip probe-tiny-b") as e:
        load_encoder("probe-tiny-b", tiny_clip[2])
    assert "\n" not in str(e.value)


def bad_rows(tmp_path, weights):
    pickle = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(1)}, pickle)
    return [
        (["--features-model", "probe-tiny-a", "--features-weights", str(pickle)], "not a .safetensors file"),
        (["--features-model", "probe-tiny-b", "--features-weights", str(weights)], "does not fit open_clip"),
        (["--features-model", "probe-tiny-a", "--features-weights", str(tmp_path / "no.safetensors")], "not found"),
        (["--features-model", "no-such-arch", "--features-weights", str(weights)], "not an open_clip architecture"),
        (["--features-weights", str(weights)], "needs --features-model"),
    ]


def test_bad_feature_options_are_refused_before_generation(tmp_path, tiny_clip, no_model):  # noqa: F811
    """Oracle: each row's message, one line, exit 2; the loader and sampler are never reached (no_model)."""
    run = make_run(tmp_path)
    for extra, expected in bad_rows(tmp_path, tiny_clip[2]):
        code, message = run_cli(["memorization", str(run), "--out", str(tmp_path / "out"), *extra])
        assert code == 2, (extra, message)
        assert expected in message and "\n" not in message.strip(), (extra, message)


def test_saved_weights_round_trip(tiny_clip):
    """Oracle: safetensors returns the model's own tensors (the file the probe loads is the model tested above)."""
    model, _, weights = tiny_clip
    loaded = load_file(str(weights))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # about 50 s on a loaded 2-core CPU, nearly all of it the tiny UNet's denoising-loss bank
def test_measure_uses_the_encoder_and_the_result_names_it(tmp_path, tiny_clip, tiny_components):
    """Oracle: with --features-model the result's settings name the open_clip feature space, the report says it,
    and every image's copy_cosine at the checkpoint is finite (the tiny model, 2 seeds, 1 step, one LoRA)."""
    import math

    from PIL import Image

    from sdxl_probe.probes.memorization.core import measure_files

    data = tmp_path / "data"
    (data / "1_square").mkdir(parents=True)  # a kohya folder: repeats_name
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(data / "1_square" / f"{name}.png")
        (data / "1_square" / f"{name}.txt").write_text(f"a {name} square")
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"  # tiny: context 96 -> 64
    lora = tmp_path / "lora-step00000010.safetensors"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 96), f"{key}.lora_up.weight": torch.zeros(64, 4),
               f"{key}.alpha": torch.tensor(4.0)}, str(lora))  # fmt: skip
    result = measure_files([lora], data, tmp_path / "out", model="tiny", components=tiny_components, log=lambda _: None,
                           seeds=2, steps=1, sensitivity_seeds=0, significance_captions=0,
                           features_model="probe-tiny-a", features_weights=str(tiny_clip[2]))  # fmt: skip
    assert result.settings["features"].startswith("open_clip probe-tiny-a")
    assert all(math.isfinite(v) for v in result.image_scores(10, "copy_cosine"))
    assert len(result.image_scores(10, "copy_cosine")) == 2
    assert "open_clip probe-tiny-a" in (tmp_path / "out" / "memorization.html").read_text(encoding="utf-8")
