"""Unit tests on hand-built tensors: DAAM aggregation, words, metrics, result files, overlays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.probes.attention import heatmaps, metrics, overlay
from sdxl_probe.probes.attention.result import AttentionResult


def test_global_heat_map_means_layers_after_upsampling():
    a = torch.zeros(1, 1, 3, 4, 4)
    a[0, 0, 1, :2, :2] = 4.0  # token 1 in the top-left quarter
    b = torch.zeros(1, 2, 3, 2, 2)
    b[0, :, 2, 1, 1] = 1.0  # token 2 bottom-right at a coarser layer, two heads kept
    size = heatmaps.default_heatmap_size({"a": (4, 4), "b": (2, 2)})
    assert size == (4, 4)
    g = heatmaps.global_heat_map({"a": a, "b": b}, size)
    assert g.shape == (1, 3, 4, 4)
    assert (g >= 0).all()
    assert torch.allclose(g[0, 1], heatmaps.upsample(a[0, 0, 1], size) / 2)
    assert g[0, 1, 0, 0] > g[0, 1, 3, 3] and g[0, 2, 3, 3] > g[0, 2, 0, 0]
    with pytest.raises(ValueError, match="no attention maps"):
        heatmaps.global_heat_map({}, size)


def test_caption_words_multi_token_and_cut():
    caption = "a spiky-hedgehog, red"
    # hand-made BPE-like spans: "spiky" split into two tokens; the last token is cut
    spans = [(0, 1), (2, 5), (5, 7), (7, 8), (8, 16), (16, 17), (18, 21)]
    positions = [1, 2, 3, 4, 5, 6, None]
    words = heatmaps.caption_words(caption, spans, positions)
    assert [w.text for w in words] == ["a", "spiky", "hedgehog", "red"]
    assert words[1].positions == (2, 3) and words[1].n_tokens == 2 and not words[1].cut
    assert words[3].positions == () and words[3].cut
    maps = torch.arange(8 * 2 * 2, dtype=torch.float32).view(8, 2, 2)
    assert torch.equal(heatmaps.group_map(maps, words[1].positions), (maps[2] + maps[3]) / 2)


def test_caption_tags_skip_separators_and_empty_tags():
    # caption "red circle, , sky": the second tag is empty, "sky" is cut from the context
    spans = [(0, 3), (4, 10), (10, 11), (12, 13), (14, 17)]
    tags = [("red circle", 0, 10), ("", 12, 12), ("sky", 14, 17)]
    out = heatmaps.caption_tags(tags, spans, [1, 2, 3, 4, None])
    assert [(t.text, t.positions, t.cut) for t in out] == [("red circle", (1, 2), False), ("sky", (), True)]


def test_position_kinds_and_kind_maps():
    kinds = heatmaps.position_kinds(152, list(range(1, 100)))
    assert kinds[0] == "bos" and kinds[99] == "content" and kinds[100] == "eos"
    assert kinds[101:] == ["pad"] * 51
    full = heatmaps.position_kinds(77, list(range(1, 76)))
    assert full[76] == "eos" and "pad" not in full
    maps = torch.rand(77, 3, 3)
    out = heatmaps.kind_maps(maps, full)
    assert set(out) == {"bos", "eos"} and torch.equal(out["bos"], maps[0])


def test_mask_iou_tau_and_minmax():
    heat = torch.zeros(8, 8)
    heat[:4, :4] = 1.0
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:16, :16] = True
    assert metrics.mask_iou(heat, mask) > 0.8
    assert metrics.mask_iou(heat, ~mask) < 0.1
    assert metrics.minmax(torch.full((3, 3), 2.0)).sum() == 0
    assert metrics.iou(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)) == 1.0


def test_entropies_and_mass_shares():
    assert metrics.spatial_entropy(torch.ones(4, 4)) == pytest.approx(1.0)
    peak = torch.zeros(4, 4)
    peak[1, 2] = 3.0
    assert metrics.spatial_entropy(peak) == pytest.approx(0.0)
    assert metrics.token_entropy(torch.full((77,), 1 / 77)) == pytest.approx(math.log(77), rel=1e-5)
    mass = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    shares = metrics.mass_shares(mass, ["bos", "content", "content", "eos", "pad"])
    assert shares == pytest.approx({"bos": 0.5, "content": 0.3, "eos": 0.1, "pad": 0.1})


def test_map_change():
    base = torch.zeros(8, 8)
    base[0, 0] = 1
    same = metrics.map_change(base, base.clone())
    assert same == pytest.approx({"mask_iou": 1.0, "l1": 0.0, "peak_shift": 0.0})
    moved = torch.zeros(8, 8)
    moved[7, 7] = 1
    diff = metrics.map_change(base, moved)
    assert (
        diff["mask_iou"] == 0.0
        and diff["l1"] == pytest.approx(2.0)
        and diff["peak_shift"] == pytest.approx(1.0)
    )


def _result() -> AttentionResult:
    return AttentionResult(
        mode="generate",
        model={"source": "tiny", "kind": "tiny", "is_toy": True},
        settings={"steps": None},
        captions=["a red circle"],
        conditions=["generate"],
        token_maps=torch.rand(1, 1, 77, 4, 4),
        token_mass=torch.rand(1, 1, 77),
        kinds=[heatmaps.position_kinds(77, [1, 2, 3])],
        token_labels=[["<bos>"] + ["x"] * 76],
        words=[[{"text": "red", "start": 2, "end": 5, "positions": [2], "n_tokens": 1}]],
        images=np.zeros((1, 1, 8, 8, 3), dtype=np.uint8),
        metrics={"words": []},
    )


def test_result_round_trip(tmp_path):
    res = _result()
    res.save(tmp_path / "out")
    back = AttentionResult.load(tmp_path / "out")
    assert torch.equal(back.token_maps, res.token_maps) and np.array_equal(back.images, res.images)
    assert back.words == res.words and back.kinds == res.kinds and back.is_toy
    with pytest.raises(ProbeError, match="condition 'lora'"):
        back.condition_index("lora")
    with pytest.raises(ProbeError, match="not found"):
        AttentionResult.load(tmp_path / "missing")


def test_overlay_grid(tmp_path):
    image = np.full((16, 24, 3), 200, dtype=np.uint8)
    heat = torch.zeros(4, 6)
    heat[0, 0] = 1
    row = overlay.overlay_row(image, [heat, heat], ["image", "red", "circle"], cell=32)
    assert row.shape == (32 + overlay.LABEL_HEIGHT, 3 * 48, 3)
    blended = overlay.blend(image, heat)
    assert not np.array_equal(blended[0, 0], blended[-1, -1])
    path = overlay.save_grid([row, row[:, :48]], tmp_path / "grid.png")
    from PIL import Image

    assert Image.open(path).size == (144, 2 * (32 + overlay.LABEL_HEIGHT))


def test_cli_option_parsing(tmp_path):
    from sdxl_probe.commands.attention_options import capture_options, load_images_and_captions, parse_window

    assert parse_window("early", 25) == (0, 8) and parse_window("late", 25) == (16, 25)
    assert parse_window("3:", 10) == (3, 10) and parse_window(None, 10) is None
    with pytest.raises(ProbeError, match="START < STOP"):
        parse_window("5:2", 10)
    with pytest.raises(ProbeError, match="early, middle, late"):
        parse_window("soon", 10)
    opts = capture_options(window="middle", n_steps=9, layers="up_blocks.0, down_blocks.1", heads="0,2",
                           resolutions="2", include_mid=False)  # fmt: skip
    assert opts.steps == (3, 6) and opts.layers == ("up_blocks.0", "down_blocks.1") and opts.heads == (0, 2)
    with pytest.raises(ProbeError, match="--heads"):
        capture_options(window=None, n_steps=1, layers=None, heads="a", resolutions=None, include_mid=False)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 6, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ProbeError, match="caption file not found"):
        load_images_and_captions([tmp_path / "a.png"], None, ".txt")
    (tmp_path / "a.txt").write_text("red circle\nsecond line ignored\n")
    images, captions = load_images_and_captions([tmp_path / "a.png"], None, ".txt")
    assert images.shape == (1, 8, 8, 3) and captions == ["red circle"]
    with pytest.raises(ProbeError, match="different sizes"):
        load_images_and_captions([tmp_path / "a.png", tmp_path / "b.png"], "x", ".txt")
