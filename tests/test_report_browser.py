"""The audit page in a real browser: renders, every image decodes, hostile captions stay inert."""

from __future__ import annotations

import pytest
from audit_data import make_captions, write_kohya_folder
from chromium import (
    assert_images_decode,
    assert_inert,
    assert_not_blank,
    browser_image_check,
    dump_dom,
    require_chromium,
    screenshot,
)

from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.probes.audit.core import AuditSettings, run_audit
from sdxl_probe.probes.audit.report import render_report
from sdxl_probe.report import ReportHeader, render_page

pytestmark = pytest.mark.browser
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    require_chromium()
    root = tmp_path_factory.mktemp("browser")
    caps = [", ".join(t) for t in make_captions(7, 40)] + [HOSTILE, HOSTILE]
    write_kohya_folder(root / "data", {"2_x": caps})
    ds = open_dataset(root / "data", cli_defaults={"shuffle_caption": True, "keep_tokens": 1})
    header = ReportHeader("Caption audit: browser", dataset=HOSTILE, config={"trigger": HOSTILE})
    run_audit(ds, root / "r", AuditSettings(trigger="sks"), name="b", header=header.to_dict())
    return render_report(root / "r")


def test_screenshot_is_not_blank(page, tmp_path):
    png = screenshot(page, tmp_path / "shot.png", width=1200, height=1600)
    assert_not_blank(png)


def test_every_image_decodes_in_chromium(page):
    assert assert_images_decode(page) >= 3  # histogram, lost tags, trigger, shuffle


def test_hostile_caption_stays_inert_text(page):
    assert page.read_text(encoding="utf-8").count(HOSTILE) == 0
    dom = dump_dom(page)
    assert_inert(dom, HOSTILE)
    assert dom.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # header, tag table, duplicates


def test_image_check_catches_a_broken_image(tmp_path):
    require_chromium()
    sections = [
        {"title": "t", "figures": [{"uri": "data:image/png;base64,iVBORw0KGgoAAAA", "caption": "broken"}]}
    ]
    out = render_page(
        "simple.html.j2", {"sections": sections}, tmp_path / "bad.html", header=ReportHeader("bad")
    )
    (row,) = browser_image_check(out)
    assert not row["decoded"] and row["width"] == 0
