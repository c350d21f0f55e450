"""The encoding cache: keys, atomic safetensors files, and batched cached encoding."""

from __future__ import annotations

import torch

from sdxl_probe.pipeline.encoding_cache import EncodeSettings, EncodingCache


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "te1": torch.randn(77, 32, generator=g),
        "te2": torch.randn(77, 64, generator=g),
        "pooled": torch.randn(64, generator=g),
    }


def test_put_get_round_trip_and_counters(tmp_path):
    cache = EncodingCache(tmp_path, "abc123")
    settings = EncodeSettings()
    assert cache.get("red circle", settings) is None
    cache.put("red circle", settings, _tensors())
    got = cache.get("red circle", settings)
    assert got is not None and all(torch.equal(got[k], v) for k, v in _tensors().items())
    assert (cache.hits, cache.misses) == (1, 1)
    assert not list(tmp_path.rglob(".*.tmp*")), "atomic writes leave no temp file behind"


def test_key_depends_on_model_caption_and_settings(tmp_path):
    base = EncodingCache(tmp_path, "m1")
    paths = {
        base.path("red circle", EncodeSettings()),
        base.path("red circle ", EncodeSettings()),
        base.path("red circle", EncodeSettings(max_token_length=150)),
        base.path("red circle", EncodeSettings(weighted=True)),
        base.path("red circle", EncodeSettings(mode="diffusers")),
        EncodingCache(tmp_path, "m2").path("red circle", EncodeSettings()),
    }
    assert len(paths) == 6
    assert base.path("red circle", EncodeSettings()) == EncodingCache(tmp_path, "m1").path(
        "red circle", EncodeSettings()
    )


def test_corrupt_or_foreign_file_is_a_miss(tmp_path):
    cache = EncodingCache(tmp_path, "m")
    path = cache.path("blue star", EncodeSettings())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not safetensors")
    assert cache.get("blue star", EncodeSettings()) is None
    cache.put("blue star", EncodeSettings(), _tensors(1))
    assert cache.get("blue star", EncodeSettings()) is not None
    # A file whose stored caption differs (a hash collision, or a moved file) is rejected.
    other = cache.path("green square", EncodeSettings())
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(path.read_bytes())
    assert cache.get("green square", EncodeSettings()) is None
