"""An on-disk cache of text-encoder outputs, keyed by model hash, caption and encoding settings.

One safetensors file per caption and setting, written atomically, at
``<root>/<model hash>/<key[:2]>/<key>.safetensors`` where ``key`` is the SHA-256 of the
caption and settings. Each file stores ``te1 (L, d1)``, ``te2 (L, d2)`` and ``pooled (p,)``
in float32, and the caption in its metadata, which is checked on read. A re-run of a probe
reads every encoding back instead of running the encoders. Token bookkeeping is not
stored: it is pure and cheap, and is rebuilt with ``tokenize_caption``/``chunk_layout``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdxl_probe.io import write_with

if TYPE_CHECKING:
    from torch import Tensor

    from sdxl_probe.models.components import SDXLComponents
    from sdxl_probe.text.tokens import ChunkLayout, TokenizedCaption

FORMAT_VERSION = 1
TENSOR_NAMES = ("te1", "te2", "pooled")


def default_cache_dir() -> Path:
    """``$SDXL_PROBE_CACHE``, else ``$XDG_CACHE_HOME/sdxl-probe/encodings``, else ``~/.cache/...``."""
    if os.environ.get("SDXL_PROBE_CACHE"):
        return Path(os.environ["SDXL_PROBE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sdxl-probe" / "encodings"


@dataclass(frozen=True)
class EncodeSettings:
    """The settings that change what ``encode_captions`` returns for one caption."""

    max_token_length: int | None = None
    mode: str = "sd-scripts"
    weighted: bool = False


@dataclass
class Encoded:
    """One caption's encoder outputs and token bookkeeping.

    Attributes:
        te1: ``(L, d1)`` penultimate TE1 states; ``L`` = 77 | 152 | 227.
        te2: ``(L, d2)`` penultimate TE2 states.
        pooled: ``(p,)`` TE2 projected pooled vector (first chunk only, as sd-scripts).
    """

    caption: str
    te1: Tensor
    te2: Tensor
    pooled: Tensor
    tokenized: TokenizedCaption
    layout_te1: ChunkLayout
    layout_te2: ChunkLayout

    @property
    def context(self) -> Tensor:
        """``(L, d1 + d2)``: the UNet cross-attention context."""
        import torch

        return torch.cat([self.te1, self.te2], dim=-1)


@dataclass
class EncodingCache:
    """Per-caption safetensors files under ``root/<model_hash>``; counts hits and misses.

    ``model_hash`` is ``SDXLComponents.model_hash()``: the same for a single file and its
    diffusers folder and for any load dtype; the compute dtype is part of every key.
    """

    root: Path
    model_hash: str
    compute_dtype: str = "fp32"  # encoder outputs differ by compute dtype: "fp32", "bf16", "fp16"
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)

    def path(self, caption: str, settings: EncodeSettings) -> Path:
        """Where the encoding of ``caption`` under ``settings`` lives."""
        blob = json.dumps(
            {"v": FORMAT_VERSION, "caption": caption, "dtype": self.compute_dtype, **asdict(settings)}, sort_keys=True
        )
        key = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        return Path(self.root) / self.model_hash / key[:2] / f"{key}.safetensors"

    def get(self, caption: str, settings: EncodeSettings) -> dict[str, Tensor] | None:
        """The cached tensors, or None when absent, unreadable or for another caption."""
        from safetensors import safe_open

        path = self.path(caption, settings)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("caption") != caption:
                    raise ValueError("caption mismatch")
                tensors = {name: f.get_tensor(name) for name in TENSOR_NAMES}
        except Exception:  # a truncated or foreign file is a miss; it is rewritten on put
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, caption: str, settings: EncodeSettings, tensors: dict[str, Tensor]) -> None:
        """Write the tensors for ``caption`` atomically (float32, contiguous, on the CPU)."""
        from safetensors.torch import save_file

        data = {name: tensors[name].detach().float().cpu().contiguous().clone() for name in TENSOR_NAMES}
        meta = {"caption": caption, "settings": json.dumps(asdict(settings)), "model_hash": self.model_hash}
        write_with(self.path(caption, settings), lambda tmp: save_file(data, str(tmp), metadata=meta))


def encode_cached(
    components: SDXLComponents,
    captions: Sequence[str],
    settings: EncodeSettings,
    *,
    cache: EncodingCache | None = None,
    batch_size: int = 32,
) -> list[Encoded]:
    """Encode ``captions`` in batches, reading and filling ``cache``; duplicates encode once.

    Args:
        components: the model whose text encoders are used.
        captions: the captions, in any order; the result has the same order.
        settings: max_token_length, mode and weighting passed to ``encode_captions``.
        cache: an :class:`EncodingCache` for ``components.model_hash()``, or None.
        batch_size: captions per encoder call.

    Returns:
        One :class:`Encoded` per input caption.
    """
    unique = list(dict.fromkeys(captions))
    tensors: dict[str, dict[str, Tensor]] = {}
    if cache is not None:
        for caption in unique:
            hit = cache.get(caption, settings)
            if hit is not None:
                tensors[caption] = hit
    todo = [c for c in unique if c not in tensors]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        for caption, out in zip(batch, _encode_batch(components, batch, settings), strict=True):
            tensors[caption] = out
            if cache is not None:
                cache.put(caption, settings, out)
    model_max_length = components.tokenizer.model_max_length
    return [_with_bookkeeping(c, tensors[c], settings, model_max_length) for c in captions]


def _encode_batch(
    components: SDXLComponents, batch: list[str], settings: EncodeSettings
) -> list[dict[str, Tensor]]:
    import torch

    from sdxl_probe.pipeline.conditioning import encode_captions

    with torch.inference_mode():
        enc = encode_captions(
            components,
            batch,
            max_token_length=settings.max_token_length,
            mode=settings.mode,
            weighted=settings.weighted,
        )
    return [
        {
            "te1": enc.hidden_te1[i].float().cpu(),
            "te2": enc.hidden_te2[i].float().cpu(),
            "pooled": enc.pooled[i].float().cpu(),
        }
        for i in range(len(batch))
    ]


def _with_bookkeeping(
    caption: str, t: dict[str, Tensor], settings: EncodeSettings, model_max_length: int
) -> Encoded:
    from sdxl_probe.text.tokens import chunk_layout, tokenize_caption

    tc = tokenize_caption(caption, weighted=settings.weighted)
    layouts = [
        chunk_layout(
            tc, encoder=name, max_token_length=settings.max_token_length, model_max_length=model_max_length
        )
        for name in ("te1", "te2")
    ]
    return Encoded(caption, t["te1"], t["te2"], t["pooled"], tc, layouts[0], layouts[1])
