"""The latent cache and the text-encoder output cache.

**Latents** are keyed by (image bytes hash, VAE hash, bucket, flip): a changed image, VAE or
bucket gives another key, so a stale entry is never read. On disk each entry is one safetensors
file named by its key (no pickle); in memory a dict.

**Text-encoder outputs**: sd-scripts builds its cache from the raw caption and silently skips
the caption pipeline (docs/sd-scripts-compat.md §2). Here, when the pipeline has randomness
(shuffle, caption or tag dropout, wildcards), ``cache_text_variants = N`` pre-encodes N processed
captions per image, each from its own seeded draw, and training draws one of them; with N = 0 the
cache is refused with the reason. Token warmup and ``caption_dropout_every_n_epochs`` depend on
the step or epoch and are refused outright. Encoding goes through the one conditioning route
(:func:`sdxl_probe.pipeline.conditioning.encode_with`), with the same ``max_token_length`` and
weighting as uncached training.

On disk (sd-scripts' ``cache_text_encoder_outputs_to_disk``) each image's variants are one
safetensors file named by a hash of what the encoding depends on: the processed caption variants
themselves (so the raw caption, the caption settings, ``cache_text_variants``, the seed and the
image's index all enter through them), ``max_token_length``, ``weighted`` and a hash of both
encoders' weights. A file is used only when its stored key, captions, shapes and a sha256 of its
tensor bytes all match; a truncated or corrupt file is named in one log line and re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sdxl_probe.errors import ConfigError
from sdxl_probe.io import write_with
from sdxl_probe.pipeline.conditioning import encode_with
from sdxl_probe.pipeline.vae import encode_images
from sdxl_probe.text.captions import CaptionOptions, process_caption
from sdxl_probe.train.lora.data import TrainImage, load_pixels


def vae_hash(vae: torch.nn.Module) -> str:
    """A hash of the VAE weights (the latent cache's model key)."""
    from sdxl_probe.models.identity import modules_hash

    return modules_hash([("vae", vae)])


def latent_key(image: TrainImage, vae_id: str, flipped: bool) -> str:
    """The cache key of one image's latents: image bytes, VAE, bucket and flip."""
    text = f"{image.sha256}|{vae_id}|{image.bucket[0]}x{image.bucket[1]}|{int(flipped)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class LatentCache:
    """Latents ``(C, h, w)`` of (image, flip), encoded once; in memory, or on disk under ``folder``."""

    def __init__(self, components, folder: Path | None):
        self.components, self.folder = components, folder
        self.vae_id = vae_hash(components.vae)
        self.memory: dict[str, torch.Tensor] = {}
        self.encoded = 0  # how many entries this process had to encode (tests read it)

    def get(self, image: TrainImage, flipped: bool) -> torch.Tensor:
        key = latent_key(image, self.vae_id, flipped)
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            latent = load_file(str(path))["latent"]
        else:
            latent = encode_images(self.components, load_pixels(image, flipped)[None])[0].float().cpu()
            self.encoded += 1
            if path is not None:
                from safetensors.torch import save_file

                meta = {"image": str(image.path), "sha256": image.sha256, "vae": self.vae_id,
                        "bucket": f"{image.bucket[0]}x{image.bucket[1]}", "flipped": str(flipped)}  # fmt: skip
                write_with(path, lambda tmp: save_file({"latent": latent.contiguous()}, str(tmp), metadata=meta))
        self.memory[key] = latent
        return latent


def refuse_reason(opts: CaptionOptions) -> str | None:
    """Why a caption pipeline cannot be cached at all (depends on the step or epoch), else None."""
    if opts.token_warmup_step > 0:
        return "token_warmup_step changes the caption with the step"
    if opts.caption_dropout_every_n_epochs > 0:
        return "caption_dropout_every_n_epochs changes the caption with the epoch"
    return None


def random_reason(opts: CaptionOptions) -> str | None:
    """Which setting makes the processed caption random, else None."""
    for name, on in (("shuffle_caption", opts.shuffle_caption), ("caption_dropout_rate", opts.caption_dropout_rate > 0),
                     ("caption_tag_dropout_rate", opts.caption_tag_dropout_rate > 0),
                     ("enable_wildcard", opts.enable_wildcard)):  # fmt: skip
        if on:
            return name
    return None


def caption_variants(image: TrainImage, index: int, n: int, seed: int) -> list[str]:
    """The processed captions cached for image ``index``: one if the pipeline is deterministic, else ``n``."""
    count = n if random_reason(image.options) else 1
    return [process_caption(image.caption, image.options, random.Random(f"{seed}-text-{index}-{k}"))
            for k in range(count)]  # fmt: skip


def check_text_cache(images: list[TrainImage], n_variants: int, trains_text_encoder: bool) -> None:
    """Refuse a text-encoder cache that would train on other captions than uncached training."""
    if trains_text_encoder:
        raise ConfigError("[dataset] cache_text_encoder_outputs = true needs frozen text encoders; set "
                          "[network] train_text_encoder_1 = train_text_encoder_2 = false, or turn the cache off")  # fmt: skip
    for image in images:
        if reason := refuse_reason(image.options):
            raise ConfigError(f"[dataset] cache_text_encoder_outputs: {reason} (subset {image.subset}); "
                              "turn the cache off to keep it")  # fmt: skip
        if (reason := random_reason(image.options)) and n_variants < 1:
            raise ConfigError(
                f"[dataset] cache_text_encoder_outputs: {reason} makes captions random (subset {image.subset}), so "
                "one cached encoding would skip it; set cache_text_variants = N (e.g. 16) to pre-encode N processed "
                "captions per image, or turn the cache off"
            )


@dataclass
class TextCache:
    """Encoded caption variants: ``context[i][k] (L, D)`` and ``pooled[i][k] (P,)`` of image i, variant k."""

    captions: list[list[str]]
    context: list[torch.Tensor]  # per image (V_i, L, D)
    pooled: list[torch.Tensor]  # per image (V_i, P)
    encoded: int = 0  # images whose variants this process had to encode (tests read it)

    def draw(self, indices: list[int], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """One variant per image, drawn with ``rng``: context (B, L, D), pooled (B, P), captions."""
        ks = [rng.randrange(len(self.captions[i])) for i in indices]
        context = torch.stack([self.context[i][k] for i, k in zip(indices, ks, strict=True)])
        pooled = torch.stack([self.pooled[i][k] for i, k in zip(indices, ks, strict=True)])
        return context, pooled, [self.captions[i][k] for i, k in zip(indices, ks, strict=True)]


def text_encoders_hash(te1: torch.nn.Module, te2: torch.nn.Module) -> str:
    """A hash of both text encoders' weights (the disk text cache's model key)."""
    from sdxl_probe.models.identity import modules_hash

    return modules_hash([("text_encoder", te1), ("text_encoder_2", te2)])


def text_key(captions: list[str], te_id: str, settings: dict) -> str:
    """The disk key of one image's encoded variants: the processed captions, encoders and encode settings."""
    text = json.dumps({"captions": captions, "te": te_id, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _tensor_digest(context: torch.Tensor, pooled: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in (context, pooled):
        digest.update(t.contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


class TextDiskCache:
    """One safetensors file per image under ``folder``: ``context (V, L, D)``, ``pooled (V, P)`` in fp32."""

    def __init__(self, folder: Path, te_id: str, settings: dict, log: Callable[[str], None]):
        self.folder, self.te_id, self.settings, self.log = Path(folder), te_id, settings, log

    def path(self, captions: list[str]) -> Path:
        return self.folder / f"{text_key(captions, self.te_id, self.settings)}.safetensors"

    def read(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored (context, pooled) of these variants, or None (absent, or named and dropped when bad)."""
        from safetensors import safe_open

        path = self.path(captions)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta, context, pooled = f.metadata() or {}, f.get_tensor("context"), f.get_tensor("pooled")
            ok = (meta.get("key") == path.stem and json.loads(meta.get("captions", "null")) == captions
                  and context.dtype == pooled.dtype == torch.float32 and context.ndim == 3 and pooled.ndim == 2
                  and context.shape[0] == pooled.shape[0] == len(captions)
                  and meta.get("sha256") == _tensor_digest(context, pooled))  # fmt: skip
            reason = "its key, captions, shapes or checksum do not match"
        except Exception as e:  # safetensors raises its own error type on a truncated or garbled file
            ok, reason = False, (str(e).splitlines() or [type(e).__name__])[0][:100]
        if not ok:
            self.log(f"text-encoder cache: {path} is truncated or corrupt ({reason}); re-encoding it")
            return None
        return context, pooled

    def write(self, captions: list[str], context: torch.Tensor, pooled: torch.Tensor, image: TrainImage) -> None:
        """Store one image's variants atomically (temp file, then rename)."""
        from safetensors.torch import save_file

        path = self.path(captions)
        tensors = {"context": context.contiguous(), "pooled": pooled.contiguous()}
        meta = {"key": path.stem, "captions": json.dumps(captions), "te": self.te_id, "image": str(image.path),
                "sha256": _tensor_digest(tensors["context"], tensors["pooled"]),
                **{k: str(v) for k, v in self.settings.items()}}  # fmt: skip
        write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _encode(te1, te2, captions: list[list[str]], batch_size: int, settings: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every image's variants encoded in batches of ``batch_size`` captions: per image (context, pooled)."""
    flat = [c for caps in captions for c in caps]
    ctx, pooled = [], []
    with torch.no_grad():
        for s in range(0, len(flat), batch_size):
            enc = encode_with(te1, te2, flat[s : s + batch_size], **settings)
            ctx.append(enc.context.float().cpu())
            pooled.append(enc.pooled.float().cpu())
    if not flat:
        return []
    all_ctx, all_pooled = torch.cat(ctx), torch.cat(pooled)  # (sum V_i, L, D), (sum V_i, P)
    bounds = [0]
    for caps in captions:
        bounds.append(bounds[-1] + len(caps))
    return [(all_ctx[a:b], all_pooled[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def build_text_cache(
    te1, te2, images: list[TrainImage], *, n_variants: int, seed: int, model_max_length: int,
    max_token_length: int | None, weighted: bool, batch_size: int = 32, folder: Path | None = None,
    log: Callable[[str], None] = print,
) -> TextCache:  # fmt: skip
    """Encode every image's caption variants once, without gradients; with ``folder``, read what is
    stored there and write what had to be encoded."""
    captions = [caption_variants(im, i, n_variants, seed) for i, im in enumerate(images)]
    settings = {"model_max_length": model_max_length, "max_token_length": max_token_length, "weighted": weighted}
    disk = TextDiskCache(folder, text_encoders_hash(te1, te2), settings, log) if folder is not None else None
    found = [disk.read(caps) if disk else None for caps in captions]
    todo = [i for i, got in enumerate(found) if got is None]
    for i, got in zip(todo, _encode(te1, te2, [captions[i] for i in todo], batch_size, settings), strict=True):
        found[i] = got
        if disk is not None:
            disk.write(captions[i], *got, images[i])
    return TextCache(captions, [c for c, _ in found], [p for _, p in found], encoded=len(todo))
