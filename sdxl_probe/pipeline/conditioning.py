"""Encode captions into SDXL text conditioning, as sd-scripts or diffusers does.

``mode="sd-scripts"`` follows kohya-ss/sd-scripts ``SdxlTextEncodingStrategy`` (library/strategy_sdxl.py,
docs/sd-scripts-compat.md §1): every 77-slot chunk of :func:`~sdxl_probe.text.tokens.chunk_layout`
is encoded alone; both encoders give their penultimate hidden states (no final layer norm; sd-scripts'
``hidden_states[11]`` for TE1 and ``hidden_states[-2]`` for TE2 are both layer ``num_hidden_layers - 1``);
chunks are joined keeping chunk 1's BOS, each chunk's 75 middle states and the last chunk's final
state; the pooled vector is TE2's final-layer-norm state at the first EOS of the FIRST chunk, through
``text_projection``. Weighted captions multiply the joined hidden states by the token weights (no mean
renormalisation on SDXL); the pooled vector is never weighted.

``mode="diffusers"`` equals ``StableDiffusionXLPipeline.encode_prompt`` (one 77-slot window, right
truncation, ``hidden_states[-2]``, pooled = TE2 ``text_embeds``). For captions of up to 75 tokens the
two modes give the same tensors.

Token ids come from :mod:`sdxl_probe.text.bpe` (open_clip cleaning). The HF tokenizer that both tools
call differs only on text that ftfy or html.unescape would change (e.g. ``&amp;``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdxl_probe.errors import ConfigError, ProbeError
from sdxl_probe.text.tokens import ChunkLayout, TokenizedCaption, chunk_layout, tokenize_caption

if TYPE_CHECKING:
    from torch import Tensor

    from sdxl_probe.models.components import SDXLComponents

MODES = ("sd-scripts", "diffusers")


@dataclass
class EncodedCaptions:
    """Text conditioning for a batch of captions, with the token bookkeeping behind it.

    Attributes:
        context: (B, L, d1 + d2) UNet cross-attention input, L = 77 | 152 | 227.
        hidden_te1: (B, L, d1) penultimate hidden states of TE1.
        hidden_te2: (B, L, d2) penultimate hidden states of TE2.
        pooled: (B, proj) TE2's projected pooled vector (first chunk only).
        captions: the tokenized captions.
        layouts_te1: per caption, what TE1 received and where each token landed.
        layouts_te2: the same for TE2 (pads with "!" and forces EOS, see tokens.py).
    """

    context: Tensor
    hidden_te1: Tensor
    hidden_te2: Tensor
    pooled: Tensor
    captions: list[TokenizedCaption]
    layouts_te1: list[ChunkLayout]
    layouts_te2: list[ChunkLayout]


def encode_captions(
    components: SDXLComponents,
    captions: list[str],
    *,
    max_token_length: int | None = None,
    mode: str = "sd-scripts",
    weighted: bool = False,
    separator: str = ",",
) -> EncodedCaptions:
    """Encode ``captions`` with both SDXL text encoders (module docstring for the semantics).

    Gradients flow as usual: wrap the call in ``torch.no_grad()`` for inference.

    Args:
        components: the model (tokenizer model_max_length, TE1, TE2).
        captions: B caption strings.
        max_token_length: None (75 tokens), 150 or 225, as sd-scripts' ``--max_token_length``.
        mode: "sd-scripts" or "diffusers".
        weighted: parse ``(x:1.2)`` syntax as sd-scripts' ``--weighted_captions``.
        separator: tag separator for the bookkeeping (``caption_separator``).
    """
    return encode_with(
        components.text_encoder, components.text_encoder_2, captions,
        model_max_length=components.tokenizer.model_max_length, max_token_length=max_token_length,
        mode=mode, weighted=weighted, separator=separator,
    )  # fmt: skip


def encode_with(
    text_encoder,
    text_encoder_2,
    captions: list[str],
    *,
    model_max_length: int,
    max_token_length: int | None = None,
    mode: str = "sd-scripts",
    weighted: bool = False,
    separator: str = ",",
) -> EncodedCaptions:
    """:func:`encode_captions` given the two encoders alone (a recipe that trains them has no components).

    Args:
        model_max_length: the tokenizers' window (77 on SDXL: 75 tokens + BOS + EOS).
        Others: as :func:`encode_captions`.
    """
    _check_mode(mode, max_token_length, weighted)
    if not captions:
        raise ProbeError("no captions to encode: got an empty list; pass at least one caption string")
    tcs = [tokenize_caption(c, weighted=weighted, separator=separator) for c in captions]
    layouts = {
        enc: [chunk_layout(tc, encoder=enc, max_token_length=max_token_length, model_max_length=model_max_length)
              for tc in tcs]
        for enc in ("te1", "te2")
    }  # fmt: skip
    hidden1, _ = _encode_chunks(text_encoder, layouts["te1"])
    hidden2, out2 = _encode_chunks(text_encoder_2, layouts["te2"])
    if mode == "diffusers":
        pooled = out2.text_embeds  # (B, proj)
    else:
        pooled = _pool_first_chunk(text_encoder_2, out2.last_hidden_state, layouts["te2"])
    if weighted:
        hidden1 = hidden1 * _context_weights(layouts["te1"], hidden1)
        hidden2 = hidden2 * _context_weights(layouts["te2"], hidden2)
    import torch

    context = torch.cat([hidden1, hidden2.to(hidden1.device, hidden1.dtype)], dim=-1)  # (B, L, d1 + d2)
    return EncodedCaptions(context, hidden1, hidden2, pooled, tcs, layouts["te1"], layouts["te2"])


def encode_pair(
    components: SDXLComponents, prompts: list[str], negative: str, *, max_token_length: int | None,
    weighted: bool, zero_negative: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Classifier-free guidance conditioning, unconditional half first (diffusers' order).

    Returns:
        context (2B, L, D) and pooled (2B, P); the unconditional half is zeros when ``zero_negative``
        (``StableDiffusionXLPipeline``'s ``force_zeros_for_empty_prompt``), else ``negative`` encoded.
    """
    import torch

    cond = encode_captions(components, prompts, max_token_length=max_token_length, weighted=weighted)
    if zero_negative:
        uncond_ctx, uncond_pool = torch.zeros_like(cond.context), torch.zeros_like(cond.pooled)
    else:
        unc = encode_captions(components, [negative] * len(prompts), max_token_length=max_token_length,
                              weighted=weighted)  # fmt: skip
        uncond_ctx, uncond_pool = unc.context, unc.pooled
    return torch.cat([uncond_ctx, cond.context]), torch.cat([uncond_pool, cond.pooled])


