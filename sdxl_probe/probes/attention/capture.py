"""Record per-token cross-attention probabilities from a diffusers UNet, DAAM-style.

``capture_cross_attention(unet)`` swaps the processor of every selected ``attn2`` layer
for a recording one and restores all original processors on exit, even on an exception.
Self-attention (``attn1``) keeps its fast SDPA path. Maps are aggregated while sampling
runs: each layer keeps one running sum over steps of shape (B, K, T, h, w), so memory is
O(tokens x H x W) and does not grow with the number of steps (DAAM's
``RawHeatMapCollection.update``; Tang et al., ACL 2023).

Spatial sizes come from the actual call: the number of queries of the call and the
latent (H, W) of the UNet forward that contains it, never from 77 or 4096/9216 constants.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from sdxl_probe.errors import ProbeError

CROSS_ATTENTION_SUFFIX = "attn2.processor"


def infer_map_hw(n_query: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The (h, w) of an attention call's query grid.

    UNet stages halve the latent with stride-2 convolutions (padding 1), so each stage's
    side is ``ceil(side / 2)`` of the previous one; the stage whose area equals
    ``n_query`` gives the grid. Without a latent size the grid must be square.

    Args:
        n_query: number of query positions of the call (h * w).
        latent_hw: (H, W) of the UNet input latent, or None when unknown.

    Returns:
        (h, w) with h * w == n_query.
    """
    if latent_hw is not None:
        h, w = latent_hw
        while h * w > n_query:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w == n_query:
            return h, w
    side = math.isqrt(n_query)
    if side * side == n_query:
        return side, side
    raise ProbeError(
        f"cannot infer the map shape of an attention call with {n_query} queries from latent size "
        f"{latent_hw}; pass latent_hw=(height, width) of the latent to capture_cross_attention"
    )


