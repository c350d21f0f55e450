"""diffusers-layout SDXL folders: check, load and save (``model_index.json`` + one subfolder per part).

The layout is the one ``StableDiffusionXLPipeline.save_pretrained`` writes and the hub
repository ``stabilityai/stable-diffusion-xl-base-1.0`` uses. Tokenizers are always built from
the open_clip BPE (SDXL's two tokenizers differ only in their pad token).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.io import write_json
from sdxl_probe.models.components import MODEL_NAMES, SDXLComponents
from sdxl_probe.models.configs import SDXL_BASE_DIR
from sdxl_probe.models.safetensors_file import DTYPES, read_header
from sdxl_probe.models.single_file import build_scheduler
from sdxl_probe.models.tokenizers import build_clip_tokenizer

REQUIRED = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
KIND_KEY = "_sdxl_probe_kind"
_TEXT = ("text_encoder", "text_encoder_2")
_LAYOUT = (
    "expected a diffusers SDXL folder: model_index.json plus unet/, vae/, text_encoder/, text_encoder_2/ "
    "(each a config.json and .safetensors weights) and scheduler/scheduler_config.json, "
    "as StableDiffusionXLPipeline.save_pretrained writes"
)


def _weights(sub: Path, allow_pickle: bool) -> str | None:
    """Why ``sub`` has no usable weights file, or None when it has one."""
    if any(sub.glob("*.safetensors")):
        return None
    if any(sub.glob("*.bin")):
        return None if allow_pickle else "only pickled .bin weights (pass --allow-pickle to read them)"
    return "no weights file"


def check_folder(folder: Path, allow_pickle: bool = False) -> None:
    """Raise :class:`ModelLoadError` naming every missing component of a diffusers folder."""
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder}: not a diffusers folder (no model_index.json); {_LAYOUT}")
    problems = []
    for name in REQUIRED:
        config = folder / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not config.is_file():
            problems.append(f"{name} (no {name}/{config.name})")
        elif name != "scheduler" and (why := _weights(folder / name, allow_pickle)):
            problems.append(f"{name} ({why} in {name}/)")
    if problems:
        raise ModelLoadError(
            f"{folder}: diffusers folder is missing component(s): {', '.join(problems)}; {_LAYOUT}"
        )


def _variant(sub: Path) -> str | None:
    """``"fp16"`` when a part ships only ``*.fp16.safetensors`` (hub-style variants)."""
    names = [p.name for p in sub.glob("*.safetensors")]
    return "fp16" if names and all(".fp16." in n for n in names) else None


def load_folder(
    folder: Path,
    *,
    dtype=None,
    device="cpu",
    allow_pickle: bool = False,
    parts: tuple[str, ...] = MODEL_NAMES,
    vae_dtype=None,
) -> SDXLComponents:
    """Load a diffusers SDXL folder offline (``local_files_only``).

    Args:
        folder: the folder (``model_index.json`` and one subfolder per part).
        dtype: dtype of every network; None keeps each part's stored dtype (diffusers alone
            would give fp32 and transformers the stored one).
        device: where the modules end up.
        allow_pickle: accept pickled ``.bin`` weights.
        parts: the networks to load; the others are None.
        vae_dtype: the VAE's dtype when it differs from ``dtype``.
    """
    check_folder(folder, allow_pickle)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    models = dict.fromkeys(MODEL_NAMES)
    for name in parts:
        cast = vae_dtype if name == "vae" and vae_dtype is not None else dtype
        models[name] = _load_part(folder, name, cast if cast is not None else _stored_dtype(folder / name))
    scheduler_config = json.loads(
        (folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")
    )
    te_configs = {n: json.loads((folder / n / "config.json").read_text(encoding="utf-8")) for n in _TEXT}
    return SDXLComponents(
        tokenizer=build_clip_tokenizer("eos", te_configs["text_encoder"]["max_position_embeddings"]),
        tokenizer_2=build_clip_tokenizer("!", te_configs["text_encoder_2"]["max_position_embeddings"]),
        scheduler=build_scheduler(scheduler_config),
        source=str(folder),
        kind=str(index.get(KIND_KEY, "sdxl")),
        allow_pickle=allow_pickle,
        **{name: None if model is None else model.to(device).eval() for name, model in models.items()},
    )


def _load_part(folder: Path, name: str, dtype):
    """One network read straight into ``dtype`` (diffusers and transformers cast tensor by tensor)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    variant = _variant(folder / name)
    if name in _TEXT:
        cls = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
        return cls.from_pretrained(folder / name, local_files_only=True, variant=variant, dtype=dtype)
    cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
    return cls.from_pretrained(folder, subfolder=name, local_files_only=True, variant=variant, torch_dtype=dtype)


def _stored_dtype(sub: Path):
    """The floating-point dtype a part's safetensors weights are stored in (fp32 for pickled .bin)."""
    import torch

    for f in sorted(sub.glob("*.safetensors")):
        for info in read_header(f).tensors.values():
            attr = DTYPES[info.dtype][0]
            if getattr(torch, attr).is_floating_point:
                return getattr(torch, attr)
    return torch.float32


def save_folder(components: SDXLComponents, folder: str | Path) -> Path:
    """Write ``components`` as a diffusers folder (safetensors), replacing ``folder`` atomically.

    Everything is written to a sibling temp folder first, then swapped in, so a crash never
    leaves a half-written model where a good one was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_parts(components, tmp)
        _normal_permissions(tmp)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_parts(components: SDXLComponents, out: Path) -> None:
    for name, model in components.models():
        model.save_pretrained(out / name, safe_serialization=True)
    components.scheduler.save_pretrained(out / "scheduler")
    components.tokenizer.save_pretrained(out / "tokenizer")
    components.tokenizer_2.save_pretrained(out / "tokenizer_2")
    index = json.loads((SDXL_BASE_DIR / "model_index.json").read_text(encoding="utf-8"))
    index["scheduler"] = ["diffusers", type(components.scheduler).__name__]
    index[KIND_KEY] = components.kind
    write_json(out / "model_index.json", index)


def _normal_permissions(root: Path) -> None:
    """Give the temp folder and its files the modes of a plain ``mkdir``/``open`` under the umask.

    ``mkdtemp`` and atomic temp files are created owner-only (0700/0600); a saved model is meant to
    be shared like any other file.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _swap_in(tmp: Path, folder: Path) -> None:
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
