"""One entry point: SDXL components from a single file, a diffusers folder or a preset, offline.

Nothing here touches the network: single files use the shipped SDXL base configs (or the
configs stored in the file), folders carry their own configs, tokenizers are built from the
open_clip BPE files.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.models.components import MODEL_NAMES, SDXLComponents
from sdxl_probe.models.detect import check_sdxl_base
from sdxl_probe.models.folder import check_folder, load_folder
from sdxl_probe.models.safetensors_file import SafetensorsHeader, read_header, read_tensors
from sdxl_probe.models.single_file import CONFIG_NAMES, configs_from_metadata, load_from_source

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
TOY_WEIGHTS = Path(__file__).resolve().parents[1] / "toy" / "weights"
PRESETS = {"toy": TOY_WEIGHTS}


class _HeaderSource:
    """Tensors of a safetensors file, read on demand."""

    def __init__(self, header: SafetensorsHeader):
        self.header = header

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.header.shapes()

    def read(self, keys, dtype, mmap=False):
        return read_tensors(self.header, keys, dtype, mmap=mmap)


class _DictSource:
    """Tensors of an in-memory state dict (a pickled checkpoint read with ``weights_only=True``)."""

    def __init__(self, state: dict):
        self.state = state

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state.items()}

    def read(self, keys, dtype, mmap=False):
        out = {}
        for k in keys:  # pop: the source gives up each tensor as the model takes it
            t = self.state.pop(k)
            out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out


def load_components(
    source: str | Path,
    *,
    dtype=None,
    device="cpu",
    allow_pickle: bool = False,
    parts: tuple[str, ...] = MODEL_NAMES,
    vae_dtype=None,
) -> SDXLComponents:
    """Load SDXL components offline, each network read straight into ``dtype`` (no fp32 detour).

    Args:
        source: a SAI/ldm single-file ``.safetensors``, a diffusers folder (``model_index.json``),
            or a preset name (``"toy"``).
        dtype: torch dtype for floating-point weights; None keeps the stored dtype.
        device: where the modules end up.
        allow_pickle: accept ``.ckpt``/``.pt`` files, read with ``torch.load(weights_only=True)`` only.
        parts: the networks to load (any of ``text_encoder``, ``text_encoder_2``, ``unet``, ``vae``);
            the others are None. Tokenizers and the scheduler are always built (no weights).
        vae_dtype: the VAE's dtype when it differs from ``dtype`` (None: ``dtype``).

    Raises:
        ModelLoadError: not found, not SDXL base, corrupt, a folder missing a component, or a pickle
            without ``allow_pickle``.
    """
    unknown = sorted(set(parts) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"parts {unknown} are not networks of SDXL; use some of {MODEL_NAMES}")
    how = {"dtype": dtype, "device": device, "parts": tuple(parts), "vae_dtype": vae_dtype}
    if isinstance(source, str) and source in PRESETS:
        return _load_preset(source, **how)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_folder(path, allow_pickle=allow_pickle, **how)
    if not path.is_file():
        raise ModelLoadError(
            f"{source}: no such file or folder; expected an SDXL .safetensors file, a diffusers folder, "
            f"or a preset name ({', '.join(PRESETS)})"
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path, allow_pickle=allow_pickle, **how)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors (or .ckpt/.pt with --allow-pickle)"
        )
    header = read_header(path)
    check_sdxl_base(header.shapes(), str(path))
    configs, kind = configs_from_metadata(header.metadata, str(path))
    return load_from_source(_HeaderSource(header), configs, kind=kind, name=str(path), **how)


def read_configs(source: str | Path, *, allow_pickle: bool = False) -> dict[str, dict]:
    """The component configs of a source (unet, vae, text encoders, scheduler), without loading weights.

    From a single file's header metadata (or the shipped SDXL base configs), a folder's config
    files, or a preset's folder; a pickle is read whole (its metadata sits inside the pickle).
    Raises the same :class:`ModelLoadError` as :func:`load_components` for a bad source.
    """
    if isinstance(source, str) and source in PRESETS:
        return _folder_configs(preset_folder(source))
    path = Path(source).expanduser()
    if path.is_dir():
        check_folder(path, allow_pickle)
        return _folder_configs(path)
    if not path.is_file():
        raise ModelLoadError(
            f"{source}: no such file or folder; expected an SDXL .safetensors file, a diffusers folder, "
            f"or a preset name ({', '.join(PRESETS)})"
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return configs_from_metadata(read_pickle_state(path, allow_pickle)[1], str(path))[0]
    header = read_header(path)
    check_sdxl_base(header.shapes(), str(path))
    return configs_from_metadata(header.metadata, str(path))[0]


def _folder_configs(folder: Path) -> dict[str, dict]:
    files = {name: folder / name / "config.json" for name in CONFIG_NAMES}
    files["scheduler"] = folder / "scheduler" / "scheduler_config.json"
    return {name: json.loads(f.read_text(encoding="utf-8")) for name, f in files.items()}


def preset_folder(name: str) -> Path:
    """The diffusers folder of a preset; a clear error while its weights are not built."""
    folder = PRESETS[name]
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"preset {name!r}: the toy model weights are not built yet (no {folder}/model_index.json); "
            "build them with `sdxl-probe toy pretrain`"
        )
    return folder


def _load_preset(name: str, **how) -> SDXLComponents:
    components = load_folder(preset_folder(name), allow_pickle=False, **how)
    components.source, components.kind = name, "toy"
    return components


def read_pickle_state(path: Path, allow_pickle: bool) -> tuple[dict, dict[str, str]]:
    """(state dict, metadata) of a ``.ckpt``/``.pt`` via ``torch.load(weights_only=True)``; refused unless allowed.

    Tensors may sit under ``state_dict`` (as in SAI/ldm ``.ckpt`` files); non-tensor entries
    (``global_step``...) are dropped. String entries named like safetensors metadata
    (``sdxl_probe.configs``, ``sdxl_probe.kind``) next to ``state_dict`` are returned as metadata.
    """
    if not allow_pickle:
        raise ModelLoadError(
            f"{path}: a pickled checkpoint ({path.suffix}); pickles can run code when opened, so they are refused. "
            "Expected a .safetensors file; convert it, or pass --allow-pickle to read it with "
            "torch.load(weights_only=True)."
        )
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load on damaged bytes raises anything (IndexError, KeyError, ...)
        why = (str(e).splitlines() or [f"{type(e).__name__}: empty or truncated file"])[0]
        raise ModelLoadError(f"{path}: cannot be read with torch.load(weights_only=True): {why}") from None
    metadata: dict[str, str] = {}
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        metadata.update({k: v for k, v in obj.items() if k.startswith("sdxl_probe.") and isinstance(v, str)})
        obj = obj["state_dict"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not state:
        raise ModelLoadError(
            f"{path}: expected a dict of tensors (optionally under 'state_dict'), found none"
        )
    return state, metadata


def _load_pickle(path: Path, *, allow_pickle: bool, **how) -> SDXLComponents:
    state, metadata = read_pickle_state(path, allow_pickle)
    source = _DictSource(state)
    check_sdxl_base(source.shapes(), str(path))
    configs, kind = configs_from_metadata(metadata, str(path))
    components = load_from_source(source, configs, kind=kind, name=str(path), **how)
    components.allow_pickle = True
    return components
