"""Load a LoRA file into SDXL components for a scoped comparison, then remove it again."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sdxl_probe.errors import ModelLoadError

ADAPTER_NAME = "sdxl_probe_attention"


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """``FILE[:weight]`` (as sd-scripts' ``--network_mul``) into (path, weight); weight 1.0 when absent.

    A trailing ``:x`` is a weight only when ``x`` parses as a float, so paths with colons still work.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0


def parse_lora_specs(specs: Sequence[str], option: str = "--lora") -> list[tuple[Path, float]]:
    """Several ``FILE[:weight]`` specs (``--lora`` given more than once); each file must exist.

    Raises:
        ModelLoadError: naming the first missing file, before any model loads.
    """
    loras = [parse_lora_spec(s) for s in specs]
    for path, _ in loras:
        if not path.is_file():
            raise ModelLoadError(f"{option} {path}: file not found; pass the .safetensors written by the trainer")
    return loras


@contextmanager
def loras_loaded(components: Any, loras: Sequence[tuple[str | Path, float]]) -> Iterator[list[str]]:
    """Several LoRAs at once, each scaled by its own weight; none (an empty list) is a no-op.

    The deltas add, ``W + sum_i weight_i * alpha_i/r_i * up_i @ down_i``, as A1111's
    ``<lora:a:w1> <lora:b:w2>`` and sd-scripts' ``--network_weights a b --network_multipliers w1 w2``
    apply them. Each file gets its own peft adapter; diffusers'
    ``set_weights_and_activate_adapters`` (what ``pipe.set_adapters`` calls) then activates all of
    them in each model with their weights. Every adapter is removed on exit.

    Yields:
        The names of the models that received LoRA layers.
    """
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    with ExitStack() as stack:
        per_model: dict[str, list[tuple[str, float]]] = {}
        for i, (path, weight) in enumerate(loras):
            name = f"{ADAPTER_NAME}_{i}"
            for model in stack.enter_context(lora_loaded(components, path, name, weight)):
                per_model.setdefault(model, []).append((name, weight))
        if len(loras) > 1:
            for model, adapters in per_model.items():
                names, weights = zip(*adapters, strict=True)
                set_weights_and_activate_adapters(getattr(components, model), list(names), list(weights))
        yield sorted(per_model)


@contextmanager
def lora_loaded(
    components: Any, path: str | Path, adapter_name: str = ADAPTER_NAME, weight: float = 1.0
) -> Iterator[list[str]]:
    """Load a LoRA (kohya, SGM or diffusers key names) into the UNet and text encoders.

    Uses diffusers' ``StableDiffusionXLLoraLoaderMixin`` class methods, so the same key
    conversions as ``pipe.load_lora_weights`` apply. Kohya files with LoHa (``hada_*``), LoKr
    (``lokr_*``) or DoRA (``dora_scale``) tensors, which diffusers cannot read, are loaded as peft
    LoHa/LoKr/DoRA adapters by :func:`sdxl_probe.pipeline.lycoris.inject_kohya`. The adapter is
    deleted on exit.

    Args:
        components: ``SDXLComponents`` (unet, text_encoder, text_encoder_2 are modified in place).
        path: a ``.safetensors`` LoRA file.
        adapter_name: peft adapter name used while loaded.
        weight: multiplier of the LoRA delta, ``W + weight * alpha/r * up @ down`` (sd-scripts'
            ``--network_mul``, A1111's ``<lora:name:weight>``).

    Yields:
        The names of the models that received LoRA layers ("unet", "text_encoder", "text_encoder_2").
    """
    from diffusers import StableDiffusionXLPipeline as Pipe

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: LoRA file not found; pass the .safetensors written by the trainer")
    own = _own_route_state(path)  # LoHa / LoKr / DoRA: diffusers cannot read them (pipeline.lycoris)
    if own is None:
        try:
            state, alphas, meta = Pipe.lora_state_dict(
                str(path), unet_config=components.unet.config, return_lora_metadata=True
            )
        except (ValueError, KeyError, OSError) as e:
            raise ModelLoadError(
                f"{path}: not a LoRA file diffusers can read ({e}); expected kohya/SGM/diffusers LoRA keys"
            ) from None
    had_peft = {
        name: _has_peft(getattr(components, name)) for name in ("unet", "text_encoder", "text_encoder_2")
    }
    loaded: list[str] = []
    try:
        if own is None:
            _inject(Pipe, components, state, alphas, meta, adapter_name, loaded)
        else:
            from sdxl_probe.pipeline.lycoris import inject_kohya

            inject_kohya(components, own, adapter_name, loaded)
    except (ValueError, RuntimeError, KeyError) as e:  # peft's NoMatchingPeftModuleError is a ValueError
        touched = set(loaded) | {n for n, had in had_peft.items() if not had and _has_peft(getattr(components, n))}
        _remove(components, sorted(touched), adapter_name, had_peft)
        reason = str(e).splitlines()[0][:200]
        raise ModelLoadError(
            f"{path}: its LoRA layers do not fit this model ({reason}); pass a LoRA trained for this base model"
        ) from None
    if not loaded:
        raise ModelLoadError(
            f"{path}: no LoRA layer matched this model's UNet or text encoders; check the base model"
        )
    if weight != 1.0:
        _scale(components, loaded, adapter_name, weight)
    try:
        yield loaded
    finally:
        _remove(components, loaded, adapter_name, had_peft)


def _own_route_state(path: Path) -> dict | None:
    """The file's tensors when it holds LoHa/LoKr/DoRA keys (the project's own route), else None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sdxl_probe.pipeline.lycoris import needs_own_route

    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception:  # noqa: BLE001 - not safetensors: diffusers' route names the problem
        return None
    return load_file(str(path)) if needs_own_route(keys) else None


def _inject(pipe_cls: Any, components: Any, state: dict, alphas: Any, meta: Any, name: str, loaded: list[str]) -> None:
    """Load the UNet and text-encoder parts, appending each model's name to ``loaded`` as it is done."""
    if any(k.startswith("unet.") for k in state):
        pipe_cls.load_lora_into_unet(state, alphas, unet=components.unet, adapter_name=name, metadata=meta)
        loaded.append("unet")
    for prefix in ("text_encoder", "text_encoder_2"):
        if any(k.startswith(f"{prefix}.") for k in state):
            encoder = getattr(components, prefix)
            pipe_cls.load_lora_into_text_encoder(
                state, alphas, text_encoder=encoder, prefix=prefix, adapter_name=name, metadata=meta
            )
            loaded.append(prefix)


def _scale(components: Any, loaded: list[str], name: str, weight: float) -> None:
    """Multiply the adapter's ``alpha / r`` scaling by ``weight`` in every LoRA layer of the loaded models."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for attr in loaded:
        for module in getattr(components, attr).modules():
            if isinstance(module, BaseTunerLayer) and name in getattr(module, "scaling", {}):
                module.set_scale(name, weight)  # LoRA: weight * alpha/r; LoHa/LoKr (LycorisLayer): the same


def _has_peft(model: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _remove(components: Any, loaded: list[str], name: str, had_peft: dict[str, bool]) -> None:
    """Delete the adapter; unwrap the peft layers entirely when the model had none before."""
    from diffusers.utils.peft_utils import delete_adapter_layers, recurse_remove_peft_layers

    for attr in loaded:
        model = getattr(components, attr)
        if model is None:  # released by a one-shot run (``generate_images(release=True)``)
            continue
        if had_peft[attr]:
            delete_adapter_layers(model, name)
        else:
            recurse_remove_peft_layers(model)
            if getattr(model, "_hf_peft_config_loaded", False):
                model._hf_peft_config_loaded = False
        config = getattr(model, "peft_config", None)
        if isinstance(config, dict):
            config.pop(name, None)
            if not config:
                delattr(model, "peft_config")
