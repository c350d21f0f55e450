"""The shipped toy model (preset "toy") and its pretraining recipe (run only on the tiny config)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
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


# Shipped figures (sdxl_probe/toy/weights/README.md, 212 prompts, 20 Euler steps, cfg 5): figure -> (group, rate).
SHIPPED = {"single_colour": ("single", 0.989), "single_shape": ("single", 0.904),
           "two_both_colours": ("two", 0.966)}
SHIPPED_EMPTY = {"empty_colour": 0.184, "empty_shape": 0.289}  # chance 1/7 and 1/4; the shipped rate is higher
ALPHA = 0.001  # one-sided: a seeded run this unlucky for an unchanged model has probability <= 0.1%


def _binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def binomial_floor(n: int, p: float, alpha: float = ALPHA) -> int:
    """Fewest successes in ``n`` draws at rate ``p`` not in the lower ``alpha`` tail: max k with P(X < k) <= alpha."""
    return max(k for k in range(n + 1) if k == 0 or _binomial_cdf(k - 1, n, p) <= alpha)


def binomial_ceiling(n: int, p: float, alpha: float = ALPHA) -> int:
    """Most successes not in the upper ``alpha`` tail: min k with P(X > k) <= alpha."""
    return min(k for k in range(n + 1) if 1 - _binomial_cdf(k, n, p) <= alpha)


def test_binomial_bounds_against_the_normal_approximation():
    """Oracle: the brief's normal bound p - 3.1 sqrt(p (1 - p) / n), which the exact tail matches for mid p."""
    n, p = 400, 0.5
    normal = p - 3.1 * math.sqrt(p * (1 - p) / n)
    assert abs(binomial_floor(n, p) / n - normal) < 0.01
    assert abs(binomial_ceiling(n, p) / n - (1 - normal)) < 0.01
    assert binomial_floor(10, 1.0) == 10 and binomial_ceiling(10, 0.0) == 0


@pytest.mark.slow
def test_toy_model_quality_pinned_by_a_smaller_evaluate_run(toy):
    """A 56-prompt ``toy evaluate`` run (20 Euler steps, cfg 5, seed 0) against the shipped figures.

    Oracle: the shipped figures of the 212-prompt run; each group's count of correct images must
    reach the lower 0.1% quantile of Binomial(n, shipped rate), and the empty prompt (which cannot
    know its target) must stay under the upper 0.1% quantile at the shipped empty rate.
    """
    from sdxl_probe.probes.toy_eval.core import evaluate_model

    result, _, _ = evaluate_model(toy, n_prompts=56, seed=0, steps=20, cfg=5.0, n_attention=0, log=lambda _: None)
    f, counts = result.figures, result.counts
    print("\ntoy model, 56-prompt evaluate run:", {k: round(v, 3) for k, v in f.items()}, counts)
    assert counts == {"single": 24, "heldout": 6, "two": 16, "empty": 10}
    for name, (group, rate) in SHIPPED.items():
        n = counts[group]
        hits = round(f[name] * n)
        floor = binomial_floor(n, rate)
        print(f"  {name}: {hits}/{n} = {f[name]:.3f}, floor {floor}/{n} (shipped {rate})")
        assert hits >= floor, f"{name} {hits}/{n} below the binomial floor {floor}/{n} of the shipped {rate}"
    for name, rate in SHIPPED_EMPTY.items():
        n = counts["empty"]
        hits = round(f[name] * n)
        ceiling = binomial_ceiling(n, rate)
        print(f"  {name}: {hits}/{n} = {f[name]:.3f}, ceiling {ceiling}/{n} (shipped {rate})")
        assert hits <= ceiling, f"{name} {hits}/{n} above {ceiling}/{n}: the empty prompt knows its target"


# ---------------------------------------------------------------- the recipe, on the tiny config


def _tiny_config():
    from sdxl_probe.train.toy_recipe.pretrain import PretrainConfig

    return PretrainConfig(arch="tiny", n_images=32, vae_steps=3, vae_batch_size=4,
                          steps=4, batch_size=4, warmup_steps=1, checkpoint_every=100)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{f.parent.name}/{k}": v for f in sorted(model_dir.glob("*/*.safetensors")) for k, v in load_file(f).items()}


# A tiny recipe that trains long enough (joint steps at ~12 steps/s on one thread) to be stopped in the middle.
TINY_RECIPE = """arch = "tiny"
n_images = 32
vae_steps = 3
vae_batch_size = 4
steps = 150
batch_size = 4
warmup_steps = 1
checkpoint_every = 1000
threads = 1
"""
STOPPED = re.compile(r"error: stopped at joint step (\d+); state saved in (\S+); rerun with --resume")


def _pretrain(config: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    """``sdxl-probe toy pretrain`` in its own process, output unbuffered."""
    cmd = [sys.executable, "-m", "sdxl_probe.cli", "toy", "pretrain", "--config", str(config), "--out", str(out),
           "--seed", "3", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, text=True, **popen)


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_equals_uninterrupted(tmp_path):
    """A real SIGINT mid-training: clean exit, state saved, and the resumed run is bit-identical.

    Oracle: an uninterrupted run of the same config and seed (run alongside, in its own process).
    """
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RECIPE)
    straight = _pretrain(config, tmp_path / "a", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(tmp_path / "b.err", "w") as err:
        run = _pretrain(config, tmp_path / "b", stdout=subprocess.PIPE, stderr=err)
        seen = []
        for line in run.stdout:
            seen.append(line)
            if line.startswith("joint step 25/"):
                os.kill(run.pid, signal.SIGINT)
                break
        rest, _ = run.communicate(timeout=120)
    stderr = (tmp_path / "b.err").read_text()
    assert seen and seen[-1].startswith("joint step 25/"), "".join(seen) + stderr
    assert run.returncode == 2, stderr  # the CLI's exit code for a ProbeError (TrainingStopped)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    match = STOPPED.fullmatch(last)
    assert match and sum("stopped" in line for line in stderr.splitlines()) == 1, stderr
    stopped_at = int(match.group(1))
    assert 25 <= stopped_at < 150 and "done:" not in rest
    state = json.loads((tmp_path / "b" / "state" / "joint_state.json").read_text())
    assert state["info"] == {"step": stopped_at, "seed": 3}
    assert Path(match.group(2)) == tmp_path / "b" / "state" / "joint_state.safetensors"

    resumed = _pretrain(config, tmp_path / "b", "--resume", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err_text = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err_text
    assert f"joint: resumed at step {stopped_at}/150" in out
    assert straight.wait(timeout=180) == 0
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert set(a) == set(b) and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_rerun_without_resume_refuses_to_overwrite_state(tmp_path):
    from sdxl_probe.train.toy_recipe.pretrain import pretrain

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "joint_state.safetensors").write_bytes(b"")
    with pytest.raises(ProbeError, match="--resume"):
        pretrain(tmp_path, _tiny_config(), seed=3, log=lambda _: None)


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
