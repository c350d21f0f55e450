"""Trainer step time and peak memory on the toy model, and against a minimal diffusers+peft step (issue #12).

    .venv/bin/python benchmarks/bench_train.py            # toy model: batch 8, rank 4 on UNet attention, fp32, 64 px
    .venv/bin/python benchmarks/bench_train.py --quick    # fewer repetitions, no per-mode RSS children
    flock /tmp/fullsize.lock .venv/bin/python benchmarks/bench_train.py --full-size   # memory plan, 512 px CPU
    .venv/bin/python benchmarks/bench_train.py --full-size --device cuda              # all 8 variants, 1024 px

Toy modes, all timing the trainer's real optimizer step (:func:`sdxl_probe.train.lora.loop.optimizer_step`
on a :func:`~sdxl_probe.train.lora.loop.setup` run, images read from disk as the command reads them):
``ours`` without caches, ``ours+latents`` (in-memory latent cache), ``ours+latents+te`` (latent and
text-encoder output caches); and ``diffusers+peft``: a minimal loop written the way diffusers'
``train_text_to_image_lora_sdxl.py`` writes its inner step (``vae.encode(...).latent_dist.sample() *
scaling_factor``, ``randn_like`` noise, ``randint`` timesteps, ``noise_scheduler.add_noise``, both text
encoders with ``hidden_states[-2]`` and the pooled output, ``add_time_ids``, ``unet(...).sample``,
``F.mse_loss``, ``accelerator.backward``, ``clip_grad_norm_``, AdamW step), LoRA added with
``unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=[to_k, to_q, to_v, to_out.0]))``.
Its image decode, resize/crop/normalize (torchvision, as the example's ``preprocess_train``) and
tokenization are timed inside its step, as the example's default ``dataloader_num_workers=0`` runs them.

Single-threaded (``torch.set_num_threads(1)``), the modes take turns in one process (order rotated each
round) and every figure is a median over steps (wall and process CPU time); "cold" is each mode's
first step. Memory of each mode comes from its own child process, since one process's peak only
grows: its peak RSS (``ru_maxrss``, set by the model load) and its resident memory after setup and 3
steps, over the resident memory right after the load (what the mode holds: caches, LoRA, AdamW). Correctness is enforced: on the first batch with the same
noise and timesteps (and the VAE posterior mean, which the trainer uses), the diffusers-style loss must
equal ours within ``LOSS_RTOL``, and both must target the same UNet modules; else the exit status is 1.

``--full-size``: the memory plan of issue #13 item 6. Training variants {gradient checkpointing on/off}
x {mixed precision bf16 / no (fp32)} x {no caches / in-memory latent + text-encoder output caches}, each
in its own child process through the trainer's own ``setup`` and ``optimizer_step`` (frozen weights in
the mixed-precision dtype, VAE fp32, ``[network]`` defaults: "transformer" targets, rank 4, alpha 1),
batch 1 at ``--full-size-side`` px (512 here, 1024 on CUDA) on ``--device``, on the random-weight
full-size SDXL single file of ``benchmarks/bench_load.py`` (written once when missing, ~6.9 GB). Per
variant: load (setup) seconds, the cold first step and the median of the rest, peak memory (CUDA:
``max_memory_allocated``/``max_memory_reserved`` of the whole process, from before the load; CPU:
``ru_maxrss``, and the steps' ``VmHWM`` over the resident memory after setup) and ratios over the
``ckpt+bf16+caches`` baseline (kohya's 12 GB setting). On CUDA all 8 variants run; on the CPU 4 (the
baseline and one factor flipped at a time; ``--variants all`` for the rest), and a variant whose
frozen weights would not fit in the free RAM, or that drives it under 1.5 GB, is skipped with its
reason. Run it under ``flock /tmp/fullsize.lock``.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fullsize import FILE_NAME  # noqa: E402
from bench_load import DEFAULT_CACHE, write_full_size_file  # noqa: E402

BATCH, RANK, SIDE, N_IMAGES = 8, 4, 64, 16  # the reference measurement: batch 8, rank 4, attn, 64 px
LOSS_RTOL = 1e-4  # fp32, same weights and inputs; only the pixel normalisation rounds differently
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # diffusers' example; the trainer's "attn" preset
MODES = ("ours", "ours+latents", "ours+latents+te", "diffusers+peft")
GOALS = {"ours+latents+te": 0.75}  # step time / uncached step time (issue #12)


def train_config(ds: Path, out: Path, mode: str, **training):
    """The trainer config of a toy ``mode`` (fp32, batch 8, rank 4, alpha 4, "attn" targets)."""
    from sdxl_probe.config import from_dict
    from sdxl_probe.train.lora.config import TrainConfig

    return from_dict(TrainConfig, {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": SIDE, "batch_size": BATCH,
                    "cache_latents": "memory" if "latents" in mode else "none",
                    "cache_text_encoder_outputs": mode.endswith("+te")},
        "network": {"dim": RANK, "alpha": float(RANK), "target": "attn"},
        "optimizer": {"unet_lr": 1e-4, "max_grad_norm": 1.0},
        "training": {"max_train_steps": 10**6, "seed": 0, **training},
        "saving": {"output_dir": str(out)}, "logging": {"progress_bar": False},
    })  # fmt: skip


class Ours:
    """The trainer's optimizer step on one set-up run."""

    def __init__(self, components, ds: Path, out: Path, mode: str):
        from sdxl_probe.train.lora import loop

        self.loop, self.step = loop, 0
        self.run = loop.setup(train_config(ds, out, mode), out, resume=False, log=lambda s: None,
                              components=components)  # fmt: skip

    def __call__(self) -> float:
        loss, _, _ = self.loop.optimizer_step(self.run, self.step, 0)
        self.step += 1
        return loss


