"""The kohya caption pipeline: one seeded test per rule, in sd-scripts' order."""

from __future__ import annotations

import random

import pytest

from sdxl_probe.errors import ConfigError
from sdxl_probe.text.captions import CaptionOptions, process_caption

TAGS = "1girl, long hair, blue eyes, smile, outdoors, sky"


def run(caption: str, seed: int = 0, **kw) -> str:
    epoch = kw.pop("epoch", 1)
    step = kw.pop("step", 0)
    return process_caption(caption, CaptionOptions(**kw), random.Random(seed), epoch=epoch, step=step)


def test_defaults_leave_caption_alone():
    assert run(TAGS) == TAGS
    assert CaptionOptions().caption_separator == "," and CaptionOptions().token_warmup_min == 1


def test_prefix_and_suffix():
    assert run("a cat", caption_prefix="sks", caption_suffix="photo") == "sks a cat photo"


def test_caption_dropout_rate():
    assert run(TAGS, caption_dropout_rate=1.0) == ""
    for seed in range(20):
        dropped = random.Random(seed).random() < 0.5
        assert (run(TAGS, seed, caption_dropout_rate=0.5) == "") == dropped


def test_no_draw_without_dropout():
    rng = random.Random(3)
    process_caption(TAGS, CaptionOptions(), rng)
    assert rng.random() == random.Random(3).random()


def test_dropout_every_n_epochs_counts_from_one():
    dropped = [run(TAGS, caption_dropout_every_n_epochs=3, epoch=e) == "" for e in range(1, 7)]
    assert dropped == [False, False, True, False, False, True]


def test_dropout_skips_the_rest():
    assert run("a\nb", caption_prefix="p", caption_dropout_rate=1.0, enable_wildcard=True) == ""


def test_wildcards():
    for seed in range(10):
        rng = random.Random(seed)
        line = rng.choice(["{red|blue} cat", "{big|small} dog"])
        word = rng.choice(line[1:line.index("}")].split("|"))
        expected = word + line[line.index("}") + 1 :]
        assert run("{red|blue} cat\n{big|small} dog", seed, enable_wildcard=True) == expected
    assert run("{{literal}} {a}", enable_wildcard=True) == "{literal} a"


def test_without_wildcards_first_line_only():
    assert run("{red|blue} cat\nsecond line") == "{red|blue} cat"


def test_keep_tokens_alone_does_nothing():
    caption = " 1girl ,long hair,,smile "
    assert run(caption, keep_tokens=2) == caption


def test_shuffle_keeps_first_tags():
    tags = [t.strip() for t in TAGS.split(",")]
    for seed in range(5):
        flex = tags[2:]
        random.Random(seed).shuffle(flex)
        assert run(TAGS, seed, shuffle_caption=True, keep_tokens=2) == ", ".join(tags[:2] + flex)


def test_empty_tags_survive_the_split():
    out = run("a,,b", shuffle_caption=True)
    assert sorted(out.split(", ")) == ["", "a", "b"]


def test_keep_tokens_separator_fixed_flex_suffix():
    caption = "sks, 1girl ||| smile, sky, tree ||| masterpiece, best"
    for seed in range(5):
        out = run(caption, seed, shuffle_caption=True, keep_tokens_separator="|||", keep_tokens=5)
        tags = out.split(", ")
        assert tags[:2] == ["sks", "1girl"] and tags[-2:] == ["masterpiece", "best"]
        assert sorted(tags[2:5]) == ["sky", "smile", "tree"]


def test_keep_tokens_separator_absent_falls_back_to_keep_tokens():
    out = run(TAGS, 1, shuffle_caption=True, keep_tokens_separator="|||", keep_tokens=1)
    assert out.startswith("1girl, ")


def test_tag_dropout_on_flex_only():
    out = run("sks ||| a, b, c ||| end", caption_tag_dropout_rate=1.0, keep_tokens_separator="|||")
    assert out == "sks, end"
    tags = [t.strip() for t in TAGS.split(",")]
    rng = random.Random(7)
    kept = [t for t in tags[1:] if rng.random() >= 0.5]
    assert run(TAGS, 7, caption_tag_dropout_rate=0.5, keep_tokens=1) == ", ".join(tags[:1] + kept)


def test_token_warmup():
    opts = dict(token_warmup_step=10, token_warmup_min=1, keep_tokens=1)
    assert run(TAGS, step=0, **opts) == "1girl, long hair"
    # 5 flex tags: floor(5 * (5 - 1) / 10) + 1 = 3
    assert run(TAGS, step=5, **opts) == "1girl, long hair, blue eyes, smile"
    assert run(TAGS, step=10, **opts) == TAGS


def test_token_warmup_fraction_needs_max_train_steps():
    opts = CaptionOptions(token_warmup_step=0.5)
    with pytest.raises(ConfigError, match="max_train_steps"):
        process_caption(TAGS, opts, random.Random(0))
    out = process_caption(TAGS, opts, random.Random(0), step=0, max_train_steps=20)
    assert out == "1girl"


def test_rejoin_with_configured_separator():
    """Upstream fix of sd-scripts #1304: the configured separator, not a hard-coded ', '."""
    out = run("a; b; c", 0, shuffle_caption=True, caption_separator=";")
    assert sorted(out.split("; ")) == ["a", "b", "c"]


def test_secondary_separator():
    caption = "1girl, long hair;;;blue eyes, smile"
    assert run(caption, secondary_separator=";;;") == "1girl, long hair,blue eyes, smile"
    for seed in range(5):
        out = run(caption, seed, secondary_separator=";;;", shuffle_caption=True)
        assert "long hair,blue eyes" in out  # shuffled as one unit


def test_seeded_runs_repeat():
    opts = dict(shuffle_caption=True, caption_tag_dropout_rate=0.3, enable_wildcard=True)
    assert run(TAGS, 11, **opts) == run(TAGS, 11, **opts)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"caption_dropout_rate": 1.5}, "caption_dropout_rate=1.5"),
        ({"caption_tag_dropout_rate": -0.1}, "caption_tag_dropout_rate=-0.1"),
        ({"keep_tokens": -1}, "keep_tokens=-1"),
        ({"caption_dropout_every_n_epochs": 1.5}, "caption_dropout_every_n_epochs=1.5"),
        ({"token_warmup_step": -2}, "token_warmup_step=-2"),
        ({"caption_separator": ""}, "caption_separator='' is empty"),
        ({"caption_dropout_rate": "0.1"}, "caption_dropout_rate='0.1'"),
        ({"caption_prefix": 3}, "caption_prefix=3 must be text"),
    ],
)
def test_validation(kw, message):
    with pytest.raises(ConfigError, match=message):
        CaptionOptions(**kw)
