"""``measure``: memorization scores of every checkpoint of a run, LoRA minus base, and the recommendation.

Order of work: every input is checked (run files, manifest hashes, LoRA headers, output folder), the
model is loaded and every LoRA is test-loaded into it, and only then does generation start. The base
model is measured once; each checkpoint is measured with its LoRA loaded through the one LoRA route
(:func:`sdxl_probe.pipeline.lora.lora_loaded`). Generations are cached on disk (:mod:`generate`).
"""

from __future__ import annotations

from pathlib import Path

from sdxl_probe.errors import ProbeError
from sdxl_probe.probes.memorization import inputs as inp
from sdxl_probe.probes.memorization.generate import GenerationCache
from sdxl_probe.probes.memorization.result import RESULT_JSON, MemorizationResult
from sdxl_probe.probes.memorization.settings import MemorizationSettings

CHECKPOINT_CHOICES = ("all", "last")


def measure(run_dir: Path, out: Path, *, seeds: int = 8, steps: int = 20, checkpoints: str = "all", log=print,
            model: str | None = None, dataset: Path | None = None, device: str = "auto", dtype: str = "auto",
            components=None, cache_dir: Path | None = None, **options) -> MemorizationResult:  # fmt: skip
    """Score every (or the last) checkpoint of the run in ``run_dir`` and write ``out``.

    Args:
        run_dir: a folder written by ``sdxl-probe train``.
        out: the result folder (``memorization.json``, ``memorization.csv``, ``memorization.html``).
        seeds: N generations per caption.
        steps: sampler steps.
        checkpoints: "all" or "last".
        log: progress lines.
        model: the base model; default the run's ``config.json`` ``[model] source``.
        dataset: where the run's images lie now, when moved (checked against the manifest's sha256).
        device, dtype: as every command's ``--device``/``--dtype``.
        components: already loaded components of that model (tests); else loaded here.
        cache_dir: the generation cache; default ``OUT_cache`` beside ``out``.
        options: further :class:`MemorizationSettings` fields (cfg, batch_size, first_steps, features_model,
            features_weights, ...).
    """
    settings = MemorizationSettings.checked(seeds=seeds, steps=steps, checkpoints=checkpoints, **options)
    run_dir = Path(run_dir)
    config = inp.read_json(run_dir / "config.json", "pass a run folder written by `sdxl-probe train`")
    metrics = inp.read_metrics(run_dir)
    name = config.get("saving", {}).get("output_name", "lora")
    ckpts = inp.run_checkpoints(run_dir, name, metrics, settings.checkpoints)
    source = model or config.get("model", {}).get("source", "toy")
    inp.check_architecture(ckpts)
    verified = inp.verified_manifest(run_dir, config, dataset)  # a changed dataset is refused before the model loads
    return _measure(ckpts, source, out, settings, log=log, metrics=metrics, origin=str(run_dir), device=device,
                    dtype=dtype, components=components, cache_dir=cache_dir,
                    load_images=lambda size: inp.manifest_images(verified, size),
                    bucket=lambda native: inp.bucket_size(run_dir, native))  # fmt: skip


def measure_files(loras: list[Path], dataset: Path, out: Path, *, model: str, log=print, device: str = "auto",
                  dtype: str = "auto", components=None, cache_dir: Path | None = None,
                  **options) -> MemorizationResult:  # fmt: skip
    """``--lora FILE ... --dataset DIR --model M``: LoRA files scored on a dataset's captions and images."""
    settings = MemorizationSettings.checked(**options)
    if not loras:
        raise ProbeError("no LoRA files: pass a RUN_DIR, or --lora FILE (repeatable) with --dataset and --model")
    ckpts = inp.file_checkpoints([Path(p) for p in loras])
    inp.check_architecture(ckpts)
    return _measure(ckpts, model, out, settings, log=log, metrics=[], origin="files", device=device, dtype=dtype,
                    components=components, cache_dir=cache_dir,
                    load_images=lambda size: inp.dataset_images(Path(dataset), size),
                    bucket=lambda native: (native, native))  # fmt: skip


def _measure(ckpts, source, out, settings, *, log, metrics, origin, device, dtype, components, cache_dir,
             load_images, bucket) -> MemorizationResult:  # fmt: skip
    from sdxl_probe.outputs import output_folder, preflight_folder
    from sdxl_probe.probes.memorization.run import score_run

    out = Path(out)
    preflight_folder(out, owns=(RESULT_JSON,))
    encoder = _encoder(settings)  # weights that do not fit the architecture are refused before the model loads
    if components is None:
        components = _load(source, device, dtype)
    if encoder is not None:
        encoder.to(next(components.unet.parameters()).device)
    from sdxl_probe.pipeline.sampling import default_size

    images = load_images(bucket(default_size(components)))
    _test_load(components, ckpts)
    cache = GenerationCache(Path(cache_dir) if cache_dir else out.parent / f"{out.name}_cache")
    with output_folder(out, owns=(RESULT_JSON,)) as tmp:
        result = score_run(components, ckpts, images, metrics, settings, cache, tmp, source=source,
                           origin=origin, log=log, encoder=encoder)  # fmt: skip
        result.save(tmp)
        from sdxl_probe.probes.memorization.report import render_report

        render_report(tmp)
    return result


def _encoder(settings: MemorizationSettings):
    """The copy cosine's open_clip image encoder when ``--features-model`` is given, else None (VAE latents)."""
    if not settings.features_model:
        return None
    from sdxl_probe.probes.memorization.features import load_encoder

    return load_encoder(settings.features_model, settings.features_weights)


def _load(source: str, device: str, dtype: str):
    from sdxl_probe.pipeline.device import load_model, open_model

    _, precision = open_model(source, device, dtype)
    return load_model(source, precision, identity=True)


def _test_load(components, ckpts: list[inp.Checkpoint]) -> None:
    """Load and unload every LoRA once: a LoRA for another base model fails here, before any generation."""
    from sdxl_probe.pipeline.lora import lora_loaded

    for ckpt in ckpts:
        with lora_loaded(components, ckpt.path):
            pass
