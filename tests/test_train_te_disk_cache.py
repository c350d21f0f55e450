"""The on-disk text-encoder output cache (sd-scripts' ``cache_text_encoder_outputs_to_disk``).

Oracles: the memory cache built by the same function (the same batches, so equal bit for bit),
both text encoders called directly through ``encode_with`` on each stored caption variant, and a
count of the calls to ``encode_with`` (which captions reached the encoders).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_probe.config import from_dict
from sdxl_probe.pipeline.conditioning import encode_with
from sdxl_probe.train.lora import caches
from sdxl_probe.train.lora import loop as loop_module
from sdxl_probe.train.lora.caches import build_text_cache
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.data import Buckets, read_images

SETTINGS = {"shuffle_caption": True, "keep_tokens": 1, "caption_tag_dropout_rate": 0.1}


def dataset(root: Path, n: int = 3) -> Path:
    sub = root / "ds" / "1_thing"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text(f"ohwx, tag{i}, red circle, white background, (big:1.2)\n", encoding="utf-8")
    return root / "ds"


def read(root: Path, **settings):
    return read_images(str(root), caption_extension=".txt", caption_settings={**SETTINGS, **settings},
                       buckets=Buckets(32, False, 32, 32, 32, False), on_bad_image="error", log=print)  # fmt: skip


def build(comps, images, folder, log=print, n_variants=4, seed=3, max_token_length=225):
    return build_text_cache(comps.text_encoder, comps.text_encoder_2, images, n_variants=n_variants, seed=seed,
                            model_max_length=77, max_token_length=max_token_length, weighted=True, folder=folder,
                            log=log)  # fmt: skip


@pytest.fixture
def counted(monkeypatch):
    """Every caption that reaches the text encoders through the cache."""
    seen: list[str] = []

    def counting(te1, te2, captions, **kw):
        seen.extend(captions)
        return encode_with(te1, te2, captions, **kw)

    monkeypatch.setattr(caches, "encode_with", counting)
    return seen


def assert_equal_cache(a, b) -> None:
    assert a.captions == b.captions
    for x, y in zip(a.context + a.pooled, b.context + b.pooled, strict=True):
        assert torch.equal(x, y)


def test_disk_cache_equals_memory_bit_for_bit_and_a_second_build_encodes_nothing(tiny_components, tmp_path, counted):
    """Oracle: the memory cache (bit for bit), encode_with on each variant, and the encoder call count."""
    images = read(dataset(tmp_path))
    memory = build(tiny_components, images, None)
    folder = tmp_path / "te_cache"
    first = build(tiny_components, images, folder)
    assert_equal_cache(first, memory)
    assert first.encoded == 3 and len(list(folder.glob("*.safetensors"))) == 3
    counted.clear()
    again = build(tiny_components, images, folder)
    assert counted == [] and again.encoded == 0
    assert_equal_cache(again, memory)
    for i, variants in enumerate(again.captions):
        assert len(set(variants)) > 1  # the caption pipeline ran before caching
        with torch.no_grad():
            enc = encode_with(tiny_components.text_encoder, tiny_components.text_encoder_2, variants,
                              model_max_length=77, max_token_length=225, weighted=True)  # fmt: skip
        torch.testing.assert_close(again.context[i], enc.context)
        torch.testing.assert_close(again.pooled[i], enc.pooled)


def test_a_changed_caption_or_setting_reencodes_just_what_changed(tiny_components, tmp_path, counted):
    """Oracle: which captions reach the encoders after each change (known by construction), and
    encode_with called directly on the changed image's new variants."""
    root = dataset(tmp_path)
    folder = tmp_path / "te_cache"
    build(tiny_components, read(root), folder)
    (root / "1_thing" / "1.txt").write_text("ohwx, a new caption, blue square\n", encoding="utf-8")
    images = read(root)
    counted.clear()
    cache = build(tiny_components, images, folder)
    assert cache.encoded == 1 and sorted(counted) == sorted(cache.captions[1])
    assert all("blue square" in c or c.startswith("ohwx") for c in cache.captions[1])
    with torch.no_grad():
        enc = encode_with(tiny_components.text_encoder, tiny_components.text_encoder_2, cache.captions[1],
                          model_max_length=77, max_token_length=225, weighted=True)  # fmt: skip
    torch.testing.assert_close(cache.context[1], enc.context)
    assert build(tiny_components, images, folder).encoded == 0
    assert build(tiny_components, images, folder, max_token_length=150).encoded == 3
    assert build(tiny_components, images, folder, seed=4).encoded == 3  # other draws of the shuffle
    assert build(tiny_components, images, folder, n_variants=5).encoded == 3
    assert build(tiny_components, read(root, keep_tokens=2), folder).encoded == 3
    changed = copy.deepcopy(tiny_components)
    with torch.no_grad():
        for p in changed.text_encoder_2.parameters():
            p.add_(0.01)
    assert build(changed, images, folder).encoded == 3  # the encoders' weights are in the key


def test_a_truncated_or_corrupt_file_is_named_and_reencoded(tiny_components, tmp_path):
    """Oracle: the memory cache (a corrupt file would differ from it by far more than the tolerance)."""
    images = read(dataset(tmp_path))
    folder = tmp_path / "te_cache"
    memory = build(tiny_components, images, None)
    build(tiny_components, images, folder)
    disk = caches.TextDiskCache(folder, caches.text_encoders_hash(tiny_components.text_encoder,
                                tiny_components.text_encoder_2), {"model_max_length": 77, "max_token_length": 225,
                                "weighted": True}, print)  # fmt: skip
    truncated, flipped = disk.path(memory.captions[0]), disk.path(memory.captions[2])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    raw = bytearray(flipped.read_bytes())
    raw[-1] ^= 0x40  # the high byte of the last float (little endian): its exponent changes
    flipped.write_bytes(bytes(raw))
    said: list[str] = []
    cache = build(tiny_components, images, folder, log=said.append)
    assert cache.encoded == 2
    named = [s for s in said if "truncated or corrupt" in s]
    assert len(named) == 2 and all("\n" not in s for s in named)
    assert any(str(truncated) in s for s in named) and any(str(flipped) in s for s in named)
    for i in range(3):
        torch.testing.assert_close(cache.context[i], memory.context[i])
        torch.testing.assert_close(cache.pooled[i], memory.pooled[i])
    assert build(tiny_components, images, folder).encoded == 0  # rewritten whole


def test_the_config_switch_caches_to_disk_and_a_second_setup_encodes_nothing(tiny_components, tmp_path, counted):
    """Oracle: the encoder call count across two ``setup`` calls sharing ``text_encoder_cache_dir``."""
    root = dataset(tmp_path)
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(root), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                    "cache_text_encoder_outputs_to_disk": True, "cache_text_variants": 3, **SETTINGS,
                    "text_encoder_cache_dir": str(tmp_path / "te")},
        "training": {"max_train_steps": 2}, "logging": {"progress_bar": False},
    })  # fmt: skip
    said: list[str] = []
    first = loop_module.setup(cfg, tmp_path / "run1", resume=False, log=said.append,
                              components=copy.deepcopy(tiny_components))  # fmt: skip
    assert first.text is not None and first.text.encoded == 3 and len(counted) == 9
    counted.clear()
    second = loop_module.setup(cfg, tmp_path / "run2", resume=False, log=said.append,
                               components=copy.deepcopy(tiny_components))  # fmt: skip
    assert counted == [] and second.text.encoded == 0
    assert_equal_cache(first.text, second.text)
    assert any("0 images encoded now" in s for s in said)
