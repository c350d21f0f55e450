"""The trainer's optimizers by sd-scripts ``--optimizer_type`` name, and an EMA of the LoRA weights.

Names and implied arguments follow sd-scripts' ``train_util.get_optimizer`` (case-insensitive):
``SGDNesterov`` is ``torch.optim.SGD(nesterov=True)`` with momentum 0.9 unless set; the others are
the upstream class with ``optimizer_args`` passed through. Every argument is checked against the
class's constructor signature before any weight loads, so an argument the optimizer does not take
is a one-line error naming the nearest one it does.

Schedule-free optimizers (Defazio et al. 2024, ``schedulefree.AdamWScheduleFree``) train at the
interpolated point y and evaluate at the average x: :func:`eval_weights` switches to x around
validation, sampling and saving, as the package's docs require, and back to y after.

The EMA is diffusers' ``EMAModel`` (decay ``min(decay, (1 + s) / (10 + s))`` at step s + 1).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sdxl_probe.config import nearest
from sdxl_probe.errors import ConfigError


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: where its class lives and what sd-scripts implies for its name.

    Attributes:
        module: the module holding the class.
        cls: the class name.
        package: the pip package that provides it.
        implied: arguments sd-scripts sets for this name (``forced`` ones cannot be overridden).
        forced: keys of ``implied`` the user may not change.
        needs_cuda: the class only runs on a CUDA GPU (bitsandbytes).
        one_lr: the class takes one learning rate for all groups (D-Adaptation and Prodigy estimate one step size).
    """

    module: str
    cls: str
    package: str
    implied: dict[str, Any] = field(default_factory=dict)
    forced: tuple[str, ...] = ()
    needs_cuda: bool = False
    one_lr: bool = False


OPTIMIZERS = {
    "AdamW": OptimizerSpec("torch.optim", "AdamW", "torch"),
    "AdamW8bit": OptimizerSpec("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", needs_cuda=True),
    "Lion": OptimizerSpec("lion_pytorch", "Lion", "lion-pytorch"),
    "Prodigy": OptimizerSpec("prodigyopt", "Prodigy", "prodigyopt", one_lr=True),
    "DAdaptAdam": OptimizerSpec("dadaptation", "DAdaptAdam", "dadaptation", one_lr=True),
    "SGD": OptimizerSpec("torch.optim", "SGD", "torch"),
    "SGDNesterov": OptimizerSpec("torch.optim", "SGD", "torch", {"nesterov": True, "momentum": 0.9}, ("nesterov",)),
    "AdamWScheduleFree": OptimizerSpec("schedulefree", "AdamWScheduleFree", "schedulefree"),
}
# Set by the trainer itself: the parameter groups and their learning rates ([optimizer] *_lr).
RESERVED_ARGS = ("params", "lr")


def canonical_name(name: str) -> str:
    """The registry spelling of ``name`` (case-insensitive, as sd-scripts); unknown names the nearest."""
    by_lower = {k.lower(): k for k in OPTIMIZERS}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    hint = nearest(name.lower(), by_lower)
    fix = f"did you mean '{by_lower[hint]}'?" if hint else "choose one"
    raise ConfigError(f"[optimizer] type = {name!r} is not supported; {fix} (supported: {', '.join(OPTIMIZERS)})")


def optimizer_kwargs(name: str, args: dict[str, Any], *, weight_decay: float | None, betas: tuple | None,
                     eps: float | None) -> dict[str, Any]:  # fmt: skip
    """The constructor arguments of optimizer ``name`` besides params and lr: implied, then section keys, then args.

    ``weight_decay``, ``betas`` and ``eps`` (the ``[optimizer]`` keys) are None when unset: the
    optimizer's own default then applies. A key set both there and in ``optimizer_args`` is an error.
    """
    spec = OPTIMIZERS[canonical_name(name)]
    section = {k: v for k, v in (("weight_decay", weight_decay), ("betas", betas), ("eps", eps)) if v is not None}
    for key in args:
        if key in RESERVED_ARGS:
            raise ConfigError(f"[optimizer] optimizer_args.{key}: set by the trainer; use [optimizer] unet_lr and "
                              "text_encoder_*_lr for learning rates")  # fmt: skip
        if key in section:
            raise ConfigError(f"[optimizer] {key} is set both as a key and in optimizer_args; set it once")
        if key in spec.forced and args[key] != spec.implied[key]:
            raise ConfigError(f"[optimizer] optimizer_args.{key} = {args[key]!r}: {name} means {key} = "
                              f"{spec.implied[key]!r}; use type = \"{spec.cls}\" instead")  # fmt: skip
    merged = {**spec.implied, **section, **args}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}


