"""The shipped toy model (preset "toy") and its pretraining recipe (run only on the tiny config)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from sdxl_probe.errors import ProbeError

WEIGHTS = Path(__file__).resolve().parents[1] / "sdxl_probe" / "toy" / "weights"


@pytest.fixture(scope="module")
def toy():
    from sdxl_probe.models.load import load_components

    return load_components("toy", dtype=torch.float32)


def test_shipped_weights_are_fp16_safetensors_within_budget():
    from safetensors import safe_open

    files = sorted(WEIGHTS.glob("*/*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20
    for f in files:
        with safe_open(str(f), "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F16"}, f
    index = json.loads((WEIGHTS / "model_index.json").read_text())
    assert index["force_zeros_for_empty_prompt"] is False  # trained with caption dropout to ""


def test_toy_is_the_sdxl_architecture_family(toy):
    from sdxl_probe.toy.model_config import TOY, unet_config

    assert toy.kind == "toy" and toy.is_toy
    assert toy.unet.config.addition_embed_type == "text_time"
    assert toy.text_encoder.config.hidden_size != toy.text_encoder_2.config.hidden_size
    assert toy.unet.config.cross_attention_dim == TOY.context_dim
    assert toy.text_encoder.config.vocab_size == toy.text_encoder_2.config.vocab_size == 49408
    assert list(toy.unet.config.block_out_channels) == list(unet_config(TOY)["block_out_channels"])
    assert toy.vae_scale_factor * toy.unet.config.sample_size == TOY.image_size
    s = toy.scheduler.config
    assert (s.beta_start, s.beta_end, s.beta_schedule, s.num_train_timesteps) == (0.00085, 0.012, "scaled_linear", 1000)


def test_single_file_round_trip_keeps_every_tensor(toy, tmp_path):
    from sdxl_probe.models.load import load_components
    from sdxl_probe.models.single_file import save_single_file

    path = save_single_file(toy, tmp_path / "toy_sai.safetensors")
    back = load_components(path, dtype=torch.float32)
    assert back.kind == "toy"
    for name, model in toy.models():
        theirs = dict(getattr(back, name).state_dict())
        mine = model.state_dict()
        assert set(mine) == set(theirs), name
        for key, value in mine.items():
            torch.testing.assert_close(theirs[key], value, rtol=0, atol=0, msg=f"{name}.{key}")


def test_toy_generates_and_the_prompt_changes_the_image(toy, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.pipeline.sampling import generate_images

    images = generate_images(toy, ["red circle, white background", "blue square, black background"], seed=0, steps=8)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    again = generate_images(toy, ["red circle, white background", "red circle, white background"], seed=0, steps=8)
    assert np.abs(images[1].astype(int) - again[1].astype(int)).mean() > 1.0  # same noise, other prompt
    out = tmp_path / "toy.png"
    result = CliRunner().invoke(app, ["generate", "a red circle", "--model", "toy", "--steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 64) and "toy model" in result.output


@pytest.mark.slow
def test_evaluate_writes_figures_and_report(toy, tmp_path):
    from sdxl_probe.probes.toy_eval.core import ToyEvaluation, evaluate_model
    from sdxl_probe.probes.toy_eval.report import write_outputs

    result, images, prompts = evaluate_model(toy, n_prompts=10, steps=4, n_attention=4, log=lambda _: None)
    write_outputs(tmp_path, result, images, prompts)
    loaded = ToyEvaluation.load(tmp_path)
    assert loaded.is_toy and set(loaded.counts) == {"single", "heldout", "two", "empty"}
    assert all(0.0 <= v <= 1.0 for v in loaded.figures.values())
    assert 0.0 <= loaded.attention["iou"] <= 1.0
    assert "toy model" in (tmp_path / "report.html").read_text()


# ---------------------------------------------------------------- the recipe, on the tiny config


def _tiny_config():
    from sdxl_probe.train.toy_recipe.pretrain import PretrainConfig

    return PretrainConfig(arch="tiny", n_images=32, vae_steps=3, vae_batch_size=4,
                          steps=4, batch_size=4, warmup_steps=1, checkpoint_every=100)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{f.parent.name}/{k}": v for f in sorted(model_dir.glob("*/*.safetensors")) for k, v in load_file(f).items()}


def test_pretrain_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    import sdxl_probe.train.toy_recipe.pretrain as recipe
    from sdxl_probe.train.state import StopFlag, TrainingStopped

    straight = _weights(recipe.pretrain(tmp_path / "a", _tiny_config(), seed=3, log=lambda _: None))

    class StopAfterTwoSteps(StopFlag):  # the loop reads the flag twice per step
        reads = 0

        @property
        def requested(self):
            self.reads += 1
            return self.reads > 4

        @requested.setter
        def requested(self, value):
            pass

    @contextmanager
    def interrupt():
        yield StopAfterTwoSteps()

    with monkeypatch.context() as m:
        m.setattr(recipe, "graceful_stop", interrupt)
        with pytest.raises(TrainingStopped, match="--resume"):
            recipe.pretrain(tmp_path / "b", _tiny_config(), seed=3, log=lambda _: None)
    state = json.loads((tmp_path / "b" / "state" / "joint_state.json").read_text())
    assert state["info"]["step"] == 3
    with pytest.raises(ProbeError, match="--resume"):
        recipe.pretrain(tmp_path / "b", _tiny_config(), seed=3, log=lambda _: None)
    resumed = _weights(recipe.pretrain(tmp_path / "b", _tiny_config(), seed=3, resume=True, log=lambda _: None))
    assert set(resumed) == set(straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


def test_pretrain_writes_a_loadable_diffusers_folder(tmp_path):
    from sdxl_probe.models.load import load_components
    from sdxl_probe.train.toy_recipe.pretrain import pretrain

    model_dir = pretrain(tmp_path, _tiny_config(), seed=0, log=lambda _: None)
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["force_zeros_for_empty_prompt"] is False
    back = load_components(model_dir, dtype=torch.float32)
    assert back.kind == "tiny" and back.vae.config.scaling_factor != 1.0
    assert np.isfinite(back.vae.config.scaling_factor)


def test_every_step_draws_its_own_batch():
    from sdxl_probe.train.toy_recipe.data import step_rng

    draws = {tuple(torch.randint(0, 10**6, (4,), generator=step_rng(0, "joint", s)[1]).tolist()) for s in range(300)}
    assert len(draws) == 300  # a seed derived from a truncated key once gave every step the same batch
    assert step_rng(0, "vae", 5)[0].random() != step_rng(1, "vae", 5)[0].random()
    again = torch.randint(0, 10**6, (4,), generator=step_rng(0, "joint", 7)[1])
    assert torch.equal(again, torch.randint(0, 10**6, (4,), generator=step_rng(0, "joint", 7)[1]))


def test_pooled_dropout_zeroes_whole_rows_at_the_rate():
    from sdxl_probe.train.toy_recipe.pretrain import drop_pooled

    pooled = torch.randn(4000, 8) + 3.0
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(drop_pooled(pooled, gen, 0.0), pooled)
    out = drop_pooled(pooled, gen, 0.25)
    zeroed = (out == 0).all(dim=1)
    assert torch.equal(out[~zeroed], pooled[~zeroed])  # kept rows untouched
    assert 0.22 < zeroed.float().mean().item() < 0.28


def test_training_attention_is_switched_back_to_sdpa(tiny_components):
    import copy

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from sdxl_probe.train.toy_recipe.pretrain import set_training_attention

    unet, te = copy.deepcopy(tiny_components.unet), copy.deepcopy(tiny_components.text_encoder)  # shared fixture
    set_training_attention([unet, te], eager=True)
    assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())
    assert te.config._attn_implementation == "eager"
    set_training_attention([unet, te], eager=False)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert te.config._attn_implementation == "sdpa"
