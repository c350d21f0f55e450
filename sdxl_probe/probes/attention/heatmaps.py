"""Turn recorded cross-attention sums into DAAM heat maps per token, word and tag.

DAAM (Tang et al., ACL 2023; castorini/daam ``compute_global_heat_map``) sums each
layer's map over steps, bicubic-upsamples it to a common size, clamps it at 0 and takes
the mean over layers and heads. Here the mean over heads is taken while recording (the
probabilities are non-negative, so only the order of clamp and head mean differs), which
keeps memory at O(tokens x H x W). A word's map is the mean of its BPE tokens' maps
(DAAM ``compute_token_merge_indices``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_WORD = re.compile(r"\w+(?:'\w+)*")


def default_heatmap_size(map_hw: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """The largest recorded map size (64x64 for SDXL at 1024 px, DAAM's choice)."""
    if not map_hw:
        raise ValueError("no attention maps were recorded: check the layer, step and resolution selection")
    return max(map_hw.values(), key=lambda hw: hw[0] * hw[1])


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic-upsample (..., h, w) maps to (..., H, W) and clamp at 0 (DAAM)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bicubic", align_corners=False).clamp_(min=0)
    return out.reshape(*lead, *size)


def global_heat_map(sums: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """DAAM's global heat map: per layer upsample + clamp, then mean over layers and heads.

    Args:
        sums: layer name -> (B, K, T, h, w) maps summed over steps (``AttentionRecorder.sums``).
        size: common (H, W) to upsample to.

    Returns:
        (B, T, H, W) float32 heat map per token position of the context.
    """
    if not sums:
        raise ValueError("no attention maps were recorded: check the layer, step and resolution selection")
    total = None
    for maps in sums.values():
        layer = upsample(maps, size).mean(dim=1)  # (B, T, H, W)
        total = layer if total is None else total + layer
    return total / len(sums)


@dataclass(frozen=True)
class Word:
    """A word of a caption and the context positions of its BPE tokens.

    Attributes:
        text: the word as written in the caption.
        start: char offset in the caption.
        end: char offset just past the word.
        positions: context positions of its tokens that were kept (empty when cut).
        n_tokens: number of BPE tokens of the word, kept or cut.
    """

    text: str
    start: int
    end: int
    positions: tuple[int, ...]
    n_tokens: int

    @property
    def cut(self) -> bool:
        """True when some of the word's tokens fall outside the context."""
        return len(self.positions) < self.n_tokens


def caption_words(
    caption: str, token_spans: Sequence[tuple[int, int]], positions: Sequence[int | None]
) -> list[Word]:
    """Words of ``caption`` with the context positions of the tokens inside them.

    Args:
        caption: the caption text.
        token_spans: (start, end) char span of every caption token (no BOS/EOS).
        positions: context position of every caption token, None when cut (TEXT's
            ``ChunkLayout.positions``).

    Returns:
        One Word per regex word (letters, digits, apostrophes), in caption order.
        Punctuation tokens belong to no word.
    """
    words = []
    for match in _WORD.finditer(caption):
        inside = [i for i, (s, e) in enumerate(token_spans) if s < match.end() and e > match.start()]
        kept = tuple(positions[i] for i in inside if positions[i] is not None)
        words.append(Word(match.group(), match.start(), match.end(), kept, len(inside)))
    return words


def caption_tags(
    tags: Sequence[tuple[str, int, int]],
    token_spans: Sequence[tuple[int, int]],
    positions: Sequence[int | None],
) -> list[Word]:
    """Tags of a caption (``TokenizedCaption.tags``) with the context positions of their tokens.

    A tag's map is the mean of its tokens' maps, as for a multi-token word; separators are
    outside the stripped tag span, so they do not count. Empty tags are skipped.
    """
    out = []
    for text, start, end in tags:
        if start >= end:
            continue
        inside = [i for i, (s, e) in enumerate(token_spans) if s < end and e > start]
        kept = tuple(positions[i] for i in inside if positions[i] is not None)
        out.append(Word(text, start, end, kept, len(inside)))
    return out


def group_map(token_maps: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Mean of the maps at ``positions`` (DAAM word map). (..., T, H, W) -> (..., H, W)."""
    if not positions:
        raise ValueError("no token positions: the word was cut from the context")
    return token_maps[..., list(positions), :, :].mean(dim=-3)


def position_kinds(context_length: int, content_positions: Sequence[int]) -> list[str]:
    """Label every context position as bos, content, eos or pad.

    Position 0 is BOS; the first position after the last caption token is EOS; every
    other non-caption position is padding (the "!" or EOS fillers, and the last chunk's
    closing EOS of a long context).

    Args:
        context_length: L, e.g. 77, 152 or 227.
        content_positions: context positions of the kept caption tokens.

    Returns:
        A list of L labels.
    """
    kinds = ["pad"] * context_length
    kinds[0] = "bos"
    for p in content_positions:
        kinds[p] = "content"
    eos = max(content_positions, default=0) + 1
    if eos < context_length:
        kinds[eos] = "eos"
    return kinds


def kind_maps(token_maps: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean map of the BOS, EOS and padding positions, shown apart from the words.

    Args:
        token_maps: (..., T, H, W).
        kinds: T labels from ``position_kinds``.

    Returns:
        kind -> (..., H, W) for each of bos/eos/pad that occurs.
    """
    out = {}
    for kind in ("bos", "eos", "pad"):
        positions = [i for i, k in enumerate(kinds) if k == kind]
        if positions:
            out[kind] = group_map(token_maps, positions)
    return out
