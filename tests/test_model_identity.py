"""Model identity from stored tensors (sdxl_probe.models.identity), save_folder permissions, report headers."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from sdxl_probe.models.folder import save_folder
from sdxl_probe.models.identity import BLOCK, modules_hash, sample_values, source_hash
from sdxl_probe.models.load import load_components
from sdxl_probe.models.single_file import save_single_file
from sdxl_probe.models.tiny import build_tiny_components


@pytest.fixture(scope="module")
def fp16_file(tmp_path_factory):
    """A tiny single file stored in fp16, as SDXL checkpoints are."""
    components = build_tiny_components(0).to(dtype=torch.float16)
    return save_single_file(components, tmp_path_factory.mktemp("identity") / "tiny16.safetensors")


def test_sampled_blocks_are_first_middle_and_last():
    flat = torch.arange(10_000, dtype=torch.float32)
    mid = (10_000 - BLOCK) // 2
    expected = list(range(BLOCK)) + list(range(mid, mid + BLOCK)) + list(range(10_000 - BLOCK, 10_000))
    assert sample_values(flat).tolist() == expected
    assert sample_values(flat[:100]).tolist() == list(range(100))  # short tensors whole


def test_single_file_and_its_folders_hash_the_same_in_every_load_dtype(fp16_file, tmp_path):
    expected = source_hash(fp16_file)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        loaded = load_components(fp16_file, dtype=dtype)
        assert modules_hash(loaded.models()) == expected, dtype  # the modules in memory agree
        folder = save_folder(loaded, tmp_path / f"folder-{dtype}")
        assert source_hash(folder) == expected, dtype  # the folder saved from it (stored in that dtype)
        assert load_components(folder, dtype=torch.float32).model_hash() == expected
    assert load_components(fp16_file).model_hash() == expected


def test_the_hash_sees_a_changed_weight_and_unloaded_parts(fp16_file, tmp_path):
    loaded = load_components(fp16_file, dtype=torch.float32)
    with torch.no_grad():
        loaded.unet.conv_in.weight.view(-1)[0] += 1.0  # inside the first sampled block
    folder = save_folder(loaded, tmp_path / "changed")
    assert source_hash(folder) != source_hash(fp16_file)
    text_only = load_components(folder, parts=("text_encoder", "text_encoder_2"))
    assert text_only.unet is None and text_only.vae is None
    assert text_only.model_hash() == source_hash(folder)  # UNet and VAE counted from the stored tensors


def test_save_folder_writes_files_with_normal_permissions(tiny_components, tmp_path):
    umask = os.umask(0o022)
    try:
        folder = save_folder(tiny_components, tmp_path / "shared")
    finally:
        os.umask(umask)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    assert modes[folder] == 0o755
    assert {m for p, m in modes.items() if p.is_dir()} == {0o755}
    assert {m for p, m in modes.items() if p.is_file()} == {0o644}


def test_report_header_states_precision_and_reads_older_results():
    from sdxl_probe.report.render import ReportHeader, precision_text, render_string

    old = ReportHeader.from_dict({"title": "t", "model": "m", "model_kind": "sdxl"})
    assert (old.device, old.dtype) == (None, None)
    assert "<dt>device</dt>" not in render_string("simple.html.j2", {"sections": []}, header=old)
    device, dtype = precision_text({"device": "cuda:0", "dtype": "fp16", "vae_dtype": "fp32"})
    new = ReportHeader(title="t", model="m", device=device, dtype=dtype)
    assert "<dt>device</dt><dd>cuda:0, fp16, VAE fp32</dd>" in render_string(
        "simple.html.j2", {"sections": []}, header=new
    )