class Diffusers:
    """A minimal diffusers+peft inner step (``train_text_to_image_lora_sdxl.py``), same toy parts."""

    def __init__(self, components, images):
        import torch
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig
        from torchvision import transforms

        c = self.c = components
        for m in (c.vae, c.text_encoder, c.text_encoder_2, c.unet):
            m.requires_grad_(False)
        c.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
        c.unet.train()
        self.params = [p for p in c.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", self.optimizer)
        self.accelerator = Accelerator(mixed_precision="no", cpu=True)
        self.noise_scheduler = DDPMScheduler.from_config(c.scheduler.config)
        self.images, self.step = images, 0
        self.transform = transforms.Compose([
            transforms.Resize(SIDE, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(SIDE), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])  # fmt: skip

    def batch(self, idx: list[int]) -> dict:
        """The example's ``preprocess_train`` and ``collate_fn`` for images ``idx``."""
        import torch
        from PIL import Image

        pixels, originals = [], []
        for i in idx:
            with Image.open(self.images[i].path) as im:
                rgb = im.convert("RGB")
            originals.append((rgb.height, rgb.width))
            pixels.append(self.transform(rgb))
        captions = [self.images[i].caption for i in idx]
        ids = [tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids for tok in (self.c.tokenizer, self.c.tokenizer_2)]  # fmt: skip
        return {"pixel_values": torch.stack(pixels), "input_ids_one": ids[0], "input_ids_two": ids[1],
                "original_sizes": originals, "crop_top_lefts": [(0, 0)] * len(idx)}  # fmt: skip

    def __call__(self, idx: list[int] | None = None, noise=None, timesteps=None, posterior: str = "sample") -> float:
        """One step on images ``idx`` (the next batch by default); ``noise``/``timesteps``: given, else drawn."""
        import torch
        import torch.nn.functional as F

        if idx is None:
            idx = [(self.step * BATCH + k) % len(self.images) for k in range(BATCH)]
        self.step += 1
        batch, c = self.batch(idx), self.c
        dist = c.vae.encode(batch["pixel_values"]).latent_dist
        model_input = (dist.sample() if posterior == "sample" else dist.mean) * c.vae.config.scaling_factor
        noise = torch.randn_like(model_input) if noise is None else noise
        bsz = model_input.shape[0]
        if timesteps is None:
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,)).long()
        noisy_model_input = self.noise_scheduler.add_noise(model_input, noise, timesteps)
        add_time_ids = torch.cat([torch.tensor([list(o + k + (SIDE, SIDE))]) for o, k in
                                  zip(batch["original_sizes"], batch["crop_top_lefts"], strict=True)])  # fmt: skip
        prompt_embeds, pooled = encode_prompt([c.text_encoder, c.text_encoder_2],
                                              [batch["input_ids_one"], batch["input_ids_two"]])  # fmt: skip
        model_pred = c.unet(noisy_model_input, timesteps, prompt_embeds, return_dict=False,
                            added_cond_kwargs={"time_ids": add_time_ids, "text_embeds": pooled})[0]  # fmt: skip
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        return loss.item()


