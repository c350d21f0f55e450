"""Every shipped study runs end to end in smoke mode, and its report renders in Chromium with decoded plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from sdxl_probe.studies.metrics import diversity, last_val_loss
from sdxl_probe.studies.runner import plan, run_study
from sdxl_probe.studies.spec import load_spec

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml"))


@pytest.fixture(scope="module")
def smoke_studies(tmp_path_factory):
    """Each studies/*.toml in --smoke mode (1 seed, 2 training steps, 4 images), into a temp folder."""
    root = tmp_path_factory.mktemp("studies")
    outs = {}
    for path in STUDIES:
        run_study(path, smoke=True, out=root / path.stem, log=lambda line: None)
        outs[path.stem] = root / f"{path.stem}-smoke"  # --smoke writes beside --out, into OUT-smoke
    return outs


def _cells(grid_png: Path, prompts: int, samples: int, pad: int = 2) -> np.ndarray:
    """Cut a study_samples.png back into its (P, S, H, W, 3) images."""
    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(grid_png.read_bytes())).convert("RGB"))
    h = (grid.shape[0] + pad) // prompts - pad
    w = (grid.shape[1] + pad) // samples - pad
    return np.stack([np.stack([grid[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w]
                               for j in range(samples)]) for i in range(prompts)])  # fmt: skip


@pytest.mark.slow
def test_every_study_runs_in_smoke_mode(smoke_studies):
    """All five studies finish in smoke mode; each run's stored metrics agree with its own files.

    Oracle: validation loss re-read from the trainer's metrics.jsonl; diversity recomputed from the saved
    sample grid (lossless PNG of the same uint8 images); the memorization score re-read from the
    probe's memorization.json (headline score, last checkpoint); study.json's means recomputed with numpy.
    """
    for path in STUDIES:
        spec = load_spec(path, smoke_studies[path.stem].with_name(path.stem))
        settings = spec.measure_settings(smoke=True)
        data = json.loads((smoke_studies[path.stem] / "study.json").read_text())
        assert (smoke_studies[path.stem] / "index.html").is_file()
        for run in plan(spec, smoke=True):
            assert run.state() == "done", run.label
            got = json.loads((run.run_dir / "study_metrics.json").read_text())["metrics"]
            assert set(got) == set(spec.study.metrics)
            if "val_loss" in got:
                assert got["val_loss"] == last_val_loss(run.run_dir)
            if "diversity" in got:
                images = _cells(run.run_dir / "study_samples.png", settings.prompts, settings.samples)
                assert got["diversity"] == pytest.approx(diversity(images), abs=1e-12)
            if "memorization" in got:
                mem = json.loads((run.run_dir / "memorization" / "memorization.json").read_text())
                last = max(mem["checkpoints"], key=lambda c: c["step"])
                assert got["memorization"] == last["scores"][mem["headline"]]
            for metric, value in got.items():
                assert data["values"][run.variant][metric][str(run.seed)] == value
        for variant, metrics in data["summaries"].items():
            for metric, summary in metrics.items():
                assert summary["mean"] == pytest.approx(np.mean(list(data["values"][variant][metric].values())))


@pytest.mark.slow
@pytest.mark.browser
def test_study_report_renders_in_chromium_with_decoded_plots(smoke_studies):
    """The study index opens in headless Chromium; every plot and sample grid decodes; every run link resolves.

    Oracle: Chromium's own decoding of each <img> (drawn to a canvas and read back) and PIL's; the number
    of images: one plot per metric plus one sample grid per variant.
    """
    from chromium import assert_images_decode

    out = smoke_studies["tags_vs_sentences"]
    spec = load_spec(STUDIES[[p.stem for p in STUDIES].index("tags_vs_sentences")], out.with_name("tags_vs_sentences"))
    page = out / "index.html"
    assert assert_images_decode(page) == len(spec.study.metrics) + len(spec.variants)
    text = page.read_text()
    assert "toy model" in text.lower() and "Smoke mode" in text
    import re

    links = re.findall(r'<a href="([^"]+)"', text)
    assert links and all((out / link).is_file() for link in links)
    assert {"runs/tags/seed-0/report.html", "runs/sentences/seed-0/attention/attention.html"} <= set(links)
