"""The shared report layer: escaping, header, toy banner, self-contained figures."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import pytest
from PIL import Image

from sdxl_probe.errors import ProbeError
from sdxl_probe.report import (
    ReportHeader,
    figure_to_data_uri,
    new_figure,
    render_page,
    render_string,
)
from sdxl_probe.report.figures import count_histogram, horizontal_bars
from sdxl_probe.report.render import TOY_BANNER
from sdxl_probe.reports import render_report

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def _page(header: ReportHeader, **context) -> str:
    sections = context.pop("sections", [])
    return render_string("simple.html.j2", {"sections": sections, **context}, header=header)


def test_header_shows_model_dataset_version_time_and_config():
    header = ReportHeader(
        "T", model="runs/m.safetensors", model_kind="sdxl", dataset="data/x", config={"seed": 3}
    )
    page = _page(header)
    for text in ("runs/m.safetensors", "data/x", header.version, header.created, "seed"):
        assert text in page
    assert 'class="toy-banner"' not in page


@pytest.mark.parametrize("kind", ["toy", "tiny"])
def test_toy_model_banner(kind):
    page = _page(ReportHeader("T", model="toy", model_kind=kind))
    assert 'class="toy-banner"' in page
    assert TOY_BANNER.replace("'", "&#39;") in page


def test_user_text_is_escaped_everywhere():
    header = ReportHeader(HOSTILE, model=HOSTILE, dataset=HOSTILE, config={HOSTILE: HOSTILE})
    sections = [
        {"title": HOSTILE, "paragraphs": [HOSTILE], "table": {"columns": [HOSTILE], "rows": [[HOSTILE]]}}
    ]
    page = _page(header, sections=sections)
    assert "<script>" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_page_is_self_contained(tmp_path):
    uri = count_histogram({10: 3, 80: 1}, limits=(75,), title=HOSTILE)
    sections = [{"title": "fig", "figures": [{"uri": uri, "caption": "c"}]}]
    out = render_page(
        "simple.html.j2", {"sections": sections}, tmp_path / "r" / "index.html", header=ReportHeader("T")
    )
    text = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "external resource in report"
    assert (
        "Content-Security-Policy" in text and "script-src" not in text
    )  # default-src 'none' forbids scripts
    assert not list(tmp_path.glob("r/.*tmp*")), "atomic write left a temp file"


def test_figure_to_data_uri_png_and_svg_decode():
    fig = new_figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    png = figure_to_data_uri(fig, "png")
    assert png.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1]))) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    svg = figure_to_data_uri(fig, "svg")
    assert b"<svg" in base64.b64decode(svg.split(",", 1)[1])
    with pytest.raises(ValueError):
        figure_to_data_uri(fig, "gif")


def test_bars_draw_dollar_signs_literally():
    uri = horizontal_bars(["$x$ tag", "plain"], [0.5, 0.2], title="t")
    assert uri.startswith("data:image/png;base64,")


def test_render_report_unknown_kind(tmp_path):
    with pytest.raises(ProbeError, match="no report renderer for kind 'nonexistent_kind'"):
        render_report("nonexistent_kind", tmp_path)
    with pytest.raises(ProbeError, match="result folder not found"):
        render_report("audit", tmp_path / "missing")


def test_report_layer_imports_no_torch():
    code = "import sys, sdxl_probe.report as r; r.render_string; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_chromium_fails_unless_skipping_is_asked_for(monkeypatch):
    import chromium

    monkeypatch.setattr(chromium, "find_chromium", lambda: None)
    monkeypatch.delenv("SDXL_PROBE_SKIP_BROWSER", raising=False)
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
            chromium.require_chromium()
    monkeypatch.setenv("SDXL_PROBE_SKIP_BROWSER", "1")
    with pytest.raises(pytest.skip.Exception):
        chromium.require_chromium()
    monkeypatch.setenv("CI", "true")  # CI never skips, whatever the variable says
    with pytest.raises(pytest.fail.Exception):
        chromium.require_chromium()


def test_no_template_turns_escaping_off():
    from sdxl_probe.report.render import PROBE_TEMPLATE_DIR, TEMPLATE_DIR

    templates = [*TEMPLATE_DIR.glob("*.j2"), *PROBE_TEMPLATE_DIR.glob("*.j2")]
    assert len(templates) >= 3
    for path in templates:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\|\s*safe\b|autoescape\s+false|Markup\(", text), (
            f"{path.name} disables escaping"
        )
        assert "<script" not in text.lower(), f"{path.name} contains a script"
