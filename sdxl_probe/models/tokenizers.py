"""SDXL's two CLIP tokenizers, built offline from the BPE vocabulary in the open_clip wheel.

SDXL base uses the same CLIP BPE for both text encoders; only the pad token differs:
tokenizer 1 (CLIP ViT-L) pads with ``<|endoftext|>`` (49407), tokenizer 2 (OpenCLIP bigG)
pads with ``!`` (id 0), as in ``stabilityai/stable-diffusion-xl-base-1.0``.

transformers 5.x ``CLIPTokenizer`` is tokenizers-backed: it must be given ``vocab=`` (a dict)
and ``merges=`` (a list); the old ``vocab_file=``/``merges_file=`` keywords silently give
wrong ids.

Text cleaning differs between the two implementations: open_clip's ``SimpleTokenizer`` runs
``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsing and lower-casing; the HF
tokenizer lower-cases and collapses whitespace but never unescapes HTML (``&amp;`` stays
three tokens). :func:`clip_clean_text` applies open_clip's cleaning, so that
``tokenizer(clip_clean_text(s))`` equals open_clip's ids for any ``s``.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdxl_probe.io import write_text
from sdxl_probe.text.vocab import BOS_TOKEN, EOS_TOKEN, load_merges, load_vocab

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

PadToken = Literal["eos", "!"]

# The published SDXL tokenizer length: CLIP's 77 positions (75 tokens + BOS + EOS).
SDXL_MODEL_MAX_LENGTH = 77


def _pad_string(pad: PadToken) -> str:
    if pad == "eos":
        return EOS_TOKEN
    if pad == "!":
        return "!"
    raise ValueError(f"pad must be 'eos' or '!', got {pad!r}")


def build_clip_tokenizer(pad: PadToken, model_max_length: int = SDXL_MODEL_MAX_LENGTH) -> CLIPTokenizer:
    """Build an HF ``CLIPTokenizer`` from the open_clip BPE files, fully offline.

    Args:
        pad: ``"eos"`` for SDXL's tokenizer 1 (pads with 49407), ``"!"`` for tokenizer 2 (id 0).
        model_max_length: context length, BOS and EOS included (77 on every SDXL checkpoint).

    Returns:
        A fresh tokenizer (callers may mutate it).
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=dict(load_vocab()),
        merges=list(load_merges()),
        model_max_length=model_max_length,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=_pad_string(pad),
    )


def clip_clean_text(text: str) -> str:
    """open_clip's ``SimpleTokenizer`` cleaning: ftfy, double HTML unescape, whitespace collapse, lower.

    Source: ``open_clip/tokenizer.py`` (``basic_clean``, ``whitespace_clean``, ``canonicalize`` off).
    """
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


@lru_cache(maxsize=1)
def _vocab_json() -> str:
    return json.dumps(load_vocab(), ensure_ascii=False)


def tokenizer_files(pad: PadToken, model_max_length: int = SDXL_MODEL_MAX_LENGTH) -> dict[str, str]:
    """The text of a diffusers ``tokenizer/`` folder (as published for SDXL base), by file name."""
    pad_str = _pad_string(pad)
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": pad_str, "unk_token": EOS_TOKEN}
    config = {
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": model_max_length,
        "tokenizer_class": "CLIPTokenizer",
        **special,
    }
    merges = "#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in load_merges())
    return {
        "vocab.json": _vocab_json() + "\n",
        "merges.txt": merges,
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
    }


def write_tokenizer_folder(
    folder: str | Path, pad: PadToken, model_max_length: int = SDXL_MODEL_MAX_LENGTH
) -> Path:
    """Write a diffusers/transformers tokenizer folder (vocab.json, merges.txt, configs)."""
    folder = Path(folder)
    for name, text in tokenizer_files(pad, model_max_length).items():
        write_text(folder / name, text)
    return folder
