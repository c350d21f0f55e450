"""The single-file loader gives TE2's q/k/v as views of the fused in-projection, equal to diffusers' copies.

Oracle: diffusers' own ``convert_open_clip_checkpoint`` run on tensors read into fresh memory
(it clones q/k/v apart); ours must hold the same values under the same names, without copying.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sdxl_probe.models.ldm_names import SAI_PREFIXES
from sdxl_probe.models.safetensors_file import read_header, read_tensors
from sdxl_probe.models.single_file import component_configs, diffusers_state, save_single_file
from sdxl_probe.models.tiny import build_tiny_components


class _Source:
    def __init__(self, header):
        self.header = header

    def shapes(self):
        return self.header.shapes()

    def read(self, keys, dtype, mmap=False):
        return read_tensors(self.header, keys, dtype, mmap=mmap)


def test_te2_qkv_are_views_equal_to_diffusers_copies(tmp_path):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    components = build_tiny_components(0)
    header = read_header(save_single_file(components, tmp_path / "m.safetensors"))
    config = component_configs(components)["text_encoder_2"]
    prefix = SAI_PREFIXES["text_encoder_2"]
    raw = read_tensors(header, [k for k in header.tensors if k.startswith(prefix)])
    shim = SimpleNamespace(config=SimpleNamespace(hidden_size=config["hidden_size"]))
    expected = {k: v for k, v in convert_open_clip_checkpoint(shim, raw, prefix=prefix).items()
                if not k.endswith("position_ids")}  # fmt: skip

    ours = diffusers_state(_Source(header), "text_encoder_2", config, None, mmap=True)

    assert sorted(ours) == sorted(expected)
    qkv = [k for k in ours if any(p in k for p in ("q_proj", "k_proj", "v_proj"))]
    assert len(qkv) == 6 * config["num_hidden_layers"]
    for k in ours:
        assert ours[k].shape == expected[k].shape and torch.equal(ours[k], expected[k]), k
    fused_storages = {ours[k].untyped_storage().data_ptr() for k in qkv}
    assert len(fused_storages) == 1  # all views of the one file map: nothing was copied
