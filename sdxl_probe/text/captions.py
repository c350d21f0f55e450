"""The kohya caption pipeline as a pure function with an explicit RNG.

Source: kohya-ss/sd-scripts ``BaseDataset.process_caption`` (library/train_util.py), see
docs/sd-scripts-compat.md §2. Steps, in sd-scripts' order, drawing random numbers in the
same order (so a seeded ``random.Random`` replays one sd-scripts draw sequence):

1. ``caption_prefix + " " + caption`` and ``caption + " " + caption_suffix``;
2. whole-caption dropout: ``rng.random() < caption_dropout_rate`` (drawn only when the rate is
   > 0), or ``epoch % caption_dropout_every_n_epochs == 0`` (epochs count from 1) -> ``""``;
3. wildcards (``enable_wildcard``): a multi-line caption gives one random line, ``{a|b|c}`` one
   random option, ``{{``/``}}`` are literal braces; without wildcards only the first line is kept;
4. only if ``shuffle_caption`` or ``token_warmup_step > 0`` or ``caption_tag_dropout_rate > 0``:
   split into fixed | flex | fixed-suffix parts on ``keep_tokens_separator`` (when present in
   the caption), else on ``caption_separator`` with the first ``keep_tokens`` TAGS fixed; token
   warmup truncates flex; shuffle flex; tag dropout on flex; rejoin;
5. ``secondary_separator`` is replaced by ``caption_separator``.

One deliberate difference: sd-scripts rejoins the tags with a hard-coded ``", "`` (issue #1304);
here they are rejoined with ``caption_separator + " "``, as upstream's fix (PR #2390) does. With
the default separator ``","`` both give the same text. Textual-inversion replacements (step 6)
are not modelled.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from sdxl_probe.errors import ConfigError

WILDCARD = re.compile(r"\{([^}]+)\}")


@dataclass
class CaptionOptions:
    """kohya subset caption settings (names and defaults as in sd-scripts' dataset TOML)."""

    caption_prefix: str | None = None
    """Text prepended with a space."""
    caption_suffix: str | None = None
    """Text appended with a space."""
    caption_dropout_rate: float = 0.0
    """Probability of training on an empty caption."""
    caption_dropout_every_n_epochs: int = 0
    """Empty caption on every epoch divisible by this (0: never)."""
    enable_wildcard: bool = False
    """Random line of a multi-line caption, random option of ``{a|b}``."""
    keep_tokens: int = 0
    """Number of leading TAGS kept in place by shuffle/dropout (not CLIP tokens)."""
    keep_tokens_separator: str | None = None
    """Marks fixed | flex | fixed-suffix parts; overrides keep_tokens when present in a caption."""
    secondary_separator: str | None = None
    """Joins words into one shuffle unit; replaced by caption_separator at the end."""
    caption_separator: str = ","
    """Tag separator."""
    shuffle_caption: bool = False
    """Shuffle the flex tags."""
    caption_tag_dropout_rate: float = 0.0
    """Probability of dropping each flex tag."""
    token_warmup_min: int = 1
    """Flex tags kept at step 0 of token warmup."""
    token_warmup_step: float = 0
    """Steps (or, below 1, a fraction of max_train_steps) over which all flex tags come in."""

    def __post_init__(self) -> None:
        for name in ("caption_prefix", "caption_suffix", "keep_tokens_separator", "secondary_separator"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}={value!r} must be text (or unset)")
        for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value!r} is not a probability; set it between 0 and 1")
        for name in ("caption_dropout_every_n_epochs", "keep_tokens", "token_warmup_min"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a whole number >= 0")
        if not _is_number(self.token_warmup_step) or self.token_warmup_step < 0:
            raise ConfigError(f"token_warmup_step={self.token_warmup_step!r} must be a number >= 0 (0 disables warmup)")
        if not isinstance(self.caption_separator, str) or not self.caption_separator:
            raise ConfigError(f"caption_separator={self.caption_separator!r} is empty; set it to the tag separator, e.g. ','")

    @property
    def splits_tags(self) -> bool:
        """Whether sd-scripts runs its split/shuffle block (keep_tokens alone does nothing)."""
        return self.shuffle_caption or self.token_warmup_step > 0 or self.caption_tag_dropout_rate > 0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def process_caption(
    caption: str,
    opts: CaptionOptions,
    rng: random.Random,
    *,
    epoch: int = 1,
    step: int = 0,
    max_train_steps: int | None = None,
) -> str:
    """The caption sd-scripts trains on for this draw (see the module docstring for the steps).

    Args:
        caption: the raw caption file text.
        opts: the subset's caption settings.
        rng: the only source of randomness.
        epoch: current epoch, counted from 1 (for caption_dropout_every_n_epochs).
        step: current global step (for token warmup).
        max_train_steps: needed only when 0 < token_warmup_step < 1 (a fraction of it).
    """
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix
    if _dropped(opts, rng, epoch):
        return ""
    caption = expand_wildcards(caption, rng) if opts.enable_wildcard else caption.split("\n")[0]
    if opts.splits_tags:
        fixed, flex, suffix = split_fixed_flex(caption, opts)
        flex = _warmup(flex, opts, step, max_train_steps)
        if opts.shuffle_caption:
            rng.shuffle(flex)
        if opts.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
        caption = (opts.caption_separator + " ").join(fixed + flex + suffix)
    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def _dropped(opts: CaptionOptions, rng: random.Random, epoch: int) -> bool:
    """Whole-caption dropout; the random draw happens only when the rate is > 0."""
    by_rate = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    n = opts.caption_dropout_every_n_epochs
    return by_rate or (n > 0 and epoch % n == 0)


def expand_wildcards(caption: str, rng: random.Random) -> str:
    """A random line, then a random option of every ``{a|b|c}``; ``{{``/``}}`` stay literal."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_mark, close_mark = "⦅", "⦆"
    while open_mark in caption or close_mark in caption:
        open_mark += "⦅"
        close_mark += "⦆"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def split_fixed_flex(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed, flex, fixed-suffix) tags, as sd-scripts splits them before shuffling."""
    sep, kts = opts.caption_separator, opts.keep_tokens_separator
    if kts and kts in caption:
        fixed_part, flex_part = caption.split(kts, 1)
        suffix: list[str] = []
        if kts in flex_part:
            flex_part, suffix_part = flex_part.split(kts, 1)
            suffix = [t.strip() for t in suffix_part.split(sep) if t.strip()]
        fixed = [t.strip() for t in fixed_part.split(sep) if t.strip()]
        return fixed, [t.strip() for t in flex_part.split(sep) if t.strip()], suffix
    tags = [t.strip() for t in caption.strip().split(sep)]  # empty tags kept, as in sd-scripts
    return tags[: opts.keep_tokens], tags[opts.keep_tokens :], []


def _warmup(flex: list[str], opts: CaptionOptions, step: int, max_train_steps: int | None) -> list[str]:
    """Token warmup: ``flex[:floor(step * (len(flex) - min) / warmup_step) + min]``."""
    warmup_step = opts.token_warmup_step
    if 0 < warmup_step < 1:
        if max_train_steps is None:
            raise ConfigError(
                f"token_warmup_step={warmup_step} is a fraction of max_train_steps; pass max_train_steps "
                "or give token_warmup_step in steps"
            )
        warmup_step = math.floor(warmup_step * max_train_steps)
    if warmup_step and step < warmup_step:
        n = math.floor(step * ((len(flex) - opts.token_warmup_min) / warmup_step)) + opts.token_warmup_min
        return flex[:n]
    return flex