def encode_prompt(text_encoders, ids_list):
    """diffusers' example ``encode_prompt``: penultimate hidden states joined, pooled from the last encoder."""
    import torch

    embeds = []
    for encoder, ids in zip(text_encoders, ids_list, strict=True):
        out = encoder(ids, output_hidden_states=True, return_dict=False)
        pooled = out[0]
        hidden = out[-1][-2]  # (B, L, d)
        embeds.append(hidden.view(hidden.shape[0], hidden.shape[1], -1))
    return torch.concat(embeds, dim=-1), pooled.view(pooled.shape[0], -1)


def lora_modules(unet) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0] for n, _ in unet.named_modules() if n.endswith(".lora_A")}


def check_same_loss(ours: Ours, theirs: Diffusers) -> tuple[float, float]:
    """Step 0 of ours, and the diffusers-style step on the same images, noise and timesteps."""
    b = ours.loop.draw_micro_batch(ours.run, 0)
    mine = ours()  # step 0 draws exactly ``b`` again (generators keyed by (seed, micro-step))
    other = theirs(b.idx, noise=b.noise, timesteps=b.timesteps, posterior="mean")
    return mine, other


def build_modes(base, ds: Path, work: Path, names=MODES) -> dict:
    """Each mode on its own copy of ``base`` (one mode alone takes ``base`` itself)."""
    from sdxl_probe.train.lora.data import Buckets, read_images

    images = read_images(str(ds), caption_extension=".txt", caption_settings={}, on_bad_image="error",
                         buckets=Buckets(SIDE, False, 256, 1024, 64, False), log=lambda s: None)  # fmt: skip
    parts = (lambda: base) if len(names) == 1 else (lambda: copy.deepcopy(base))
    return {m: Diffusers(parts(), images) if m == "diffusers+peft" else Ours(parts(), ds, work / m, m)
            for m in names}  # fmt: skip


def load_toy():
    import torch

    from sdxl_probe.models.load import load_components

    return load_components("toy", dtype=torch.float32)


def time_modes(fns: dict, rounds: int, per_turn: int) -> tuple[dict, dict]:
    """Cold (first step) and per-step (wall, cpu) samples of every mode, modes taking turns."""
    cold, samples = {}, {m: ([], []) for m in fns}
    for m, fn in fns.items():
        t = time.perf_counter()
        fn()
        cold[m] = time.perf_counter() - t
    names = list(fns)
    for r in range(rounds):
        for m in names[r % len(names):] + names[: r % len(names)]:
            for _ in range(per_turn):
                wall, cpu = time.perf_counter(), time.process_time()
                fns[m]()
                samples[m][0].append(time.perf_counter() - wall)
                samples[m][1].append(time.process_time() - cpu)
    return cold, samples


def breakdown(ours: Ours, reps: int) -> dict[str, float]:
    """Median CPU seconds of the uncached step's parts: latents (disk + VAE), conditioning (captions + TEs)."""
    from sdxl_probe.train.lora import batch

    run, loop, out = ours.run, ours.loop, {"latents": [], "text encoders": []}
    for r in range(reps):
        b = loop.draw_micro_batch(run, 10**5 + r)
        t = time.process_time()
        batch.batch_latents(run, b.idx, b.flips)
        out["latents"].append(time.process_time() - t)
        t = time.process_time()
        batch.batch_conditioning(run, b.idx, b.rng, b.epoch, 0)
        out["text encoders"].append(time.process_time() - t)
    return {k: statistics.median(v) for k, v in out.items()}