def optimizer_class(name: str, *, device: str = "cpu") -> type:
    """Import the class of optimizer ``name``; a missing package or a CPU-only machine is a one-line error."""
    spec = OPTIMIZERS[canonical_name(name)]
    if spec.needs_cuda and not device.startswith("cuda"):
        raise ConfigError(f"[optimizer] type = \"{name}\" needs a CUDA GPU (bitsandbytes 8-bit states) and this run is "
                          f"on {device}; use type = \"AdamW\" here, or train on a GPU with pip install bitsandbytes")  # fmt: skip
    if importlib.util.find_spec(spec.module.split(".")[0]) is None:
        raise ConfigError(f"[optimizer] type = \"{name}\" needs the {spec.package} package, which is not installed; "
                          f"pip install {spec.package} (or: pip install 'sdxl-probe[optimizers]')")  # fmt: skip
    return getattr(importlib.import_module(spec.module), spec.cls)


def check_optimizer(name: str, kwargs: dict[str, Any], *, device: str = "cpu", lrs: tuple[float, ...] = ()) -> type:
    """Check every key of ``kwargs`` against the constructor of optimizer ``name``; returns the class.

    Args:
        lrs: the learning rates of the trained groups (Prodigy and D-Adaptation take one).

    Raises:
        ConfigError: an unknown key (naming the nearest accepted one and the optimizer), a
            missing package, a GPU-only optimizer on a machine without CUDA, or several
            learning rates for an optimizer that takes one.
    """
    if OPTIMIZERS[canonical_name(name)].one_lr and len(set(lrs)) > 1:
        raise ConfigError(f"[optimizer] type = \"{name}\" takes one learning rate for every trained model (it "
                          f"estimates the step size itself) but got {sorted(set(lrs))}; set text_encoder_*_lr = unet_lr "
                          "(sd-scripts recommends 1.0)")  # fmt: skip
    cls = optimizer_class(name, device=device)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cls
    accepted = [k for k in params if k not in ("self", *RESERVED_ARGS)]
    for key in kwargs:
        if key not in accepted:
            hint = nearest(key, accepted)
            fix = f"did you mean '{hint}'?" if hint else f"it takes: {', '.join(accepted)}"
            raise ConfigError(f"[optimizer] {key}: {name} ({spec_path(name)}) takes no argument '{key}'; {fix}")
    return cls


def spec_path(name: str) -> str:
    spec = OPTIMIZERS[canonical_name(name)]
    return f"{spec.module}.{spec.cls}"


def build_optimizer(name: str, param_groups: list[dict], kwargs: dict[str, Any], *, device: str = "cpu"):
    """The optimizer ``name`` over ``param_groups`` (each with its own ``lr``); see :func:`start_training`.

    Args:
        name: an sd-scripts ``--optimizer_type`` spelling (:data:`OPTIMIZERS`).
        param_groups: ``[{"params": [...], "lr": float, "name": str}]``.
        kwargs: from :func:`optimizer_kwargs`.
        device: where the run trains (AdamW8bit needs CUDA).
    """
    cls = check_optimizer(name, kwargs, device=device)
    return cls(param_groups, **kwargs)


def describe(name: str, kwargs: dict[str, Any]) -> str:
    """sd-scripts' ``ss_optimizer`` text: ``module.Class(key=value,...)``."""
    return f"{spec_path(name)}({','.join(f'{k}={v}' for k, v in kwargs.items())})"


def start_training(optimizer) -> None:
    """Put a schedule-free optimizer in training mode (weights at y); other optimizers have no modes."""
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()


@contextmanager
def eval_weights(optimizer) -> Iterator[None]:
    """Weights at the schedule-free average x for the block (validation, samples, saving), then back to y."""
    if not callable(getattr(optimizer, "eval", None)):
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()


def build_ema(params: list, decay: float):
    """diffusers ``EMAModel`` over the LoRA parameters, or None when ``decay`` is 0 (off)."""
    if decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay)
