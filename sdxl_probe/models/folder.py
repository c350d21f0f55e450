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
from sdxl_probe.models.components import SDXLComponents
from sdxl_probe.models.configs import SDXL_BASE_DIR
from sdxl_probe.models.single_file import build_scheduler
from sdxl_probe.models.tokenizers import build_clip_tokenizer

REQUIRED = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
KIND_KEY = "_sdxl_probe_kind"
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


def load_folder(folder: Path, *, dtype=None, device="cpu", allow_pickle: bool = False) -> SDXLComponents:
    """Load a diffusers SDXL folder offline (``local_files_only``); ``dtype`` None keeps the stored dtype."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    check_folder(folder, allow_pickle)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    extra = {} if dtype is None else {"torch_dtype": dtype}
    te_extra = {} if dtype is None else {"dtype": dtype}
    models = {
        "unet": UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", local_files_only=True, variant=_variant(folder / "unet"), **extra
        ),
        "vae": AutoencoderKL.from_pretrained(
            folder, subfolder="vae", local_files_only=True, variant=_variant(folder / "vae"), **extra
        ),
        "text_encoder": CLIPTextModel.from_pretrained(
            folder / "text_encoder",
            local_files_only=True,
            variant=_variant(folder / "text_encoder"),
            **te_extra,
        ),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder_2",
            local_files_only=True,
            variant=_variant(folder / "text_encoder_2"),
            **te_extra,
        ),
    }
    scheduler_config = json.loads(
        (folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")
    )
    return SDXLComponents(
        tokenizer=build_clip_tokenizer("eos", models["text_encoder"].config.max_position_embeddings),
        tokenizer_2=build_clip_tokenizer("!", models["text_encoder_2"].config.max_position_embeddings),
        scheduler=build_scheduler(scheduler_config),
        source=str(folder),
        kind=str(index.get(KIND_KEY, "sdxl")),
        **{name: model.to(device).eval() for name, model in models.items()},
    )


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


def _swap_in(tmp: Path, folder: Path) -> None:
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