def resident_kb() -> int:
    """This process's resident memory now (``/proc/self/statm``), in KB."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(mode: str, ds: Path, steps: int) -> None:
    """One mode alone in this process: print its peak RSS and its resident memory after setup and ``steps`` steps.

    Loading the toy model sets the peak (its transient copies); the resident memory after the steps,
    over the resident memory right after loading, is what the mode itself holds (caches, LoRA, AdamW).
    """
    import torch

    torch.set_num_threads(1)
    base = load_toy()
    loaded = resident_kb()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        fn = build_modes(base, ds, Path(tmp), names=(mode,))[mode]
        for _ in range(steps):
            fn()
        held = resident_kb()
    print(json.dumps({"loaded_kb": loaded, "held_kb": held,
                      "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))  # fmt: skip


def peak_rss(mode: str, ds: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(ds)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"{mode} child failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def toy(args) -> int:
    import torch

    from sdxl_probe.toy.dataset import write_dataset

    torch.set_num_threads(1)
    base = load_toy()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ds = Path(tmp) / "ds"
        write_dataset(ds, n=N_IMAGES, seed=0, size=SIDE)
        fns = build_modes(base, ds, Path(tmp))
        mine, other = check_same_loss(fns["ours"], fns["diffusers+peft"])
        same_targets = lora_modules(fns["ours"].run.components.unet) == lora_modules(fns["diffusers+peft"].c.unet)
        cold, samples = time_modes(fns, args.rounds, args.per_turn)
        parts = breakdown(fns["ours"], args.rounds)
        rss = {} if args.quick else {m: peak_rss(m, ds) for m in MODES}
    report(samples, cold, rss, parts, args)
    ok = abs(mine - other) <= LOSS_RTOL * abs(other) and same_targets
    print(f"correctness: first-batch loss ours {mine:.7f}, diffusers-style {other:.7f}, relative gap "
          f"{abs(mine - other) / abs(other):.1e} (tolerance {LOSS_RTOL:.0e}); same LoRA targets: {same_targets}"
          f" -> {'OK' if ok else 'FAILED'}")  # fmt: skip
    return 0 if ok else 1


def report(samples: dict, cold: dict, rss: dict, parts: dict, args) -> None:
    n = len(samples["ours"][0])
    print(f"toy model (trained toy weights, not SDXL): batch {BATCH}, rank {RANK} on UNet attention "
          f"({', '.join(TARGETS)}), fp32, {SIDE} px, 1 thread; medians of {n} steps per mode, modes taking "
          f"turns over {args.rounds} rounds")  # fmt: skip
    base = {clock: statistics.median(samples["ours"][k]) for k, clock in enumerate(("wall", "cpu"))}
    print(f"{'mode':18s} {'wall s/step':>11s} {'steps/s':>8s} {'cpu s/step':>10s} {'cold s':>7s} "
          f"{'ratio wall':>10s} {'ratio cpu':>9s}  peak RSS MB, resident after 3 steps MB (+ over loaded)")  # fmt: skip
    for m in MODES:
        wall, cpu = (statistics.median(s) for s in samples[m])
        peak = (f"{rss[m]['peak_kb'] / 1024:.0f}, {rss[m]['held_kb'] / 1024:.0f} "
                f"(+{(rss[m]['held_kb'] - rss[m]['loaded_kb']) / 1024:.0f})" if m in rss else "-")  # fmt: skip
        print(f"{m:18s} {wall:11.3f} {1 / wall:8.2f} {cpu:10.3f} {cold[m]:7.2f} {wall / base['wall']:10.2f} "
              f"{cpu / base['cpu']:9.2f}  {peak}")  # fmt: skip
    for m, goal in GOALS.items():
        for clock, k in (("wall", 0), ("cpu", 1)):
            r = statistics.median(samples[m][k]) / base[clock]
            print(f"{m} / ours (uncached) step time, {clock}: {r:.3f}x (target <= {goal}): "
                  f"{'met' if r <= goal else 'NOT met'}")  # fmt: skip
    for clock, k in (("wall", 0), ("cpu", 1)):
        r = base[clock] / statistics.median(samples["diffusers+peft"][k])
        print(f"ours (uncached) / diffusers+peft step time, {clock}: {r:.3f}x (target <= 1.0): "
              f"{'met' if r <= 1.0 else 'NOT met'}")  # fmt: skip
    rest = base["cpu"] - sum(parts.values())
    print("uncached step breakdown (medians, cpu): " + ", ".join(
        f"{k} {v:.3f} s ({v / base['cpu']:.0%})" for k, v in parts.items())
        + f", UNet forward/backward + AdamW + rest {rest:.3f} s ({rest / base['cpu']:.0%})")  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One full-size training setting; its name lists what is on (ckpt, bf16 else fp32, caches)."""

    checkpointing: bool
    precision: str  # [training] mixed_precision: "bf16" or "no" (fp32)
    caches: bool  # in-memory latent cache and text-encoder output cache

    @property
    def name(self) -> str:
        return "+".join(["ckpt" if self.checkpointing else "no-ckpt", "bf16" if self.precision == "bf16" else "fp32",
                         "caches" if self.caches else "no-caches"])  # fmt: skip


