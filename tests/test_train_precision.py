"""The trainer's precision path through accelerate: gradient checkpointing, bf16 autocast, fp16 refusal, resume.

Every test runs the trainer's real optimizer step (:func:`sdxl_probe.train.lora.loop.optimizer_step`)
on the tiny random SDXL-architecture components at 32 px. Oracles: the same step without
checkpointing / in fp32 (an independent run of the same draws), PyTorch's own autocast dtype rules
(a Linear under bf16 autocast returns bf16) and the uninterrupted run for resume (``torch.equal``).
"""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import pytest
import torch

from sdxl_probe.config import from_dict
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora import batch, checkpoints, loop
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.state import TrainingStopped

QUIET = {"progress_bar": False, "log_every_n_steps": 1000}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("precision") / "ds"
    write_dataset(root, n=4, seed=5, size=32, trigger="zkw")
    return root


def config(ds: Path, out: Path, *, training: dict, network: dict | None = None, optimizer: dict | None = None,
           saving: dict | None = None) -> TrainConfig:  # fmt: skip
    return from_dict(TrainConfig, {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2},
        "network": {"dim": 4, "alpha": 4.0, "target": "attn", **(network or {})},
        "optimizer": {"unet_lr": 1e-3, "text_encoder_1_lr": 1e-3, **(optimizer or {})},
        "training": {"max_train_steps": 4, "seed": 7, "threads": 1, **training},
        "saving": {"output_dir": str(out), "output_name": "p", **(saving or {})},
        "logging": QUIET,
    })  # fmt: skip


def build(tiny_components, cfg: TrainConfig, out: Path) -> loop.Run:
    return loop.setup(cfg, out, resume=False, log=lambda s: None, components=copy.deepcopy(tiny_components))


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def capture_grads(run: loop.Run) -> list[torch.Tensor]:
    """Each LoRA parameter's accumulated gradient, copied as backward finishes it (before AdamW uses it)."""
    grads: dict[int, torch.Tensor] = {}
    for i, p in enumerate(run.network.all_params()):
        p.register_post_accumulate_grad_hook(lambda q, i=i: grads.__setitem__(i, q.grad.detach().clone()))
    return grads


def test_gradient_checkpointing_same_gradients_and_really_recomputes(tiny_components, ds, tmp_path):
    """Oracle: the same optimizer step without checkpointing (same (seed, micro-step) draws, LoRA dropout on).

    Gradients of every LoRA weight (UNet and text encoder 1) agree to fp32 rounding; with
    checkpointing the first attention of a UNet transformer block and of a CLIP layer run their
    forward twice per micro-step (forward, then the recompute in backward), without once. (Hooks sit
    on early sub-blocks: torch's non-reentrant recompute stops once the last saved tensor is back,
    before a layer's final sub-block returns.)
    """
    runs, grads, calls = {}, {}, {}
    for gc in (False, True):
        cfg = config(ds, tmp_path / str(gc), training={"gradient_checkpointing": gc},
                     network={"dropout": 0.1, "train_text_encoder_1": True}, optimizer={"max_grad_norm": 0.0})  # fmt: skip
        run = runs[gc] = build(tiny_components, cfg, tmp_path / str(gc))
        unet_block = next(m for m in run.components.unet.modules() if type(m).__name__ == "BasicTransformerBlock")
        te_layer = run.components.text_encoder.get_submodule("encoder.layers.0")
        calls[gc] = (count_calls(unet_block.attn1), count_calls(te_layer.self_attn))
        grads[gc] = capture_grads(run)
        loss, _, _ = loop.optimizer_step(run, 0, 0)
        assert torch.isfinite(torch.tensor(loss))
    assert [c[0] for c in calls[False]] == [1, 1]
    assert [c[0] for c in calls[True]] == [2, 2]  # oracle: 2x the plain forward count
    n_unet = len(runs[True].network.params["unet"])  # then text encoder 1's (its last layer feeds nothing used)
    assert grads[False].keys() == grads[True].keys() and set(range(n_unet)) < grads[True].keys()
    for i, g in grads[False].items():
        torch.testing.assert_close(grads[True][i], g, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads[True].values())  # the comparison is not between zeros


def test_checkpointing_is_off_in_validation(tiny_components, ds, tmp_path):
    """Oracle: a no-grad forward of the same model without checkpointing calls each block once.

    Validation runs under ``no_grad`` in eval mode, where neither diffusers nor transformers checkpoint.
    """
    cfg = config(ds, tmp_path, training={"gradient_checkpointing": True}, network={"train_text_encoder_1": True})
    cfg.dataset.validation_split = 0.25
    run = build(tiny_components, cfg, tmp_path)
    unet_block = next(m for m in run.components.unet.modules() if type(m).__name__ == "BasicTransformerBlock")
    calls = count_calls(unet_block.attn1)
    assert batch.validation_loss(run) is not None
    per_image = len(cfg.logging.validation_timesteps)
    assert calls[0] == per_image * len(run.val_idx)
    assert run.components.text_encoder.training  # back in train mode after validation


