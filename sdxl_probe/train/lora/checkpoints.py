"""What a run writes and reads back: resumable states, kohya LoRA files, metrics, manifest, samples.

Layout of RUN_DIR::

    config.json                    the resolved config (``--resume`` reads it)
    manifest.json                  the exact dataset: file, sha256, caption, sizes, split
    metrics.jsonl                  one line per optimizer step (loss, lr, grad_norm, val_loss)
    state/step-XXXXXXXX.safetensors  resumable state (LoRA weights, optimizer, LR schedule, EMA), last K kept
    NAME-stepXXXXXXXX.safetensors  kohya LoRA per checkpoint, last K kept
    NAME.safetensors               the final kohya LoRA
    NAME-ema.safetensors           the EMA of its weights ([training] ema_decay > 0)
    report.html                    curves and sample grids (:mod:`sdxl_probe.train.lora.report`)
    samples/step-XXXXXXXX/*.png    sample images

Every file is written atomically, and the LoRA before the state, so a ``kill -9`` loses at most
the steps since the last save. Under ``accelerate launch`` only the main process writes here; every
process reads the same state to resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json
from sdxl_probe.train.lora.export import kohya_metadata, lora_tensors, save_kohya
from sdxl_probe.train.state import load_state, save_state

if TYPE_CHECKING:
    from sdxl_probe.train.lora.loop import Run

STATE_DIR = "state"
METRICS = "metrics.jsonl"
# Sections that must match to resume (the others, and max_train_steps, may change).
RESUME_KEYS = ("model", "dataset", "network", "optimizer")


def state_files(run_dir: Path) -> list[Path]:
    """Saved states, oldest first."""
    return sorted((run_dir / STATE_DIR).glob("step-*.safetensors"))


def _models(run: Run) -> dict[str, torch.nn.Module]:
    return {name: getattr(run.components, name) for name in run.network.params}


def write_run_files(run: Run, *, fresh: bool) -> None:
    """Config and manifest; a fresh run refuses a folder that already holds states, a resumed one drops
    the metric lines written after its state (main process only: every process restores the state)."""
    from sdxl_probe.outputs import clean_stale
    from sdxl_probe.train.lora.data import manifest
    from sdxl_probe.train.lora.loop import resolved_config

    if fresh and state_files(run.run_dir):
        raise ProbeError(f"{run.run_dir} already holds a run; continue it with --resume {run.run_dir} "
                         "or set [saving] output_dir to a new folder")  # fmt: skip
    run.run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run.run_dir, run.run_dir / STATE_DIR):
        if folder.is_dir():
            clean_stale(folder)  # temp files of a killed writer
    write_json(run.run_dir / "config.json", resolved_config(run.cfg))
    write_json(run.run_dir / "manifest.json", {"images": manifest(run.images, run.val_idx)})
    if fresh:
        (run.run_dir / METRICS).unlink(missing_ok=True)
    else:
        _truncate_metrics(run.run_dir, run.start_step)


def tensorboard_writer(enabled: bool, run_dir: Path):
    """A TensorBoard ``SummaryWriter`` on ``RUN_DIR/tensorboard``, or None; a missing package is an error."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ProbeError("[logging] tensorboard = true but the tensorboard package is not installed; "
                         "pip install tensorboard, or set tensorboard = false") from None  # fmt: skip
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def log_tensorboard(writer, record: dict) -> None:
    """One scalar per metric of ``record`` at its step."""
    if writer is None:
        return
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
            writer.add_scalar(f"train/{key}", value, record["step"])
    writer.flush()


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the state a resumed run starts from)."""
    path = run_dir / METRICS
    if path.is_file():
        lines = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        keep = []
        for s in lines:
            try:
                if json.loads(s)["step"] <= step:
                    keep.append(s)
            except (ValueError, KeyError):
                break  # a line torn by a kill
        path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def save(run: Run, step: int, epoch: int) -> None:
    """Write the kohya LoRA of this step, then the resumable state; keep the last K of each."""
    cfg = run.cfg
    lora = run.run_dir / f"{cfg.saving.output_name}-step{step:08d}.safetensors"
    _write_lora(run, lora, step, epoch)
    holder = run.network.state_module(_models(run))
    from sdxl_probe.train.lora.loop import resolved_config

    info = {"step": step, "epoch": epoch, "config": resolved_config(cfg),
            "num_processes": run.accelerator.num_processes}  # fmt: skip
    if run.accelerator.scaler is not None:  # fp16: the loss scale and its growth tracker
        info["grad_scaler"] = run.accelerator.scaler.state_dict()
    save_state(run.run_dir / STATE_DIR / f"step-{step:08d}.safetensors", modules={"lora": holder},
               optimizer=run.optimizer, lr_scheduler=run.lr_scheduler, ema=run.ema, info=info)  # fmt: skip
    k = cfg.saving.save_last_k
    for old in state_files(run.run_dir)[:-k]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    for old in sorted(run.run_dir.glob(f"{cfg.saving.output_name}-step*.safetensors"))[:-k]:
        old.unlink(missing_ok=True)


def _write_lora(run: Run, path: Path, step: int, epoch: int) -> Path:
    bh, bw = run.images[0].bucket
    meta = kohya_metadata(run.cfg, images=run.images, train_idx=run.train_idx, optimizer=optimizer_description(run.cfg),
                          steps=step, epoch=epoch, started=run.started_at, resolution=f"{bw}x{bh}",
                          title=f"{run.cfg.saving.output_name} step {step}")  # fmt: skip
    return save_kohya(path, lora_tensors(_models(run), run.components.unet.config), meta)


def optimizer_description(cfg) -> str:
    """sd-scripts' ``ss_optimizer``: the class and the arguments the run passed it."""
    from sdxl_probe.train.lora.optimizers import describe, optimizer_kwargs

    o = cfg.optimizer
    return describe(o.type, optimizer_kwargs(o.type, o.optimizer_args, weight_decay=o.weight_decay,
                                             betas=o.betas, eps=o.eps))  # fmt: skip