def time_ids(
    batch: int, height: int, width: int, *, original: tuple[int, int] | None = None,
    crop: tuple[int, int] = (0, 0), like: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """SDXL micro-conditioning ``(B, 6)``: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    The one place ``time_ids`` are built (SDXL paper §2.2; ``StableDiffusionXLPipeline._get_add_time_ids``
    concatenates ``original_size + crops_coords_top_left + target_size`` in this order).

    Args:
        batch: rows B.
        height, width: the target size in pixels.
        original: the original image size (h, w); None = the target size (an uncropped image
            generated or trained at its own size, as sd-scripts' sampler does).
        crop: the crop's top-left corner (top, left) in pixels.
        like: a tensor whose dtype and device the result takes (float32 on the CPU otherwise).
    """
    import torch

    oh, ow = original if original is not None else (height, width)
    row = torch.tensor([oh, ow, crop[0], crop[1], height, width], dtype=torch.float32)
    if like is not None:
        row = row.to(device=like.device, dtype=like.dtype)
    return row.expand(batch, -1).clone()


def predict_noise(unet, x: Tensor, t, *, context: Tensor, pooled: Tensor, tids: Tensor) -> Tensor:
    """One conditioned UNet call: x (B, C, h, w), context (B, L, D), pooled (B, P), tids (B, 6) -> (B, C, h, w).

    Inputs are cast to the dtype of the UNet's first weight (``conv_in``); the output keeps it. That is
    ``unet.dtype`` without its walk over every parameter (2 ms a step on the toy model).
    """
    dtype = next(unet.parameters()).dtype
    added = {"text_embeds": pooled.to(dtype), "time_ids": tids.to(dtype)}
    return unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype), added_cond_kwargs=added).sample