def test_bf16_runs_unet_matmuls_in_bf16_and_keeps_lora_fp32(tiny_components, ds, tmp_path):
    """Oracle: PyTorch's autocast rules (a Linear under bf16 autocast returns bf16) and the fp32 step.

    In the bf16 run a LoRA-wrapped ``to_q`` base Linear of the UNet returns bf16, while every LoRA
    parameter and its gradient stay fp32 (the master copy). On the same batch (same draws) the
    UNet's noise prediction differs from fp32 by 0.1% to 5% in relative L2 norm (bf16 keeps 8
    mantissa bits, 2^-9 relative rounding per op, compounding over the layers; measured 1.7%), and
    the loss, a mean over every element, by at most 1e-3 relative (measured 1.2e-5).
    """
    losses, dtypes, preds = {}, {}, {}
    for precision in ("no", "bf16"):
        run = build(tiny_components, config(ds, tmp_path / precision, training={"mixed_precision": precision}),
                    tmp_path / precision)  # fmt: skip
        to_q = next(m for n, m in run.components.unet.named_modules() if n.endswith("attn1.to_q"))
        seen = []
        to_q.base_layer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        run.components.unet.register_forward_hook(lambda m, i, o, p=precision: preds.update({p: o.sample.float()}))
        grads = capture_grads(run)
        losses[precision], _, _ = loop.optimizer_step(run, 0, 0)
        dtypes[precision] = (set(seen), {g.dtype for g in grads.values()},
                             {p.dtype for p in run.network.all_params()})  # fmt: skip
    assert dtypes["no"] == ({torch.float32}, {torch.float32}, {torch.float32})
    assert dtypes["bf16"] == ({torch.bfloat16}, {torch.float32}, {torch.float32})
    gap = ((preds["bf16"] - preds["no"]).norm() / preds["no"].norm()).item()
    assert 1e-3 < gap < 0.05, gap
    assert losses["bf16"] == pytest.approx(losses["no"], rel=1e-3)


def test_fp16_on_cpu_is_one_line_exit_2_before_weights_load(tmp_path, monkeypatch, capsys):
    """Oracle: the policy in the brief: fp16 on a CPU device is refused (no fp16 speed there), exit 2.

    ``read_configs``/``load_components`` are replaced by tripwires: the refusal must come first.
    """
    from typer.testing import CliRunner

    import sdxl_probe.models.load as load_module
    from sdxl_probe.cli import app
    from sdxl_probe.errors import ProbeError

    def tripwire(*a, **k):
        raise AssertionError("a model was read before the fp16 refusal")

    monkeypatch.setattr(load_module, "load_components", tripwire)
    monkeypatch.setattr(load_module, "read_configs", tripwire)
    (tmp_path / "data").mkdir()
    path = tmp_path / "run.toml"
    path.write_text(f'[dataset]\npath = "{tmp_path / "data"}"\nresolution = 64\n[training]\ndevice = "cpu"\n'
                    f'mixed_precision = "fp16"\n[saving]\noutput_dir = "{tmp_path / "r"}"\n', encoding="utf-8")  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(path)])
    assert isinstance(result.exception, ProbeError), result.output
    message = str(result.exception)
    assert "\n" not in message and "fp16" in message and "CPU" in message and '"bf16"' in message
    with pytest.raises(SystemExit) as exit_info:  # ProbeApp, as the installed command runs it
        app(["train", str(path)], prog_name="sdxl-probe")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message}"


def test_bf16_with_checkpointing_resume_is_bit_identical(tiny_components, ds, tmp_path, monkeypatch):
    """Oracle: the uninterrupted bf16 + checkpointing run, compared with ``torch.equal`` (no tolerance)."""
    from safetensors.torch import load_file

    def cfg(out: Path) -> TrainConfig:
        return config(ds, out, training={"mixed_precision": "bf16", "gradient_checkpointing": True},
                      network={"dropout": 0.1}, saving={"save_every_n_steps": 2})  # fmt: skip

    quiet = {"log": lambda s: None}
    full = loop.train(cfg(tmp_path / "a"), tmp_path / "a", components=copy.deepcopy(tiny_components), **quiet)
    real_append = checkpoints.append_metrics

    def stop_after_3(run_dir, record):
        real_append(run_dir, record)
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoints, "append_metrics", stop_after_3)
    with pytest.raises(TrainingStopped, match="stopped at step 3"):
        loop.train(cfg(tmp_path / "b"), tmp_path / "b", components=copy.deepcopy(tiny_components), **quiet)
    monkeypatch.setattr(checkpoints, "append_metrics", real_append)
    resumed = loop.train(cfg(tmp_path / "b"), tmp_path / "b", resume=True,
                         components=copy.deepcopy(tiny_components), **quiet)  # fmt: skip
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(str(tmp_path / "a" / "p-step00000002.safetensors"))
    assert any(not torch.equal(v, a[k]) for k, v in first.items())  # steps 3-4 moved the LoRA


@pytest.mark.gpu
def test_fp16_on_cuda_scales_the_loss_and_resumes_the_scaler(tiny_components, ds, tmp_path):
    """Oracle: accelerate's fp16 recipe: a Linear under fp16 autocast returns fp16, LoRA weights stay fp32,
    and the GradScaler's state is saved with the step and restored on resume (else a resumed fp16 run
    would restart at the initial loss scale)."""
    import json

    cfg = config(ds, tmp_path, training={"mixed_precision": "fp16", "device": "cuda"})
    run = build(tiny_components, cfg, tmp_path)
    assert run.accelerator.scaler is not None
    to_q = next(m for n, m in run.components.unet.named_modules() if n.endswith("attn1.to_q"))
    seen = []
    to_q.base_layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loop.optimizer_step(run, 0, 0)
    assert seen == [torch.float16] and {p.dtype for p in run.network.all_params()} == {torch.float32}
    checkpoints.save(run, 1, 1)
    info = json.loads(checkpoints.state_files(tmp_path)[-1].with_suffix(".json").read_text())["info"]
    assert info["grad_scaler"]["scale"] == run.accelerator.scaler.get_scale()
    resumed = loop.setup(cfg, tmp_path, resume=True, log=lambda s: None, components=copy.deepcopy(tiny_components))
    assert resumed.start_step == 1 and resumed.accelerator.scaler.state_dict() == run.accelerator.scaler.state_dict()