ALL_VARIANTS = [Variant(c, p, k) for c in (True, False) for p in ("bf16", "no") for k in (True, False)]
# kohya's advertised 12 GB SDXL LoRA setting: checkpointing, bf16, caches
BASELINE = Variant(True, "bf16", True)
# On a 24 GB, 2-core CPU box: the baseline and one factor flipped at a time (the product is 8 x ~3 min,
# and fp32 without checkpointing holds ~14 GB of fp32 weights plus the un-checkpointed activations).
CPU_VARIANTS = [BASELINE, Variant(True, "bf16", False), Variant(False, "bf16", True),
                Variant(True, "no", True)]  # fmt: skip
FULL_SIZE_RANK = 4  # [network] dim default; "transformer" targets, alpha 1 (sd-scripts' defaults)


def full_size_config(model: Path, work: Path, *, side: int, device: str, variant: Variant, threads: int = 0):
    """The trainer config of one full-size variant: batch 1, ``side`` px, one random image in ``work``/ds."""
    import numpy as np
    from PIL import Image

    from sdxl_probe.config import from_dict
    from sdxl_probe.train.lora.config import TrainConfig

    folder = work / "ds" / "1_bench"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "0.png")
    (folder / "0.txt").write_text("a red cube on a table\n", encoding="utf-8")
    return from_dict(TrainConfig, {
        "model": {"source": str(model)},
        "dataset": {"path": str(work / "ds"), "caption_extension": ".txt", "resolution": side, "batch_size": 1,
                    "cache_latents": "memory" if variant.caches else "none",
                    "cache_text_encoder_outputs": variant.caches},
        "network": {"dim": FULL_SIZE_RANK, "alpha": 1.0, "target": "transformer"},
        "optimizer": {"unet_lr": 1e-4, "max_grad_norm": 1.0},
        "training": {"max_train_steps": 10**6, "seed": 0, "mixed_precision": variant.precision,
                     "gradient_checkpointing": variant.checkpointing, "device": device, "threads": threads},
        "saving": {"output_dir": str(work / "run")}, "logging": {"progress_bar": False},
    })  # fmt: skip


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) through ``/proc/self/clear_refs`` (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in KB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def full_size_child(path: Path, steps: int, side: int, device: str, variant: Variant) -> None:
    """One variant alone in this process: the trainer's setup, then ``steps`` optimizer steps; prints JSON.

    Memory: CUDA peaks are counted from before the model load (kohya's figure is the whole process);
    on the CPU the peak RSS of the whole process (``ru_maxrss``, set by the load) and, after resetting
    ``VmHWM`` once setup is done, the peak of the steps over the resident memory after setup.
    """
    import torch

    from sdxl_probe.train.lora import loop

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-train-full-") as tmp:
        cfg = full_size_config(path, Path(tmp), side=side, device=device, variant=variant)
        start = time.perf_counter()
        run = loop.setup(cfg, Path(tmp) / "run", resume=False, log=lambda s: None)
        sync(cuda)
        out = {"load_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
               "loaded_rss_kb": status_kb("VmRSS"), "hwm_reset": reset_peak_rss(), "step_s": []}  # fmt: skip
        if cuda:
            out["loaded_alloc"] = torch.cuda.memory_allocated()
        for step in range(steps):
            t = time.perf_counter()
            out["loss"], _, _ = loop.optimizer_step(run, step, 0)
            sync(cuda)
            out["step_s"].append(time.perf_counter() - t)
    out |= {"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "steps_hwm_kb": status_kb("VmHWM")}
    if cuda:
        out["max_alloc"] = torch.cuda.max_memory_allocated()
        out["max_reserved"] = torch.cuda.max_memory_reserved()
    print(json.dumps(out))


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def weights_gb(path: Path, precision: str) -> float:
    """The frozen weights a variant holds on the CPU: the fp16 file's UNet/TEs in the weight dtype, the VAE fp32."""
    vae_gb = 0.335  # 83.7 M parameters in fp32
    return (path.stat().st_size / 1e9 - vae_gb / 2) * (2 if precision == "no" else 1) + vae_gb


def run_child(cmd: list[str], guard_kb: int | None) -> tuple[dict | None, str]:
    """Run a variant's child; on the CPU kill it when the machine's free memory falls under ``guard_kb``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    while proc.poll() is None:
        time.sleep(0.5)
        if guard_kb is not None and mem_available_kb() < guard_kb:
            killed = f"killed: free RAM fell under {guard_kb / 1024**2:.1f} GB (did not fit)"
            proc.kill()
    stdout, stderr = proc.communicate()
    if killed:
        return None, killed
    if proc.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        return None, f"failed (exit {proc.returncode}): {last}"
    return json.loads(stdout.strip().splitlines()[-1]), ""


def full_size(args) -> int:
    path = args.cache_dir / FILE_NAME
    if not path.exists():
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_full_size_file(path)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    cuda = args.device.startswith("cuda")
    side = args.full_size_side or (1024 if cuda else 512)
    variants = variants_of(args.variants, cuda)
    print(f"full-size random-weight SDXL ({path.stat().st_size / 1e9:.2f} GB fp16 file) on {args.device}, {side} px, "
          f"batch 1, LoRA rank {FULL_SIZE_RANK} on 'transformer', {args.full_size_steps} steps per variant "
          f"(the first is cold), each variant in its own process; load average {load_average()}")  # fmt: skip
    results = {}
    for v in variants:
        reason = None if cuda else ram_refusal(path, v)
        if reason:
            print(f"  {v.name}: skipped: {reason}")
            continue
        cmd = [sys.executable, __file__, "--full-size-child", str(path), "--full-size-steps", str(args.full_size_steps),
               "--full-size-side", str(side), "--device", args.device, "--variant", v.name]  # fmt: skip
        r, why = run_child(cmd, None if cuda else GUARD_KB)
        if r is None:
            print(f"  {v.name}: skipped: {why}")
            continue
        results[v.name] = r
        steps = ", ".join(f"{s:.1f}" for s in r["step_s"])
        print(f"  {v.name}: done, load {r['load_s']:.0f} s, steps {steps} s")
    full_size_table(results, cuda)
    print(f"load average after: {load_average()}")
    return 0


GUARD_KB = 1536 * 1024  # stop a CPU child before the machine runs out of memory


def ram_refusal(path: Path, v: Variant) -> str | None:
    """Why a CPU variant is not started: its frozen weights alone would not fit in the free RAM."""
    need, free = weights_gb(path, v.precision), mem_available_kb() * 1024 / 1e9
    if need + GUARD_KB * 1024 / 1e9 > free:
        return f"its frozen weights need ~{need:.1f} GB and {free:.1f} GB of RAM is free"
    return None


def variants_of(spec: str, cuda: bool) -> list[Variant]:
    """``all``, ``default`` (all on CUDA, :data:`CPU_VARIANTS` on the CPU) or names joined by commas."""
    if spec == "default":
        return ALL_VARIANTS if cuda else CPU_VARIANTS
    if spec == "all":
        return ALL_VARIANTS
    by_name = {v.name: v for v in ALL_VARIANTS}
    unknown = [n for n in spec.split(",") if n not in by_name]
    if unknown:
        names = ", ".join(by_name)
        raise SystemExit(f"--variants: unknown {unknown[0]!r}; use all, default or some of {names}")
    return [by_name[n] for n in spec.split(",")]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def load_average() -> str:
    import os

    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def full_size_table(results: dict, cuda: bool) -> None:
    """Per variant: load s, median step s (after the cold one), peak memory, and the ratios vs the baseline."""
    if not results:
        return
    base = results.get(BASELINE.name)

    def step_s(r: dict) -> float:
        return statistics.median(r["step_s"][1:] or r["step_s"])

    def peak(r: dict) -> float:  # GB: CUDA allocated peak of the process, else its peak RSS
        return r["max_alloc"] / 2**30 if cuda else r["peak_kb"] / 1024**2

    def growth(r: dict) -> float:  # GB the steps add over the memory after setup
        if cuda:
            return (r["max_alloc"] - r["loaded_alloc"]) / 2**30
        return (r["steps_hwm_kb"] - r["loaded_rss_kb"]) / 1024**2 if r["hwm_reset"] else float("nan")

    mem = "CUDA max allocated / reserved GiB" if cuda else "peak RSS GB (ru_maxrss)"
    print(f"{'variant':24s} {'load s':>7s} {'cold s':>7s} {'step s':>7s} {mem:>34s} {'steps +GB':>10s} "
          f"{'x step':>7s} {'x peak':>7s} {'x +GB':>6s}")  # fmt: skip
    for name, r in results.items():
        memory = f"{peak(r):.2f} / {r['max_reserved'] / 2**30:.2f}" if cuda else f"{peak(r):.2f}"
        ratios = (f"{step_s(r) / step_s(base):7.2f} {peak(r) / peak(base):7.2f} {ratio(growth(r), growth(base)):>6s}"
                  if base else "      -       -      -")  # fmt: skip
        print(f"{name:24s} {r['load_s']:7.1f} {r['step_s'][0]:7.1f} {step_s(r):7.1f} {memory:>34s} "
              f"{growth(r):10.2f} {ratios}")  # fmt: skip
    print(f"ratios are over {BASELINE.name} (kohya's advertised 12 GB setting); 'steps +GB': the steps' peak over "
          f"the memory after setup (model, LoRA, caches){'' if cuda else ', VmHWM reset after setup'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, no per-mode peak-RSS children")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of turns (each mode per round)")
    parser.add_argument("--per-turn", type=int, default=2, help="steps of a mode per turn")
    parser.add_argument("--full-size", action="store_true", help="training variants on full-size SDXL")
    parser.add_argument("--full-size-steps", type=int, default=3, help="steps per variant, the first cold")
    parser.add_argument("--full-size-side", type=int, help="image side px (default 512; 1024 on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N ([training] device)")
    parser.add_argument("--variants", default="default",
                        help="all, default (all on CUDA, 4 on the CPU) or names, e.g. ckpt+bf16+caches")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the full-size file lives")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DATASET"), help=argparse.SUPPRESS)
    parser.add_argument("--full-size-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), steps=3)
    if args.full_size_child:
        variant = variants_of(args.variant, cuda=False)[0]
        side, steps = args.full_size_side, args.full_size_steps
        return full_size_child(args.full_size_child, steps, side, args.device, variant)
    if args.quick:
        args.rounds = 3
    sys.exit(full_size(args) if args.full_size else toy(args))


if __name__ == "__main__":
    main()