class AttentionRecorder:
    """Running sums of cross-attention probabilities, filled by recording processors.

    Attributes:
        sums: layer name -> running sum over recorded steps, (B, K, T, h, w) float32 on the
            model's device (a view of the (B, K, h, w, T) buffer the processors add into,
            which keeps each addition contiguous). K is 1 (mean over the selected heads) or the number of selected
            heads when ``keep_heads``; T is the context length of the call (77/152/227...).
        calls: layer name -> number of calls added to its sum.
        token_mass: step index -> (B, T) sum over recorded layers of the head- and
            pixel-averaged probabilities; divide by ``token_mass_calls[step]`` for the mean.
        timesteps: step index -> the scheduler timestep seen by the UNet hook at that step.
        step_index: the current denoising step (advanced by UNet calls or ``step()``).
    """

    def __init__(
        self,
        *,
        heads: Sequence[int] | None = None,
        keep_heads: bool = False,
        cfg_doubled: bool = False,
        conditional_only: bool = True,
        steps: Container[int] | None = None,
        factors: Container[int] | None = None,
        latent_hw: tuple[int, int] | None = None,
    ) -> None:
        self.heads = list(heads) if heads is not None else None
        self.keep_heads = keep_heads
        self.cfg_doubled = cfg_doubled
        self.conditional_only = conditional_only
        self.steps = steps
        self.factors = factors
        self.latent_hw = latent_hw
        self.enabled = True
        self.step_index = 0
        self.timesteps: dict[int, float] = {}
        self._sums: dict[str, torch.Tensor] = {}  # layer -> (B, K, h, w, T)
        self.calls: dict[str, int] = {}
        self.map_hw: dict[str, tuple[int, int]] = {}
        self.token_mass: dict[int, torch.Tensor] = {}
        self.token_mass_calls: dict[int, int] = {}

    def step(self) -> None:
        """Advance to the next denoising step (for callers that count steps themselves)."""
        self.step_index += 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run UNet calls without recording them (e.g. a separate unconditional pass)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def active(self) -> bool:
        """Whether the current call should be recorded (enabled and inside the step window)."""
        return self.enabled and (self.steps is None or self.step_index in self.steps)

    def record(self, name: str, probs: torch.Tensor, n_heads: int) -> None:
        """Add one call's attention probabilities to the running sums.

        Args:
            name: the attention module's path, e.g. ``up_blocks.0.attentions.1.transformer_blocks.0.attn2``.
            probs: (B' * n_heads, N, T) softmax probabilities of the call, batch-major as
                produced by ``Attention.head_to_batch_dim``; B' is 2B when CFG-doubled.
            n_heads: heads of the layer.
        """
        n_query, n_tokens = probs.shape[-2:]
        h, w = infer_map_hw(n_query, self.latent_hw)
        if self.factors is not None and self._factor(h) not in self.factors:
            return
        per_head = self._select(probs.view(-1, n_heads, n_query, n_tokens))  # (B, K, N, T) float32
        self._add_token_mass(per_head.mean(dim=(1, 2)))
        maps = per_head.reshape(*per_head.shape[:2], h, w, n_tokens)  # (B, K, h, w, T)
        if name in self._sums:
            if self._sums[name].shape != maps.shape:
                raise ProbeError(
                    f"layer {name}: maps of shape {tuple(maps.shape)} cannot be added to a sum of shape "
                    f"{tuple(self._sums[name].shape)}; capture one batch of one size per recorder"
                )
            self._sums[name] += maps
        else:
            self._sums[name] = maps.clone()
        self.calls[name] = self.calls.get(name, 0) + 1
        self.map_hw[name] = (h, w)

    def _select(self, probs: torch.Tensor) -> torch.Tensor:
        """(B', heads, N, T) -> (B, K, N, T) float32: conditional half, chosen heads, head mean."""
        if self.cfg_doubled and self.conditional_only:
            probs = probs[probs.shape[0] // 2 :]
        if self.heads is not None:
            bad = [h for h in self.heads if not 0 <= h < probs.shape[1]]
            if bad:
                raise ProbeError(
                    f"head index {bad} out of range: this layer has {probs.shape[1]} heads (0..{probs.shape[1] - 1})"
                )
            probs = probs[:, self.heads]
        probs = probs.float()
        return probs if self.keep_heads else probs.mean(dim=1, keepdim=True)

    def _add_token_mass(self, mass: torch.Tensor) -> None:
        step = self.step_index
        if step in self.token_mass:
            self.token_mass[step] += mass
        else:
            self.token_mass[step] = mass.clone()
        self.token_mass_calls[step] = self.token_mass_calls.get(step, 0) + 1

    def _factor(self, h: int) -> int:
        """Downsampling factor of a map relative to the latent (1, 2, 4, ...)."""
        if self.latent_hw is None:
            raise ProbeError("selecting layers by resolution needs the latent size; pass latent_hw")
        return 2 ** round(math.log2(self.latent_hw[0] / h))

    def map_nbytes(self) -> int:
        """Bytes held by the running map sums (constant once every layer has been seen)."""
        return sum(t.numel() * t.element_size() for t in self._sums.values())

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        """Layer name -> (B, K, T, h, w) running sum over the recorded steps."""
        return {name: buf.permute(0, 1, 4, 2, 3) for name, buf in self._sums.items()}

    def on_unet_call(self, sample: torch.Tensor, timestep: Any) -> None:
        """Note the latent size and timestep of a UNet forward (called by the UNet hook)."""
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        t = timestep.flatten()[0].item() if torch.is_tensor(timestep) else float(timestep)
        self.timesteps[self.step_index] = float(t)


class RecordingAttnProcessor:
    """An attention processor that computes probabilities explicitly and records them.

    Outside the recording window it delegates to the original processor, so steps that
    are not recorded cost nothing extra. Inside, it follows ``diffusers.AttnProcessor``
    line for line: ``attn.to_q/to_k/to_v/to_out`` are called as modules, so peft LoRA
    layers wrapping them still fire.
    """

    def __init__(self, name: str, original: Any, recorder: AttentionRecorder) -> None:
        self.name = name
        self.original = original
        self.recorder = recorder

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if encoder_hidden_states is None or not self.recorder.active():
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, N, T)
        self.recorder.record(self.name, probs.detach(), attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def select_cross_attention_layers(
    processor_keys: Sequence[str], layers: Sequence[str] | None = None, include_mid: bool = False
) -> list[str]:
    """The ``attn2`` processor keys to record.

    Args:
        processor_keys: keys of ``unet.attn_processors``.
        layers: module-path prefixes to keep (e.g. ``["up_blocks.0", "down_blocks.2"]``);
            None keeps every cross-attention layer.
        include_mid: keep ``mid_block`` layers (DAAM excludes them by default).

    Returns:
        Selected keys, in model order.
    """
    cross = [k for k in processor_keys if k.endswith(CROSS_ATTENTION_SUFFIX)]
    if not include_mid and not (layers and any(p.startswith("mid_block") for p in layers)):
        cross = [k for k in cross if not k.startswith("mid_block")]
    if layers is None:
        return cross
    unknown = [p for p in layers if not any(k.startswith(p) for k in cross)]
    if unknown:
        blocks = sorted(
            {".".join(k.split(".")[:2]) for k in processor_keys if k.endswith(CROSS_ATTENTION_SUFFIX)}
        )
        raise ProbeError(
            f"layer prefix {unknown} matches no cross-attention layer; valid blocks: {', '.join(blocks)}"
        )
    return [k for k in cross if any(k.startswith(p) for p in layers)]


@contextmanager
def capture_cross_attention(
    unet: torch.nn.Module,
    *,
    layers: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    conditional_only: bool = True,
    cfg_doubled: bool = False,
    keep_heads: bool = False,
    steps: Container[int] | None = None,
    factors: Container[int] | None = None,
    include_mid: bool = False,
    latent_hw: tuple[int, int] | None = None,
    calls_per_step: int | None = 1,
) -> Iterator[AttentionRecorder]:
    """Record cross-attention maps of ``unet`` while the block runs.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (peft adapters may be active).
        layers: module-path prefixes of the ``attn2`` layers to record; None = all but mid.
        heads: head indices to keep; None = all heads.
        conditional_only: with ``cfg_doubled``, keep only the conditional (second) half of
            the batch, as DAAM does (``map_[size // 2:]``).
        cfg_doubled: the UNet batch is ``[unconditional; conditional]`` (diffusers order).
        keep_heads: keep the selected heads separately instead of their mean.
        steps: step indices to record (e.g. ``range(0, 10)``); None = every step.
        factors: map downsampling factors to record relative to the latent (1, 2, 4...).
        include_mid: also record the mid block.
        latent_hw: latent (H, W) when the UNet is not called through its forward.
        calls_per_step: UNet forwards per denoising step, used to advance the step
            counter automatically (2 when CFG runs as two calls); None = the caller
            advances steps with ``recorder.step()``.

    Yields:
        The ``AttentionRecorder`` holding the running sums.
    """
    recorder = AttentionRecorder(
        heads=heads, keep_heads=keep_heads, cfg_doubled=cfg_doubled, conditional_only=conditional_only,
        steps=steps, factors=factors, latent_hw=latent_hw,
    )  # fmt: skip
    originals = dict(unet.attn_processors)
    selected = select_cross_attention_layers(list(originals), layers, include_mid)
    patched = dict(originals)
    for key in selected:
        patched[key] = RecordingAttnProcessor(key.removesuffix(".processor"), originals[key], recorder)
    n_calls = [0]

    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep", 0)
        if calls_per_step is not None:
            recorder.step_index = n_calls[0] // calls_per_step
        n_calls[0] += 1
        recorder.on_unet_call(sample, timestep)

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        unet.set_attn_processor(patched)
        yield recorder
    finally:
        handle.remove()
        unet.set_attn_processor(dict(originals))
