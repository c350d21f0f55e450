"""sd-scripts' block-wise network settings for SDXL: per-block ranks, alphas and learning-rate weights.

SDXL has 23 blocks (sd-scripts ``networks/lora.py`` ``get_block_index`` with ``is_sdxl``):
0 ``time_embed``/``label_emb``, 1-9 ``input_blocks`` 0-8, 10-12 ``middle_block`` 0-2, 13-21
``output_blocks`` 0-8, 22 ``out``. A module's block is read from its kohya name (the SAI path).
``block_dims``/``block_alphas`` set the rank and alpha of Linear and 1x1 conv modules per block,
``conv_block_dims``/``conv_block_alphas`` those of 3x3 convs; a block with dim 0 gets no module.
``down_lr_weight`` (9), ``mid_lr_weight`` (3) and ``up_lr_weight`` (9) multiply ``unet_lr`` per block,
sd-scripts' ``get_block_lr_weight`` (blocks 0 and 22 keep 1.0); a block whose weight is 0 gets no
module (sd-scripts ``remove_block_dims_and_alphas``). Text encoders are outside the blocks: they keep
``dim``/``alpha`` and their own learning rates.
"""

from __future__ import annotations

from typing import Any

from sdxl_probe.config import nearest
from sdxl_probe.errors import ConfigError

NUM_BLOCKS = 23
LAYOUT = "0 emb, 1-9 input_blocks 0-8, 10-12 middle_block 0-2, 13-21 output_blocks 0-8, 22 out"
LR_LENGTHS = {"down_lr_weight": 9, "mid_lr_weight": 3, "up_lr_weight": 9}  # sd-scripts SDXL_NUM_OF_(MID_)BLOCKS
NETWORK_TYPES = ("lora", "loha", "lokr")
_SAI_STARTS = (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13))


def check_network_lists(n: Any) -> None:
    """Check a ``NetworkSection``: the type, options that belong to one type, block-list lengths.

    Raises:
        ConfigError: one line naming the key, the value and the fix.
    """
    if n.type not in NETWORK_TYPES:
        hint = nearest(n.type, NETWORK_TYPES)
        raise ConfigError(f"[network] type = {n.type!r}: unknown network; "
                          f"{f'did you mean {hint!r}? ' if hint else ''}one of {', '.join(NETWORK_TYPES)}")  # fmt: skip
    wrong = [k for k, on, owner in (("use_rslora", n.use_rslora, "lora"), ("use_dora", n.use_dora, "lora"),
                                    ("factor", n.factor != -1, "lokr"), ("decompose_both", n.decompose_both, "lokr"),
                                    ("dropout", n.dropout > 0, "lora"), ("rank_dropout", n.rank_dropout > 0, "lora"))
             if on and n.type != owner]  # fmt: skip
    if wrong:
        raise ConfigError(f"[network] {wrong[0]} does not apply to type = {n.type!r}; remove it or change the type")
    if n.use_dora and n.dropout > 0:  # peft's DoraLinearLayer.get_lora_weight runs lora_A on an identity:
        raise ConfigError("[network] dropout with use_dora: peft's DoRA computes its weight norm through the "
                          "dropped hidden; set dropout = 0 or use_dora = false")  # fmt: skip
    if n.use_dora and n.rank_dropout > 0:  # the same identity pass would take a per-sample mask
        raise ConfigError("[network] rank_dropout with use_dora: peft's DoRA computes its weight norm through the "
                          "masked hidden; set rank_dropout = 0 or use_dora = false")  # fmt: skip
    if n.factor == 0:
        raise ConfigError("[network] factor = 0: use -1 (balanced factors) or a positive divisor")
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        values = getattr(n, key)
        if values is not None and len(values) != NUM_BLOCKS:
            raise ConfigError(f"[network] {key} has {len(values)} values; expected {NUM_BLOCKS}, one per SDXL "
                              f"block ({LAYOUT})")  # fmt: skip
        if values is not None and min(values) < 0:
            raise ConfigError(f"[network] {key} has a negative value; ranks and alphas are >= 0")
    if (n.conv_block_dims or n.conv_block_alphas) and n.target != "full":
        raise ConfigError('[network] conv_block_dims/conv_block_alphas need target = "full" (3x3 convs)')
    for key, length in LR_LENGTHS.items():
        values = getattr(n, key)
        if values is not None and len(values) != length:
            raise ConfigError(f"[network] {key} has {len(values)} values; expected {length} for SDXL ({LAYOUT})")
        if values is not None and min(values) < 0:
            raise ConfigError(f"[network] {key} has a negative value; weights are >= 0")


def block_index(kohya_name: str) -> int:
    """sd-scripts ``get_block_index(lora_name, is_sdxl=True)``: 0-22, or -1 outside the UNet."""
    if not kohya_name.startswith("lora_unet_"):
        return -1
    name = kohya_name.removeprefix("lora_unet_")
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    for start, base in _SAI_STARTS:
        if name.startswith(start):
            return base + int(name.split("_")[2])
    return NUM_BLOCKS - 1 if name.startswith("out_") else -1


def block_lr_weights(down: Any, mid: Any, up: Any) -> list[float] | None:
    """sd-scripts ``get_block_lr_weight`` for SDXL: 23 multipliers of ``unet_lr``, None when none is set."""
    if down is None and mid is None and up is None:
        return None
    parts = [list(v) if v is not None else [1.0] * LR_LENGTHS[k]
             for k, v in (("down_lr_weight", down), ("mid_lr_weight", mid), ("up_lr_weight", up))]  # fmt: skip
    return [1.0] + parts[0] + parts[1] + parts[2] + [1.0]


def module_rank(kohya_name: str, is_conv3x3: bool, n: Any) -> tuple[int, float]:
    """(rank, alpha) of one module, sd-scripts ``LoRANetwork.create_modules``; rank 0 = no module."""
    block = block_index(kohya_name)
    lr = block_lr_weights(n.down_lr_weight, n.mid_lr_weight, n.up_lr_weight)
    if block >= 0 and lr is not None and lr[block] == 0:
        return 0, 0.0
    dims, alphas = (n.conv_block_dims, n.conv_block_alphas) if is_conv3x3 else (n.block_dims, n.block_alphas)
    dim, alpha = (n.conv_dim, n.conv_alpha) if is_conv3x3 else (n.dim, n.alpha)
    if block >= 0 and dims is not None:
        dim = dims[block]
    if block >= 0 and alphas is not None:
        alpha = alphas[block] or dim  # sd-scripts: alpha 0 (or None) means alpha = dim, scale 1
    return int(dim), float(alpha)
