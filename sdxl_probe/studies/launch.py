"""Where a study's runs execute: this process, local worker processes, ``accelerate launch`` or Ray.

* ``local``, ``workers = 1``: one run after another in this process (no start-up cost per run).
* ``local``, ``workers = N``: N worker processes at a time (``python -m sdxl_probe.studies.worker``), each
  run's output in RUN_DIR/study.log. Set ``[train.training] threads`` so N x threads fits the cores.
* ``accelerate``: each run as ``accelerate launch --num_processes 1 -m sdxl_probe.studies.worker ...`` with
  ``CUDA_VISIBLE_DEVICES`` set to its worker slot, so ``--workers`` = number of GPUs trains one run per
  GPU. (One process per run; a single
  training run can use several GPUs with ``accelerate launch --multi_gpu -m sdxl_probe train``, but a study
  spreads its runs instead. Not testable on a CPU machine.)
* ``ray``: one Ray task per run (``num_cpus = 1``, plus ``num_gpus = 1`` when the run's device is CUDA) on
  the cluster at ``--address`` (``auto``: the one ``ray start`` made; none: a local instance). The study's
  output folder must be on a file system every node sees (it holds the dataset and the run folders).

Each run is :func:`sdxl_probe.studies.runner.run_one`; it is idempotent, so a lost worker only costs a re-run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

from sdxl_probe.errors import ProbeError

LAUNCHERS = ("local", "accelerate", "ray")


def launch(spec_path: Path, runs: list, *, launcher: str, workers: int, address: str | None, smoke: bool,
           out: str | None, log) -> list:
    """Execute ``runs`` (PlannedRun) and return their Outcomes, printing progress for the whole study."""
    if launcher not in LAUNCHERS:
        raise ProbeError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    if not runs:
        return []
    if launcher == "ray":
        return _ray(spec_path, runs, address=address, smoke=smoke, out=out, log=log)
    if launcher == "local" and workers == 1:
        return _inline(spec_path, runs, smoke=smoke, out=out, log=log)
    return _processes(spec_path, runs, workers=workers, accelerate=launcher == "accelerate", smoke=smoke, out=out,
                      log=log)


def _progress(log, done: int, total: int, run, action: str, seconds: float) -> None:
    log(f"[{done}/{total}] {run.label}: {action} in {seconds:.0f} s")


def _inline(spec_path: Path, runs: list, *, smoke: bool, out: str | None, log) -> list:
    from sdxl_probe.studies.runner import Outcome, run_one

    outcomes = []
    for i, run in enumerate(runs, 1):
        start = time.perf_counter()
        action = run_one(spec_path, run.variant, run.seed, smoke=smoke, out=out, log=log)
        outcomes.append(Outcome(run, action, time.perf_counter() - start))
        _progress(log, i, len(runs), run, action, outcomes[-1].seconds)
    return outcomes


def worker_command(spec_path: Path, run, *, smoke: bool, out: str | None, accelerate: bool) -> list[str]:
    """The command line that runs one study run in a fresh process."""
    args = ["-m", "sdxl_probe.studies.worker", str(spec_path), run.variant, str(run.seed),
            *(["--smoke"] if smoke else []), *(["--out", out] if out else [])]  # fmt: skip
    if not accelerate:
        return [sys.executable, *args]
    if importlib.util.find_spec("accelerate") is None:
        raise ProbeError("--launcher accelerate needs accelerate: pip install accelerate")
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", *args]  # fmt: skip  (the run's own [training] mixed_precision applies)


def _processes(spec_path: Path, runs: list, *, workers: int, accelerate: bool, smoke: bool, out: str | None,
               log) -> list:
    """``workers`` subprocesses at a time; each slot keeps its number (its GPU under accelerate)."""
    from sdxl_probe.studies.runner import Outcome

    commands = [worker_command(spec_path, r, smoke=smoke, out=out, accelerate=accelerate) for r in runs]
    slots: Queue[int] = Queue()
    for slot in range(workers):
        slots.put(slot)
    done: list = []

    def one(item: tuple) -> Outcome:
        run, cmd = item
        slot = slots.get()
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(slot)} if accelerate else {}))
        start = time.perf_counter()
        run.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(run.run_dir / "study.log", "a", encoding="utf-8") as f:
                code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        finally:
            slots.put(slot)
        outcome = Outcome(run, "ran" if code == 0 else f"failed (exit {code}, see {run.run_dir / 'study.log'})",
                          time.perf_counter() - start)  # fmt: skip
        done.append(outcome)
        _progress(log, len(done), len(runs), run, outcome.action, outcome.seconds)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(one, zip(runs, commands, strict=True)))
    _raise_failures(outcomes)
    return outcomes


def _raise_failures(outcomes: list) -> None:
    failed = [o for o in outcomes if o.action.startswith("failed")]
    if failed:
        raise ProbeError(f"{len(failed)} run(s) failed: " + "; ".join(f"{o.run.label} {o.action}" for o in failed)
                         + "; fix the cause and run the study again (finished runs are kept)")  # fmt: skip


def _remote_run(spec_path: str, variant: str, seed: int, smoke: bool, out: str | None) -> tuple[str, float]:
    from sdxl_probe.studies.runner import run_one

    start = time.perf_counter()
    action = run_one(spec_path, variant, seed, smoke=smoke, out=out, log=lambda m: print(m, flush=True))
    return action, time.perf_counter() - start


def _ray(spec_path: Path, runs: list, *, address: str | None, smoke: bool, out: str | None, log) -> list:
    """One Ray task per run on the cluster at ``address`` (a running local instance is reused)."""
    try:
        import ray
    except ImportError:
        raise ProbeError("--launcher ray needs Ray: pip install 'sdxl-probe[ray]' (ray>=2.9)") from None
    from sdxl_probe.studies.runner import Outcome, dataset_dir
    from sdxl_probe.studies.spec import load_spec, train_config

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    spec = load_spec(spec_path, out)
    refs = {}
    for run in runs:
        cfg = train_config(spec, run.variant, run.seed, run.run_dir, smoke=smoke, dataset=dataset_dir(spec, smoke))
        gpus = 1 if cfg.training.device.startswith("cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_remote_run)
        refs[task.remote(str(spec_path), run.variant, run.seed, smoke, out)] = run
    outcomes, pending = [], list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        run = refs[ready[0]]
        try:
            action, seconds = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            action, seconds = f"failed ({str(e).splitlines()[-1][:200]})", 0.0
        outcomes.append(Outcome(run, action, seconds))
        _progress(log, len(outcomes), len(runs), run, action, seconds)
    _raise_failures(outcomes)
    return outcomes
