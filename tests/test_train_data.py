"""Trainer data: buckets, micro-conditioning, batch order, bad inputs, latent and text-encoder caches.

Oracles: the bucket rules checked as properties (area, multiples, maximality, nearest aspect by brute
force), crop geometry computed by hand, PIL for pixels, the VAE and both text encoders called directly.
"""

from __future__ import annotations

import copy
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_probe.errors import ConfigError, DatasetError
from sdxl_probe.pipeline.conditioning import encode_with, time_ids
from sdxl_probe.pipeline.vae import encode_images
from sdxl_probe.text.captions import CaptionOptions
from sdxl_probe.train.lora.caches import LatentCache, build_text_cache, check_text_cache
from sdxl_probe.train.lora.data import (
    BatchOrder,
    Buckets,
    TrainImage,
    check_buckets,
    load_pixels,
    make_buckets,
    micro_conditioning,
    read_images,
    select_bucket,
)

SDXL = Buckets(1024, True, 256, 2048, 64, False)
NO_BUCKETS = Buckets(32, False, 256, 1024, 64, False)


def image_file(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def folder(tmp_path, n=3, size=(32, 32), name="2_thing"):
    sub = tmp_path / "ds" / name
    sub.mkdir(parents=True)
    for i in range(n):
        image_file(sub / f"{i}.png", *size, seed=i)
        (sub / f"{i}.txt").write_text(f"tag{i}, red circle, white background\n", encoding="utf-8")
    return tmp_path / "ds"


def read(path, buckets=NO_BUCKETS, on_bad_image="error", log=print, **caption_settings):
    return read_images(str(path), caption_extension=".txt", caption_settings=caption_settings, buckets=buckets,
                       on_bad_image=on_bad_image, log=log)  # fmt: skip


def test_buckets_obey_area_steps_range_and_are_maximal():
    buckets = make_buckets(SDXL)
    assert (1024, 1024) in buckets and len(buckets) > 10
    for h, w in buckets:
        assert h * w <= 1024 * 1024 and h % 64 == 0 and w % 64 == 0
        assert 256 <= h <= 2048 and 256 <= w <= 2048
        assert (h + 64) * w > 1024 * 1024 or h + 64 > 2048 or (w, h + 64) in buckets  # no taller bucket missed


@pytest.mark.parametrize("h, w", [(600, 1200), (1024, 768), (333, 1999), (2000, 2000)])
def test_bucket_has_the_nearest_aspect_ratio(h, w):
    buckets = make_buckets(SDXL)
    got = select_bucket(SDXL, buckets, h, w)
    best = min(abs(bw / bh - w / h) for bh, bw in buckets)
    assert abs(got[1] / got[0] - w / h) == pytest.approx(best)


def test_no_upscale_keeps_small_images_small():
    b = Buckets(1024, True, 256, 2048, 64, True)
    assert select_bucket(b, make_buckets(b), 300, 500) == (256, 448)  # rounded down to steps, never up


def test_micro_conditioning_is_the_true_original_and_crop(tmp_path):
    path = image_file(tmp_path / "a.png", 60, 101)
    im = TrainImage(path, "x", CaptionOptions(), 1, "s", "h", (60, 101), (32, 64))
    # by hand: scale max(32/60, 64/101) = 0.6337 -> resized (38, 64): crop top (38 - 32) // 2 = 3, left 0
    assert micro_conditioning(im, False) == ((60, 101), (3, 0))
    tall = TrainImage(path, "x", CaptionOptions(), 1, "s", "h", (100, 61), (64, 32))
    # scale 0.64 -> resized (64, 39): left (39 - 32) // 2 = 3; mirrored: 39 - 32 - 3 = 4
    assert micro_conditioning(tall, False)[1] == (0, 3) and micro_conditioning(tall, True)[1] == (0, 4)
    row = time_ids(1, 32, 64, original=(60, 101), crop=(3, 0))
    assert row.tolist() == [[60.0, 101.0, 3.0, 0.0, 32.0, 64.0]]


def test_pixels_are_resized_cropped_and_flipped(tmp_path):
    path = image_file(tmp_path / "a.png", 60, 101)
    im = TrainImage(path, "x", CaptionOptions(), 1, "s", "h", (60, 101), (32, 64))
    expected = np.asarray(Image.open(path).convert("RGB").resize((64, 38), Image.Resampling.LANCZOS))[3:35]
    assert np.array_equal(load_pixels(im, False), expected)
    assert np.array_equal(load_pixels(im, True), expected[:, ::-1])


def test_batch_order_covers_each_repeat_once_per_epoch_in_one_bucket(tmp_path):
    imgs = [TrainImage(tmp_path / f"{i}.png", "c", CaptionOptions(), 1 + i % 3, "s", str(i), (32, 32),
                       (32, 32) if i % 2 else (32, 64)) for i in range(10)]  # fmt: skip
    order = BatchOrder(imgs, list(range(10)), 4, seed=5)
    for epoch in range(2):
        batches = order.epoch(epoch)
        assert Counter(i for b in batches for i in b) == Counter({i: 1 + i % 3 for i in range(10)})
        assert all(len({imgs[i].bucket for i in b}) == 1 for b in batches)
    assert order.epoch(0) != order.epoch(1)
    assert BatchOrder(imgs, list(range(10)), 4, seed=5).at(order.per_epoch + 2) == (1, order.epoch(1)[2])


def test_missing_dataset_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="not found") as e:
        read(tmp_path / "nope")
    assert "\n" not in str(e.value)


