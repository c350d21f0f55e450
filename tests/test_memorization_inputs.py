"""Bad input to ``sdxl-probe memorization``: one line, exit 2, before the model loads or anything is generated.

Oracles: the refusals the issue names (no checkpoints, a LoRA for another base model, images that do not
match the run's manifest by sha256), checked through the real CLI (typer's CliRunner, as
tests/test_bad_inputs.py), with the model loader and the sampler replaced by functions that fail the test
if they are reached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.errors import ProbeError
from sdxl_probe.probes.memorization import core, generate
from sdxl_probe.probes.memorization.inputs import Checkpoint


def run_cli(args: list[str]) -> tuple[int, str]:
    """(exit code, message) as the user sees them (ProbeApp prints ProbeError as one line, exit 2)."""
    r = CliRunner().invoke(app, args)
    if isinstance(r.exception, ProbeError):
        return 2, f"error: {r.exception}"
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"traceback for {args}") from r.exception
    return r.exit_code, r.output


@pytest.fixture
def no_model(monkeypatch):
    """Reaching the model loader or the sampler fails the test."""

    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded or an image generated before the bad input was refused")

    monkeypatch.setattr(core, "_load", refuse)
    monkeypatch.setattr(generate, "run_batch", refuse)


def kohya_unet_lora(path: Path, in_features: int = 32, rank: int = 4) -> Path:
    """A kohya LoRA file with one UNet module (``lora_unet_`` keys: an SDXL-family or UNet-only LoRA)."""
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.zeros(rank, in_features),
               f"{key}.lora_up.weight": torch.zeros(32, rank), f"{key}.alpha": torch.tensor(float(rank))},
              str(path))  # fmt: skip
    return path


def make_run(tmp_path: Path, *, lora: bool = True, sha: str | None = None) -> Path:
    """A run folder as the trainer writes it: config, manifest of one image, metrics, optionally a LoRA."""
    from PIL import Image

    run = tmp_path / "run"
    run.mkdir()
    image = tmp_path / "data" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(image)
    digest = sha or hashlib.sha256(image.read_bytes()).hexdigest()
    (run / "config.json").write_text(json.dumps({"model": {"source": "toy"}, "dataset": {"path": str(image.parent)},
                                                 "saving": {"output_name": "lora"}}))  # fmt: skip
    (run / "manifest.json").write_text(json.dumps({"images": [
        {"file": str(image), "sha256": digest, "caption": "a red square", "split": "train", "bucket": [64, 64]}]}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 0.1, "lr": 1e-3}) + "\n")
    if lora:
        kohya_unet_lora(run / "lora-step00000010.safetensors")
    return run


def test_run_without_checkpoints_is_refused(tmp_path, no_model):
    """Oracle: a run folder holding config, manifest and metrics but no LoRA file."""
    code, message = run_cli(["memorization", str(make_run(tmp_path, lora=False))])
    assert code == 2
    assert "no LoRA checkpoints" in message and "\n" not in message.strip()


def test_images_that_do_not_match_the_manifest_are_refused(tmp_path, no_model):
    """Oracle: the manifest's sha256 of the image is not the file's (the dataset changed since training)."""
    code, message = run_cli(["memorization", str(make_run(tmp_path, sha="0" * 64))])
    assert code == 2
    assert "does not match the run's manifest" in message and "a.png" in message


def test_lora_for_sd1_is_refused_from_its_header(tmp_path, no_model):
    """Oracle: ``lora_te_`` keys mean one text encoder, an SD 1.x/2.x LoRA (``model info``'s architecture rule)."""
    run = make_run(tmp_path, lora=False)
    key = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": torch.zeros(3072, 4)},
              str(run / "lora-step00000010.safetensors"))  # fmt: skip
    code, message = run_cli(["memorization", str(run)])
    assert code == 2
    assert "a LoRA for another base model" in message


def test_lora_whose_shapes_do_not_fit_the_model_is_refused_before_generation(tmp_path, tiny_components, monkeypatch):
    """Oracle: a UNet LoRA whose down matrix has 7 input features where the tiny model's attn2.to_k takes its
    context width: loading it fails, and the run stops before the sampler is called."""

    def refuse(*_a, **_k):
        raise AssertionError("generated before the bad LoRA was refused")

    monkeypatch.setattr(generate, "run_batch", refuse)
    path = kohya_unet_lora(tmp_path / "other.safetensors", in_features=7)
    with pytest.raises(ProbeError, match="do not fit this model|no LoRA layer matched"):
        core._test_load(tiny_components, [Checkpoint(10, path, "x")])


def test_lora_form_needs_dataset_and_model(tmp_path, no_model):
    """Oracle: the issue's second form is ``--lora FILE ... --dataset DIR --model M``; without --dataset it is refused."""
    code, message = run_cli(["memorization", "--lora", str(kohya_unet_lora(tmp_path / "x.safetensors"))])
    assert code == 2 and "--dataset" in message


def test_out_of_range_option_is_refused(tmp_path, no_model):
    """Oracle: --seeds is declared Range(2, 512) (clique and diversity need two generations)."""
    code, message = run_cli(["memorization", str(make_run(tmp_path)), "--seeds", "1"])
    assert code == 2 and "--seeds" in message
