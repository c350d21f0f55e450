"""Plan a study (variants x seeds), run what is missing, and say where each run stands.

Layout of OUTPUT_DIR::

    data/                        the toy dataset (and derived caption files), written once
    runs/VARIANT/seed-S/         one trainer run directory each (config.json, metrics.jsonl, lora.safetensors,
                                 state/, report.html), plus study_metrics.json, study_samples.png,
                                 attention/ and memorization/ from the metrics
    study.json, index.html       the analysis and its page (:mod:`sdxl_probe.studies.report`)

A run is **done** when its final LoRA and its ``study_metrics.json`` exist; **trained** when only the
metrics are missing; **partial** when the trainer saved a state but did not finish (the runner
resumes it, bit for bit as the trainer resumes); else **pending**. Re-running a study executes only
runs that are not done, so a killed study resumes where it stopped. A run folder whose saved config
differs from what the spec now asks for is an error, never silently reused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sdxl_probe.errors import ConfigError
from sdxl_probe.studies.spec import RUN_NAME, StudySpec, load_spec, train_config

COMPARED = ("model", "dataset", "network", "optimizer", "training")  # sections that define a run


@dataclass
class PlannedRun:
    """One (variant, seed) of a study and its run directory."""

    variant: str
    seed: int
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant}/seed-{self.seed}"

    def state(self) -> str:
        """'done', 'trained', 'partial' or 'pending' (see the module docstring)."""
        from sdxl_probe.studies.metrics import RESULT

        if (self.run_dir / f"{RUN_NAME}.safetensors").is_file():
            return "done" if (self.run_dir / RESULT).is_file() else "trained"
        if any((self.run_dir / "state").glob("step-*.safetensors")):
            return "partial"
        return "pending"

    def saved_step(self) -> int:
        """The step of the latest saved state (0 when none)."""
        steps = [int(p.stem.split("-")[1]) for p in (self.run_dir / "state").glob("step-*.safetensors")]
        return max(steps, default=0)


def dataset_dir(spec: StudySpec, smoke: bool) -> Path | None:
    from sdxl_probe.studies.data import DATA_DIR

    return spec.output_dir(smoke).resolve() / DATA_DIR if spec.toy_dataset.n > 0 else None


def plan(spec: StudySpec, smoke: bool = False) -> list[PlannedRun]:
    """Every run of the study, control first, then variant by variant, seed by seed."""
    root = spec.output_dir(smoke).resolve() / "runs"
    names = [spec.control] + [v for v in spec.variants if v != spec.control]
    return [PlannedRun(v, s, root / v / f"seed-{s}") for v in names for s in spec.seeds(smoke)]


def check_settings(spec: StudySpec, run: PlannedRun, smoke: bool) -> None:
    """Refuse a run folder trained with other settings than the spec now gives it."""
    from sdxl_probe.train.lora.loop import resolved_config  # the trainer's own RUN_DIR/config.json writer

    saved = run.run_dir / "config.json"
    if not saved.is_file():
        return
    want = resolved_config(train_config(spec, run.variant, run.seed, run.run_dir, smoke=smoke, dataset=dataset_dir(spec, smoke)))
    have = json.loads(saved.read_text(encoding="utf-8"))
    # A key the saved config lacks was added to the trainer since (its default then applied): not a change.
    changed = [k for k in COMPARED if any(want[k].get(key) != value for key, value in have.get(k, {}).items())]
    if changed:
        raise ConfigError(f"{run.run_dir}: trained with other [{'], ['.join(changed)}] settings than {spec.path} "
                          "now gives it; remove that run folder, or set [study] output_dir to a new folder")  # fmt: skip


def run_one(spec_path: str | Path, variant: str, seed: int, *, smoke: bool = False, out: str | None = None,
            log=print) -> str:
    """Train (or resume) one run and take its metrics; returns what it did: 'ran', 'resumed' or 'measured'."""
    from sdxl_probe.studies.data import dataset_trigger
    from sdxl_probe.studies.metrics import measure_run
    from sdxl_probe.train.lora.loop import train

    spec = load_spec(spec_path, out)
    run = next(r for r in plan(spec, smoke) if r.variant == variant and r.seed == seed)
    check_settings(spec, run, smoke)
    dataset = dataset_dir(spec, smoke)
    cfg = train_config(spec, variant, seed, run.run_dir, smoke=smoke, dataset=dataset)
    state = run.state()
    what = {"pending": "ran", "partial": "resumed"}.get(state, "measured")
    if state in ("pending", "partial"):
        train(cfg, run.run_dir, resume=state == "partial", log=lambda m: log(f"[{run.label}] {m}"))
    if run.state() != "done":
        trigger, concept = dataset_trigger(dataset)
        measure_run(run.run_dir, metrics=spec.study.metrics, settings=spec.measure_settings(smoke),
                    model_source=cfg.model.source, dataset=dataset, trigger=trigger, concept=concept,
                    log=lambda m: log(f"[{run.label}] {m}"))  # fmt: skip
    return what


@dataclass
class Outcome:
    """What the runner did with one run."""

    run: PlannedRun
    action: str  # 'skipped' (already done), 'ran', 'resumed', 'measured'
    seconds: float


def run_study(spec_path: str | Path, *, workers: int = 1, launcher: str = "local", address: str | None = None,
              smoke: bool = False, out: str | Path | None = None, log=print) -> list[Outcome]:  # fmt: skip
    """Run every run of the study that is not done, then write study.json and index.html.

    Args:
        workers: runs at a time; 1 runs them in this process, more in that many worker processes.
        launcher: 'local' (this machine), 'accelerate' (one ``accelerate launch`` per run, one GPU each:
            set workers to the number of GPUs) or 'ray' (tasks on a Ray cluster at ``address``).
        out: replaces ``[study] output_dir``.
    """
    from sdxl_probe.outputs import hold_lock
    from sdxl_probe.studies.data import prepare_dataset
    from sdxl_probe.studies.launch import launch
    from sdxl_probe.studies.report import write_report

    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path, None if out is None else Path(out).resolve())
    out = spec.output_dir(smoke).resolve()
    runs = plan(spec, smoke)
    for run in runs:
        check_settings(spec, run, smoke)  # before any work
    with hold_lock(out, option="[study] output_dir"):
        prepare_dataset(spec, out, smoke=smoke, log=log)
        todo = [r for r in runs if r.state() != "done"]
        log(f"study {spec.name}{' (smoke)' if smoke else ''}: {len(runs)} runs, {len(runs) - len(todo)} done, "
            f"{len(todo)} to run with {launcher} x{workers}")  # fmt: skip
        outcomes = [Outcome(r, "skipped", 0.0) for r in runs if r not in todo]
        start = time.perf_counter()
        outcomes += launch(spec_path, todo, launcher=launcher, workers=workers, address=address, smoke=smoke,
                           out=str(spec.output_dir().resolve()), log=log)  # absolute: workers may start elsewhere
        log(f"study {spec.name}: {len(todo)} run(s) in {time.perf_counter() - start:.0f} s")
        page = write_report(spec, smoke=smoke)
    log(f"wrote {page}")
    return outcomes


def status(spec: StudySpec, smoke: bool = False) -> list[tuple[PlannedRun, str, str]]:
    """(run, state, detail) for each run of the study."""
    rows = []
    for run in plan(spec, smoke):
        state = run.state()
        detail = f"step {run.saved_step()} saved" if state == "partial" else ""
        rows.append((run, state, detail))
    return rows