def test_undecodable_image_is_fatal_or_skipped_and_named(tmp_path):
    root = folder(tmp_path)
    bad = root / "2_thing" / "1.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"1\.png: cannot decode the image.*on_bad_image"):
        read(root)
    said = []
    images = read(root, on_bad_image="skip", log=said.append)
    assert len(images) == 2 and any("1.png" in s for s in said)


def test_non_utf8_caption_is_an_error(tmp_path):
    root = folder(tmp_path)
    (root / "2_thing" / "0.txt").write_bytes(b"caf\xe9, red circle\n")
    with pytest.raises(DatasetError, match=r"0\.txt: caption file is not valid UTF-8"):
        read(root)


def test_repeats_class_tokens_and_original_size(tmp_path):
    root = folder(tmp_path, n=2, size=(40, 24))
    (root / "2_thing" / "1.txt").unlink()
    images = read(root, buckets=Buckets(32, False, 256, 1024, 64, False))
    assert [im.repeats for im in images] == [2, 2]
    assert images[1].caption == "thing" and images[0].original == (40, 24) and images[0].bucket == (32, 32)


@pytest.mark.parametrize("buckets, match", [
    (Buckets(30, False, 256, 1024, 64, False), "not a multiple of 4"),
    (Buckets(1024, True, 256, 512, 64, False), "must lie in the bucket range"),
    (Buckets(1024, True, 256, 2048, 66, False), "bucket_reso_steps = 66"),
])  # fmt: skip
def test_sizes_the_model_cannot_take_are_refused(buckets, match):
    with pytest.raises(ConfigError, match=match):
        check_buckets(buckets, 4)


def test_latent_cache_matches_the_vae_and_is_invalidated(tiny_components, tmp_path):
    comps = copy.deepcopy(tiny_components)
    root = folder(tmp_path, n=2)
    images = read(root)
    cache_dir = tmp_path / "cache"
    first = LatentCache(comps, cache_dir)
    got = first.get(images[0], True)
    torch.testing.assert_close(got, encode_images(comps, load_pixels(images[0], True)[None])[0], rtol=0, atol=0)
    again = LatentCache(comps, cache_dir)
    torch.testing.assert_close(again.get(images[0], True), got, rtol=0, atol=0)
    assert again.encoded == 0  # read from disk
    image_file(images[0].path, 32, 32, seed=99)  # the image changes
    changed = read(root)[0]
    assert LatentCache(comps, cache_dir).get(changed, True) is not None and len(list(cache_dir.iterdir())) == 2
    other_bucket = TrainImage(**{**images[0].__dict__, "bucket": (16, 16)})
    c3 = LatentCache(comps, cache_dir)
    assert c3.get(other_bucket, True).shape[-2:] == (8, 8) and c3.encoded == 1
    with torch.no_grad():
        comps.vae.decoder.conv_out.weight.add_(0.01)  # the decoder only: latents would not change, the key must
    c4 = LatentCache(comps, cache_dir)
    c4.get(images[1], False)
    c4.get(read(root)[1], False)
    assert c4.encoded == 1 and c4.vae_id != first.vae_id


def long_caption(i):
    tags = [f"tag{i}_{k}" for k in range(60)]  # ~ 180 tokens: needs max_token_length 225
    return ", ".join(["(ohwx:1.3)", *tags, "[blurry]"])


def test_text_cache_equals_uncached_encoding_with_variants(tiny_components):
    comps = tiny_components
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.3, caption_tag_dropout_rate=0.1)
    images = [TrainImage(None, long_caption(i), opts, 1, "s", str(i), (32, 32), (32, 32)) for i in range(3)]
    cache = build_text_cache(comps.text_encoder, comps.text_encoder_2, images, n_variants=5, seed=3,
                             model_max_length=77, max_token_length=225, weighted=True)  # fmt: skip
    assert all(len(v) == 5 for v in cache.captions)
    for i, variants in enumerate(cache.captions):
        assert len(set(variants)) > 1  # the pipeline ran: shuffles differ
        for k, caption in enumerate(variants):
            if caption:
                tags = caption.split(", ")
                assert tags[0] == "(ohwx:1.3)" and set(tags) <= set(long_caption(i).split(", "))
            with torch.no_grad():
                enc = encode_with(comps.text_encoder, comps.text_encoder_2, [caption], model_max_length=77,
                                  max_token_length=225, weighted=True)  # fmt: skip
            assert enc.context.shape[1] == 227
            torch.testing.assert_close(cache.context[i][k], enc.context[0])
            torch.testing.assert_close(cache.pooled[i][k], enc.pooled[0])
    context, pooled, caps = cache.draw([2, 0], random.Random(0))
    assert context.shape == (2, 227, cache.context[0].shape[-1]) and caps[0] in cache.captions[2]


def test_text_cache_refusals_give_the_reason():
    img = lambda o: TrainImage(None, "a, b", o, 1, "s", "h", (32, 32), (32, 32))  # noqa: E731
    with pytest.raises(ConfigError, match="shuffle_caption makes captions random.*cache_text_variants"):
        check_text_cache([img(CaptionOptions(shuffle_caption=True))], 0, False)
    with pytest.raises(ConfigError, match="token_warmup_step"):
        check_text_cache([img(CaptionOptions(token_warmup_step=10))], 8, False)
    with pytest.raises(ConfigError, match="frozen text encoders"):
        check_text_cache([img(CaptionOptions())], 0, True)
    check_text_cache([img(CaptionOptions(shuffle_caption=True))], 4, False)  # with variants: accepted