def _check_mode(mode: str, max_token_length: int | None, weighted: bool) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is unknown; use one of {MODES}")
    if mode == "diffusers" and max_token_length is not None:
        raise ConfigError(
            f"max_token_length={max_token_length} needs mode='sd-scripts': diffusers' encode_prompt always "
            "truncates to one 77-slot window"
        )
    if mode == "diffusers" and weighted:
        raise ConfigError("weighted captions need mode='sd-scripts': diffusers' encode_prompt has no weighting")


def _encode_chunks(encoder, layouts: list[ChunkLayout]):
    """Encode every chunk alone and join them.

    Returns:
        hidden: (B, L, d) joined penultimate states;
        out: the encoder output on the (B * n, 77) chunk batch.
    """
    import torch

    ids = torch.tensor([lay.input_ids for lay in layouts], dtype=torch.long)  # (B, n, 77)
    b, n, width = ids.shape
    # hidden_states[-2] is the output of the second-to-last layer: keep that one alone rather than
    # output_hidden_states=True, which holds every layer's (B * n, 77, d) states (33 on TE2) at once.
    layers = (encoder.text_model if hasattr(encoder, "text_model") else encoder).encoder.layers
    kept = []
    hook = layers[-2].register_forward_hook(lambda _m, _a, o: kept.append(o[0] if isinstance(o, tuple) else o))
    try:
        out = encoder(ids.reshape(b * n, width).to(encoder.device), return_dict=True)
    finally:
        hook.remove()
    penultimate = kept[0]  # (B * n, 77, d)
    return join_chunks(penultimate.reshape(b, n, width, -1)), out


def join_chunks(hidden: Tensor) -> Tensor:
    """(B, n, 77, d) chunk states -> (B, 2 + 75 n, d): chunk 1's BOS, each chunk's middle, last EOS slot."""
    import torch

    b, n, width, d = hidden.shape
    middle = hidden[:, :, 1:-1].reshape(b, n * (width - 2), d)
    return torch.cat([hidden[:, 0, :1], middle, hidden[:, -1, -1:]], dim=1)


def _pool_first_chunk(encoder, last_hidden: Tensor, layouts: list[ChunkLayout]) -> Tensor:
    """sd-scripts' ``_pool_workaround``: state at the first EOS, projected; first chunk of each caption.

    Args:
        last_hidden: (B * n, 77, d) final-layer-norm states of TE2.

    Returns:
        (B, proj).
    """
    import torch

    from sdxl_probe.text.bpe import get_bpe

    ids = torch.tensor([lay.input_ids for lay in layouts], dtype=torch.long)  # (B, n, 77)
    b, n, width = ids.shape
    first_eos = (ids.reshape(b * n, width) == get_bpe().eos_id).int().argmax(dim=1).to(last_hidden.device)
    pooled = last_hidden[torch.arange(b * n, device=last_hidden.device), first_eos]  # (B * n, d)
    proj = encoder.text_projection
    return proj(pooled.to(proj.weight.dtype)).to(last_hidden.dtype)[::n]


def _context_weights(layouts: list[ChunkLayout], like: Tensor) -> Tensor:
    """(B, L, 1) weights in context order: chunk middles carry token weights, BOS/EOS 1.0."""
    import torch

    rows = [[1.0, *(w for chunk in lay.weights for w in chunk[1:-1]), 1.0] for lay in layouts]
    return torch.tensor(rows, dtype=like.dtype, device=like.device).unsqueeze(-1)
