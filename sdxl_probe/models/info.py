"""What a model source holds, read from file headers without building any module.

Single files and diffusers folders are summarised from their safetensors headers (cheap even
for a 6.9 GB file); pickles, when allowed, are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.models.components import MODEL_NAMES
from sdxl_probe.models.detect import check_sdxl_base
from sdxl_probe.models.folder import check_folder
from sdxl_probe.models.ldm_names import SAI_PREFIXES, TE1_POSITION_IDS, TE2_LOGIT_SCALE
from sdxl_probe.models.safetensors_file import DTYPES, read_header

CLASSES = {
    "text_encoder": "CLIPTextModel",
    "text_encoder_2": "CLIPTextModelWithProjection",
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
}
# Stored tensors that are not module weights (dropped on load, not counted as parameters).
_NOT_WEIGHTS = (
    SAI_PREFIXES["text_encoder"] + TE1_POSITION_IDS,
    SAI_PREFIXES["text_encoder_2"] + TE2_LOGIT_SCALE,
)


@dataclass
class ComponentInfo:
    """One network: class, parameter count and stored dtypes."""

    name: str
    cls: str
    params: int
    dtypes: list[str]


@dataclass
class ModelInfo:
    """Summary of a model source for ``sdxl-probe model info``."""

    source: str
    layout: str  # "single file (SAI/ldm)", "diffusers folder", "pickled single file"
    architecture: str
    kind: str
    components: list[ComponentInfo] = field(default_factory=list)


def _dtype_name(safetensors_dtype: str) -> str:
    return DTYPES[safetensors_dtype][0]


def _single_file_components(entries: Mapping[str, tuple[str, int]]) -> list[ComponentInfo]:
    """Per component (params, dtypes) from ``key -> (dtype name, numel)`` of a SAI file."""
    params: dict[str, int] = defaultdict(int)
    dtypes: dict[str, set[str]] = defaultdict(set)
    for key, (dtype, numel) in entries.items():
        name = next((n for n, p in SAI_PREFIXES.items() if key.startswith(p)), None)
        if name is None or key in _NOT_WEIGHTS:
            continue
        params[name] += numel
        dtypes[name].add(dtype)
    return [ComponentInfo(n, CLASSES[n], params[n], sorted(dtypes[n])) for n in MODEL_NAMES]


def _architecture(shapes: Mapping[str, tuple[int, ...]], path: Path | str = "") -> str:
    keys = (SAI_PREFIXES["text_encoder"] + "text_model.embeddings.position_embedding.weight",
            SAI_PREFIXES["text_encoder_2"] + "positional_embedding")  # fmt: skip
    missing = [k for k in keys if len(shapes.get(k, ())) < 1]
    if missing:
        raise ModelLoadError(f"{path}: has SDXL key names but no tensor {missing[0]}; the file is incomplete "
                             "or not an SDXL base checkpoint: download or convert it again")  # fmt: skip
    te1, te2 = shapes[keys[0]][-1], shapes[keys[1]][-1]
    return f"SDXL base architecture (UNet context {te1 + te2} = TE1 {te1} + TE2 {te2})"


def single_file_info(path: Path) -> ModelInfo:
    """Summary of a SAI/ldm ``.safetensors`` from its header (refusing non-SDXL files as the loader does)."""
    header = read_header(path)
    shapes = header.shapes()
    check_sdxl_base(shapes, str(path))
    entries = {k: (_dtype_name(t.dtype), t.numel) for k, t in header.tensors.items()}
    kind = header.metadata.get("sdxl_probe.kind", "sdxl")
    return ModelInfo(
        str(path), "single file (SAI/ldm)", _architecture(shapes, path), kind, _single_file_components(entries)
    )


def pickle_info(path: Path, allow_pickle: bool) -> ModelInfo:
    """Summary of a pickled single file, read with ``torch.load(weights_only=True)`` when allowed."""
    from sdxl_probe.models.load import read_pickle_state

    state, metadata = read_pickle_state(path, allow_pickle)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    check_sdxl_base(shapes, str(path))
    entries = {k: (str(v.dtype).removeprefix("torch."), v.numel()) for k, v in state.items()}
    kind = metadata.get("sdxl_probe.kind", "sdxl")
    return ModelInfo(
        str(path), "pickled single file", _architecture(shapes, path), kind, _single_file_components(entries)
    )


def folder_info(folder: Path, kind: str | None = None, allow_pickle: bool = False) -> ModelInfo:
    """Summary of a diffusers folder from its configs and weight-file headers (``.bin`` only if allowed)."""
    check_folder(folder, allow_pickle)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    components = []
    for name in MODEL_NAMES:
        entries = _folder_weights(folder / name)
        dtypes = sorted({dtype for dtype, _ in entries})
        components.append(ComponentInfo(name, CLASSES[name], sum(n for _, n in entries), dtypes))
    kind = kind or index.get("_sdxl_probe_kind", "sdxl")
    return ModelInfo(str(folder), "diffusers folder", _folder_architecture(folder), kind, components)


def _folder_weights(sub: Path) -> list[tuple[str, int]]:
    """(dtype name, numel) of every tensor in a component folder's weight files."""
    files = sorted(sub.glob("*.safetensors"))
    if files:
        return [(_dtype_name(t.dtype), t.numel) for f in files for t in read_header(f).tensors.values()]
    import torch

    tensors = [
        v
        for f in sorted(sub.glob("*.bin"))
        for v in torch.load(f, map_location="cpu", weights_only=True).values()
    ]
    return [(str(t.dtype).removeprefix("torch."), t.numel()) for t in tensors]


def _folder_architecture(folder: Path) -> str:
    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text(encoding="utf-8"))

    unet, te1, te2 = config("unet"), config("text_encoder"), config("text_encoder_2")
    widths = te1["hidden_size"] + te2["hidden_size"]
    if unet.get("addition_embed_type") != "text_time" or unet.get("cross_attention_dim") != widths:
        raise ModelLoadError(
            f"{folder}: UNet (addition_embed_type={unet.get('addition_embed_type')!r}, cross_attention_dim="
            f"{unet.get('cross_attention_dim')}) does not match SDXL base with text encoders {te1['hidden_size']} + "
            f"{te2['hidden_size']} wide; expected addition_embed_type 'text_time' and cross_attention_dim {widths}"
        )
    return f"SDXL base architecture (UNet context {widths} = TE1 {te1['hidden_size']} + TE2 {te2['hidden_size']})"


def model_info(source: str, allow_pickle: bool = False) -> ModelInfo:
    """Summary of any source :func:`~sdxl_probe.models.load.load_components` accepts."""
    from sdxl_probe.models.load import PICKLE_SUFFIXES, PRESETS, preset_folder

    if source in PRESETS:
        return folder_info(preset_folder(source), kind="toy")
    path = Path(source).expanduser()
    if path.is_dir():
        return folder_info(path, allow_pickle=allow_pickle)
    if not path.is_file():
        raise ModelLoadError(
            f"{source}: no such file or folder; expected an SDXL .safetensors file, a diffusers folder or a preset ({', '.join(PRESETS)})"
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return pickle_info(path, allow_pickle)
    return single_file_info(path)
