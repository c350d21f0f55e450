"""Running studies: a killed study re-runs only its missing runs; Ray runs a 2-run study; smoke runs of all five."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sdxl_probe.studies.runner import plan, run_study
from sdxl_probe.studies.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = f"""
[study]
question = "tiny"
base_config = "{ROOT / 'configs' / 'train_toy.toml'}"
seeds = [0, 1]
metrics = ["val_loss"]
[toy_dataset]
n = 4
[train.dataset]
validation_split = 0.25
batch_size = 2
cache_text_encoder_outputs = false
[train.network]
dim = 2
alpha = 2.0
[train.training]
threads = 1
[smoke]
steps = 2
seeds = 2
[variants.a.dataset]
caption_extension = ".tags.txt"
[variants.b.dataset]
caption_extension = ".sentence.txt"
"""


class Killed(Exception):
    """Stands in for a kill: raised from the study's log at a chosen line."""


def _spec(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_killed_study_reruns_only_the_missing_runs(tmp_path, monkeypatch):
    """Kill the study after run 1 finished and inside run 2 after its step-1 save; re-run it.

    Oracle: the trainer's own calls counted through a wrapper (3 on the re-run: run 2 resumed, runs 3-4 fresh),
    run 1's LoRA file untouched (same bytes and mtime), and run 2's metrics.jsonl holding steps 1 and 2
    once each (the resumed run continued at step 2 instead of starting over).
    """
    import sdxl_probe.train.lora.loop as loop

    monkeypatch.chdir(tmp_path)
    spec_path = _spec(tmp_path)
    calls = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda cfg, run_dir, **kw: calls.append((Path(run_dir).name, Path(run_dir).parent.name,
                                                                                   kw["resume"])) or real_train(cfg, run_dir, **kw))  # fmt: skip

    def killing_log(line: str) -> None:
        if line.startswith("[a/seed-1] step 2/2"):  # logged after step 2, before its save: step 1 is saved
            raise Killed(line)

    with pytest.raises(Killed):
        run_study(spec_path, smoke=True, log=killing_log)
    runs = plan(load_spec(spec_path), smoke=True)
    assert [r.state() for r in runs] == ["done", "partial", "pending", "pending"]
    first = runs[0].run_dir / "lora.safetensors"
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    calls.clear()
    outcomes = run_study(spec_path, smoke=True, log=lambda line: None)
    assert sorted(calls) == [("seed-0", "b", False), ("seed-1", "a", True), ("seed-1", "b", False)]
    assert [o.action for o in outcomes] == ["skipped", "resumed", "ran", "ran"]
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    steps = [json.loads(line)["step"] for line in (runs[1].run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert [r.state() for r in runs] == ["done"] * 4
    calls.clear()
    assert [o.action for o in run_study(spec_path, smoke=True, log=lambda line: None)] == ["skipped"] * 4
    assert calls == []


def test_a_run_folder_made_with_other_settings_is_refused(tmp_path, monkeypatch):
    """Changing a variant after its runs trained is an error naming the run and the changed section.

    Oracle: a config.json written by hand with another learning rate in [optimizer].
    """
    from sdxl_probe.errors import ConfigError
    from sdxl_probe.studies.runner import dataset_dir
    from sdxl_probe.studies.spec import train_config
    from sdxl_probe.train.lora.loop import resolved_config

    monkeypatch.chdir(tmp_path)
    spec = load_spec(_spec(tmp_path))
    run = plan(spec, smoke=True)[0]
    cfg = train_config(spec, run.variant, run.seed, run.run_dir, smoke=True, dataset=dataset_dir(spec, True))
    data = resolved_config(cfg)
    data["optimizer"]["unet_lr"] = 0.5
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"other \[optimizer\] settings"):
        run_study(spec.path, smoke=True, log=lambda line: None)


@pytest.mark.slow
def test_ray_runs_a_two_run_study(tmp_path, monkeypatch):
    """A local Ray instance (1 CPU) runs both runs of a 2-run study as Ray tasks.

    Oracle: each run's files written by the trainer in the Ray worker (its final LoRA and metrics), and the
    worker process ids recorded in the run logs differ from this process's.
    """
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    spec_path = _spec(tmp_path, TINY.replace("seeds = 2", "seeds = 1"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        outcomes = run_study(spec_path, smoke=True, launcher="ray", log=lambda line: None)
    finally:
        ray.shutdown()
    assert sorted(o.action for o in outcomes) == ["ran", "ran"]
    for run in plan(load_spec(spec_path), smoke=True):
        assert run.state() == "done"
        assert json.loads((run.run_dir / "study_metrics.json").read_text())["metrics"]["val_loss"] > 0
        assert json.loads((run.run_dir / "study_metrics.json").read_text())["pid"] != os.getpid()
    assert (tmp_path / "runs" / "studies" / "tiny-smoke" / "index.html").is_file()
