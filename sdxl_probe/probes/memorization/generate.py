"""Batched generation for the memorization scores, with an on-disk cache keyed by what made each image.

Each image comes from the project's one sampler (:func:`sdxl_probe.pipeline.sampling.sample_latents`,
then :func:`~sdxl_probe.pipeline.vae.decode_latents`); its starting noise is
``initial_noise(1, shape, seed)``, so an image depends only on (model, caption, seed, settings), never
on which other prompts share its batch. While the sampler runs, two scoped recorders watch the UNet:

- Wen et al. 2024's text-conditional noise norm ``||eps(x_t, c) - eps(x_t, empty)|| / sqrt(D)`` of the
  guided batch's two halves, for each of the first ``first_steps`` steps (a forward hook);
- Ren et al. 2024's cross-attention token mass over those steps, through the attention capture
  (:func:`sdxl_probe.probes.attention.capture.capture_cross_attention`).

The cache holds one ``.safetensors`` per image under a key hashing (LoRA file sha256 or base model
hash, caption, seed, sampler settings): a re-run generates only what is new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdxl_probe.io import write_with
from sdxl_probe.pipeline import sampling
from sdxl_probe.pipeline.vae import decode_latents

NOISE_SEED_OFFSET = 1_000_003  # embedding-noise draws use other seeds than the starting noise


@dataclass(frozen=True)
class SamplerSettings:
    """How every image is generated (all part of the cache key).

    Attributes:
        steps: sampler steps.
        cfg: guidance scale (Wen's norm needs cfg != 1: both branches run).
        sampler: "euler" or "ddim".
        height, width: pixels.
        first_steps: steps whose noise norm and attention mass are recorded (Wen: the first steps).
        embedding_noise: lambda of Somepalli et al. 2023's ``lambda * N(0, I)`` added to the conditional
            text embeddings (a caption-sensitivity probe; 0 = none).
    """

    steps: int
    cfg: float
    sampler: str
    height: int
    width: int
    first_steps: int
    embedding_noise: float = 0.0


@dataclass
class Generation:
    """One generated image and what the recorders saw while it was made.

    Attributes:
        image: (H, W, 3) uint8.
        wen: (K,) noise norm per recorded step (NaN without guidance).
        mass: (K, T) cross-attention mass per context position, averaged over layers, heads and pixels.
    """

    image: torch.Tensor
    wen: torch.Tensor
    mass: torch.Tensor


class GenerationCache:
    """``folder/<key>.safetensors`` per generation; None disables caching."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @staticmethod
    def key(model_id: str, caption: str, seed: int, settings: SamplerSettings) -> str:
        blob = json.dumps([model_id, caption, seed, asdict(settings)], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Generation | None:
        from safetensors.torch import load_file

        path = self.folder / f"{key}.safetensors" if self.folder else None
        if path is None or not path.is_file():
            return None
        try:
            t = load_file(str(path))
            return Generation(t["image"], t["wen"], t["mass"])
        except (OSError, KeyError, RuntimeError):
            return None  # a torn file is generated again

    def put(self, key: str, gen: Generation) -> None:
        from safetensors.torch import save_file

        if self.folder is None:
            return
        tensors = {"image": gen.image.contiguous(), "wen": gen.wen.contiguous(), "mass": gen.mass.contiguous()}
        write_with(self.folder / f"{key}.safetensors", lambda p: save_file(tensors, str(p)))


@contextmanager
def noise_norm_recorder(unet, first_steps: int, guided: bool) -> Iterator[list[torch.Tensor]]:
    """Record ``text_cond_norm`` of each of the first UNet calls (one call per step, guided batch doubled)."""
    from sdxl_probe.probes.memorization.scores import text_cond_norm

    norms: list[torch.Tensor] = []

    def hook(_module, _args, output):
        if len(norms) < first_steps:
            eps = output.sample if hasattr(output, "sample") else output[0]  # (2B, C, h, w), unconditional first
            if guided:
                eps_u, eps_c = eps.detach().chunk(2)
                norms.append(text_cond_norm(eps_c, eps_u).cpu())  # (B,)
            else:
                norms.append(torch.full((eps.shape[0],), float("nan")))

    handle = unet.register_forward_hook(hook)
    try:
        yield norms
    finally:
        handle.remove()


@contextmanager
def embedding_noise(unet, lam: float, seeds: list[int], guided: bool) -> Iterator[None]:
    """Add a fixed ``lam * N(0, I)`` (one draw per row, seeded by its seed) to the conditional context.

    Somepalli et al. 2023 (``sd_mitigation.py``, ``--rand_noise_lam``) perturb the text embeddings once;
    the embeddings are the same at every step, so one draw per image held over all steps is the same.
    """
    if lam == 0:
        yield
        return
    drawn: dict[tuple, torch.Tensor] = {}

    def hook(_module, args, kwargs):
        ctx = kwargs["encoder_hidden_states"]  # (2B or B, L, D), unconditional half first when guided
        rows = len(seeds)
        if ctx.shape not in drawn:
            g = [torch.Generator().manual_seed(s + NOISE_SEED_OFFSET) for s in seeds]
            drawn[ctx.shape] = torch.stack([torch.randn(ctx.shape[1:], generator=gi) for gi in g]).to(ctx)
        ctx = ctx.clone()
        ctx[-rows:] += lam * drawn[ctx.shape]
        return args, {**kwargs, "encoder_hidden_states": ctx}

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def run_batch(components, captions: list[str], seeds: list[int], settings: SamplerSettings) -> list[Generation]:
    """Generate one image per (caption, seed) pair in one sampler batch, recording norms and attention."""
    from sdxl_probe.probes.attention.capture import capture_cross_attention

    lh, lw = sampling.check_size(components, settings.height, settings.width)
    channels = components.unet.config.in_channels
    noise = torch.cat([sampling.initial_noise(1, (channels, lh, lw), s) for s in seeds])  # (B, C, h, w)
    guided, k = settings.cfg != 1.0, settings.first_steps
    zero = not components.is_toy  # SDXL's force_zeros_for_empty_prompt; the toy model was trained on ""
    with torch.no_grad(), noise_norm_recorder(components.unet, k, guided) as norms, \
            embedding_noise(components.unet, settings.embedding_noise, seeds, guided), \
            capture_cross_attention(components.unet, cfg_doubled=guided, steps=range(k)) as rec:  # fmt: skip
        latents = sampling.sample_latents(
            components, captions, noise, steps=settings.steps, cfg=settings.cfg, height=settings.height,
            width=settings.width, negative="", sampler=settings.sampler, max_token_length=None, weighted=False,
            zero_negative=zero,
        )  # fmt: skip
        images = torch.from_numpy(decode_latents(components, latents))  # (B, H, W, 3) uint8
    wen = torch.stack(norms, dim=1)  # (B, K)
    mass = torch.stack([rec.token_mass[s].cpu() / rec.token_mass_calls[s] for s in sorted(rec.token_mass)], dim=1)
    return [Generation(images[i], wen[i], mass[i]) for i in range(len(captions))]  # mass[i]: (K, T)


def generate_all(
    components, model_id: str, jobs: list[tuple[str, int]], settings: SamplerSettings, cache: GenerationCache,
    *, batch_size: int,
) -> tuple[list[Generation], int]:  # fmt: skip
    """Every (caption, seed) job, from the cache where present, else generated in batches (a progress bar
    on a terminal).

    Returns:
        (generations in job order, how many were generated now).
    """
    from tqdm.auto import tqdm

    keys = [cache.key(model_id, c, s, settings) for c, s in jobs]
    out: list[Generation | None] = [cache.get(k) for k in keys]
    todo = [i for i, g in enumerate(out) if g is None]
    with tqdm(total=len(todo), desc="generating", unit="image", leave=False, disable=None if todo else True) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            made = run_batch(components, [jobs[i][0] for i in chunk], [jobs[i][1] for i in chunk], settings)
            for i, gen in zip(chunk, made, strict=True):
                cache.put(keys[i], gen)
                out[i] = gen
            bar.update(len(chunk))
    return out, len(todo)  # type: ignore[return-value]
