"""What a LoRA file holds, read from its safetensors header (and its scalar ``.alpha`` values) without torch.

Key names, as the loaders read them:
- kohya / sd-scripts: ``lora_unet_<path>``, ``lora_te1_``/``lora_te2_`` (SDXL) or ``lora_te_`` (SD 1.x/2.x)
  + the module path with dots as underscores, then ``.lora_down.weight`` (rank, in), ``.lora_up.weight``
  (out, rank) and ``.alpha``; the UNet path is SAI/SGM (``input_blocks``) or diffusers (``down_blocks``).
- diffusers / peft: ``unet.``/``text_encoder.``/``text_encoder_2.`` + module path + ``.lora_A.weight``
  (rank, in) and ``.lora_B.weight``; alpha in the metadata or equal to the rank.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from sdxl_probe.models.safetensors_file import SafetensorsHeader, read_header

# key prefix -> model name in the summary
KOHYA_MODELS = {"lora_unet_": "unet", "lora_te1_": "te1", "lora_te2_": "te2", "lora_te_": "te"}
PEFT_MODELS = {"unet.": "unet", "text_encoder.": "te1", "text_encoder_2.": "te2"}
DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")
_SGM_BLOCKS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
_SCALAR = {"F32": "<f", "F64": "<d", "F16": "<e"}
LONG_METADATA = 80  # characters of an ss_* value shown before it is cut


@dataclass
class LoraInfo:
    """Summary of a LoRA file for ``sdxl-probe model info``."""

    source: str
    format: str
    ranks: list[int]
    alphas: list[float]
    targets: dict[str, int]  # model ("unet", "te1", "te2", "te") -> LoRA'd modules
    architecture: str
    metadata: dict[str, str] = field(default_factory=dict)  # ss_* keys, long values cut


def is_lora(keys: list[str]) -> bool:
    """True when the keys name LoRA down/A weights (kohya, SGM or diffusers/peft)."""
    return any(k.endswith(DOWN_SUFFIXES) for k in keys)


def lora_info(path: str | Path, header: SafetensorsHeader | None = None) -> LoraInfo:
    """Format, ranks, alphas, target counts and ``ss_*`` metadata of a LoRA ``.safetensors``."""
    header = header or read_header(path)
    downs = {k: t for k, t in header.tensors.items() if k.endswith(DOWN_SUFFIXES)}
    modules = {k[: -len(next(s for s in DOWN_SUFFIXES if k.endswith(s)))]: t.shape for k, t in downs.items()}
    kohya = any(m.startswith(tuple(KOHYA_MODELS)) for m in modules)
    targets = _count_targets(modules, KOHYA_MODELS if kohya else PEFT_MODELS)
    alphas = sorted({_scalar(header, f"{m}.alpha") for m in modules if f"{m}.alpha" in header.tensors})
    metadata = {k: (v if len(v) <= LONG_METADATA else f"{v[:LONG_METADATA]}... ({len(v)} chars)")
                for k, v in sorted(header.metadata.items()) if k.startswith("ss_")}  # fmt: skip
    return LoraInfo(
        source=str(path), format=_format(modules, kohya), ranks=sorted({s[0] for s in modules.values()}),
        alphas=alphas, targets=targets, architecture=_architecture(targets), metadata=metadata,
    )  # fmt: skip


def _count_targets(modules: dict[str, tuple[int, ...]], prefixes: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in modules:
        # longest prefix first: "lora_te1_" before "lora_te_", "text_encoder_2." before "text_encoder."
        prefix = next((p for p in sorted(prefixes, key=len, reverse=True) if m.startswith(p)), None)
        name = prefixes[prefix] if prefix else "other"
        counts[name] = counts.get(name, 0) + 1
    order = [*prefixes.values(), "other"]
    return dict(sorted(counts.items(), key=lambda item: order.index(item[0])))


def _format(modules: dict[str, tuple[int, ...]], kohya: bool) -> str:
    if not kohya:
        return "diffusers/peft"
    sgm = any(m.startswith(_SGM_BLOCKS) for m in modules)
    return "kohya (SGM UNet names)" if sgm else "kohya (diffusers UNet names)"


def _architecture(targets: dict[str, int]) -> str:
    if "te" in targets:
        return "SD 1.x/2.x (one text encoder): not an SDXL LoRA"
    if "te1" in targets or "te2" in targets:
        return "SDXL (two text encoders)"
    return "UNet only"


def _scalar(header: SafetensorsHeader, key: str) -> float:
    """A one-element float tensor's value, read from the data section."""
    info = header.tensors[key]
    if info.numel != 1 or info.dtype not in (*_SCALAR, "BF16"):
        return float("nan")
    with header.path.open("rb") as f:
        f.seek(header.data_start + info.begin)
        raw = f.read(info.end - info.begin)
    if info.dtype == "BF16":  # the top half of a float32
        return float(struct.unpack("<f", b"\x00\x00" + raw)[0])
    return float(struct.unpack(_SCALAR[info.dtype], raw)[0])


def read_if_lora(source: str) -> LoraInfo | None:
    """``lora_info`` when ``source`` is a ``.safetensors`` file of LoRA weights, else None."""
    path = Path(source).expanduser()
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return None
    header = read_header(path)
    return lora_info(path, header) if is_lora(list(header.tensors)) else None