def write_ema(run: Run, path: Path, step: int, epoch: int) -> Path:
    """The EMA weights as a kohya file (swapped in, written, swapped back bit-exactly)."""
    params = run.network.all_params()
    run.ema.store(params)
    run.ema.copy_to(params)
    try:
        return _write_lora(run, path, step, epoch)
    finally:
        run.ema.restore(params)


def restore(run_dir: Path, network, components, optimizer, lr_scheduler, cfg, log, scaler=None, ema=None,
            processes: int = 1) -> int:  # fmt: skip
    """Load the latest state into the freshly built parts (and fp16's GradScaler, the EMA); returns its step.

    ``processes``: how many processes resume it; another count than the saved run's is allowed, with a
    warning (the batch order and the effective batch change from there on).
    """
    from sdxl_probe.train.lora.loop import resolved_config

    files = state_files(run_dir)
    if not files:
        raise ProbeError(f"{run_dir}: no saved state to resume (state/step-*.safetensors); start a new run instead")
    models = {name: getattr(components, name) for name in network.params}
    holder = network.state_module(models)
    info = load_state(files[-1], modules={"lora": holder}, optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema)
    if ema is not None:
        ema.to(device=network.all_params()[0].device)
    now, then = resolved_config(cfg), info["config"]
    for key in RESUME_KEYS:
        if now[key] != then[key]:
            raise ProbeError(f"--resume {run_dir}: [{key}] differs from the saved run; resume with its config.json")
    if scaler is not None and "grad_scaler" in info:
        scaler.load_state_dict(info["grad_scaler"])
    saved = int(info.get("num_processes", 1))
    if saved != processes:
        log(f"warning: {files[-1].name} was trained on {saved} process(es), resumed on {processes}: the batches and "
            f"the effective batch differ from an uninterrupted run (the saved learning rates are kept)")  # fmt: skip
    log(f"resumed {run_dir} at step {info['step']} from {files[-1].name}")
    return int(info["step"])


def finish(run: Run, step: int) -> Path:
    """Write the final kohya file ``NAME.safetensors``; returns its path."""
    out = final_path(run.run_dir, run.cfg.saving.output_name)
    from sdxl_probe.train.lora.parallel import step_epoch
    from sdxl_probe.train.lora.report import render_report

    accum, world = run.cfg.training.gradient_accumulation_steps, run.accelerator.num_processes
    epoch = step_epoch(step - 1, accum, world, run.order.per_epoch) + 1
    path = _write_lora(run, out, step, epoch)
    if run.ema is not None:
        write_ema(run, ema_path(run.run_dir, run.cfg.saving.output_name), step, epoch)
    render_report(run.run_dir)
    return path


def final_path(run_dir: Path, output_name: str) -> Path:
    """``NAME.safetensors``: the final kohya LoRA."""
    return run_dir / f"{output_name}.safetensors"


def ema_path(run_dir: Path, output_name: str) -> Path:
    """``NAME-ema.safetensors``: the EMA of the LoRA weights, beside ``NAME.safetensors``."""
    return run_dir / f"{output_name}-ema.safetensors"


def divergence_message(run: Run, step: int, micro_step: int, loss, timesteps, last_saved: int) -> str:
    """One line: where the loss went bad and what was kept."""
    kept = (f"the last good checkpoint (step {last_saved}) in {run.run_dir} is intact" if last_saved
            else "no checkpoint had been written yet")  # fmt: skip
    loss = loss.detach()
    what = (f"loss is {float(loss)}" if not bool(torch.isfinite(loss))
            else f"loss is not finite on another process (here {float(loss):.4g})")  # data parallel
    return (f"{what} at step {step + 1} (micro-step {micro_step}, timesteps "
            f"{timesteps.tolist()}, lr {run.lr_scheduler.get_last_lr()[0]:.3g}); training stopped and {kept}; "
            "lower the learning rate or enable clipping ([optimizer] max_grad_norm), then resume")  # fmt: skip


def write_samples(run: Run, step: int) -> list[Path]:
    """Images of the prompt file at this step, through the project's sampler (same seeds at every step)."""
    from PIL import Image

    from sdxl_probe.io import write_bytes
    from sdxl_probe.pipeline.sampling import generate_images
    from sdxl_probe.train.lora.batch import eval_mode
    from sdxl_probe.train.lora.prompts import read_prompt_file

    prompts = read_prompt_file(run.cfg.sampling.prompts)
    out = []
    with eval_mode(run.components):
        for i, p in enumerate(prompts):
            image = generate_images(run.components, [p.prompt], seed=p.seed, steps=p.steps, cfg=p.guidance,
                                    height=p.height, width=p.width, negative=p.negative,
                                    sampler=run.cfg.sampling.sampler)[0]  # fmt: skip
            import io

            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            out.append(write_bytes(run.run_dir / "samples" / f"step-{step:08d}" / f"{i:03d}.png", buf.getvalue()))
    return out
