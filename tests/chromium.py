"""Headless-Chromium helpers for report tests: screenshot, DOM dump, in-browser image decoding.

Import it from a test module as ``from chromium import ...`` (pytest puts ``tests/`` on
``sys.path``). Every function starts a fresh Chromium with its own throwaway profile and the
flags below, which keep it offline and quiet.

Missing Chromium: :func:`require_chromium` fails the test with the install command; set
``SDXL_PROBE_SKIP_BROWSER=1`` to skip browser tests on purpose (ignored in CI, ``CI=true``).
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
TIMEOUT_S = 120
RESULT_ID = "sdxl-probe-img-check"
DATA_IMG_RE = re.compile(r"""<img\b[^>]*\bsrc="(data:image/(png|svg\+xml);base64,([^"]+))\"""", re.IGNORECASE)

# The wrapper loads the report in an iframe (same file:// folder; Chromium runs with
# --allow-file-access-from-files so the parent may read the frame's DOM). In the iframe's load
# handler it draws every image onto a canvas, which forces a synchronous decode, and reads the
# pixels back: a broken image has no natural size and cannot be drawn. The outcome is written
# as JSON into a <pre> that --dump-dom prints. The report itself carries no script at all.
WRAPPER = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<pre id="{result_id}">pending</pre>
<iframe id="report" src="{src}" style="width:1200px;height:900px"></iframe>
<script>
function check(img) {{
  const row = {{src: (img.getAttribute("src") || "").slice(0, 48), complete: img.complete,
               width: img.naturalWidth, height: img.naturalHeight, decoded: false, distinct: 0}};
  if (!(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0)) return row;
  try {{
    const canvas = document.createElement("canvas");
    canvas.width = Math.min(img.naturalWidth, 512);
    canvas.height = Math.min(img.naturalHeight, 512);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < px.length && seen.size < 64; i += 4 * 97) seen.add(px[i] << 16 | px[i + 1] << 8 | px[i + 2]);
    row.decoded = true;
    row.distinct = seen.size;
  }} catch (e) {{ row.error = String(e); }}
  return row;
}}
const frame = document.getElementById("report");
frame.addEventListener("load", () => {{
  const out = document.getElementById("{result_id}");
  try {{
    const rows = Array.from(frame.contentDocument.images).map(check);
    out.textContent = JSON.stringify({{ok: true, images: rows}});
  }} catch (e) {{
    out.textContent = JSON.stringify({{ok: false, error: String(e)}});
  }}
}});
</script></body></html>
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH (or /usr/bin/chromium), or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_chromium() -> str:
    """The Chromium path. Missing Chromium FAILS the test, naming the install command, unless
    ``SDXL_PROBE_SKIP_BROWSER=1`` asks to skip browser tests on purpose (never set in CI)."""
    path = find_chromium()
    if path is None:
        if os.environ.get("SDXL_PROBE_SKIP_BROWSER") == "1" and not in_ci():
            pytest.skip("chromium not found and SDXL_PROBE_SKIP_BROWSER=1")
        pytest.fail("chromium not found: install it with `apt-get install chromium` (.ci/run does), "
                    "or set SDXL_PROBE_SKIP_BROWSER=1 to skip the browser tests on purpose")
    return path


def run_chromium(url: str, *flags: str, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run headless Chromium once on ``url`` with a fresh profile; raise if it fails."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="sdxl-probe-chromium-") as profile:
        cmd = [binary, *BASE_FLAGS, f"--user-data-dir={profile}", *flags, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=profile)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def screenshot(page: Path, out: Path, *, width: int = 1280, height: int = 2000) -> Path:
    """Screenshot ``page`` (a local HTML file) to the PNG ``out``."""
    out = Path(out).resolve()
    run_chromium(Path(page).resolve().as_uri(), f"--screenshot={out}", f"--window-size={width},{height}")
    if not out.is_file():
        raise AssertionError(f"chromium wrote no screenshot to {out}")
    return out


def dump_dom(page: Path, *, budget_ms: int = 5000, extra_flags: tuple[str, ...] = ()) -> str:
    """The DOM of ``page`` after load (and ``budget_ms`` of virtual time), serialised by Chromium."""
    flags = ("--run-all-compositor-stages-before-draw", f"--virtual-time-budget={budget_ms}", *extra_flags)
    return run_chromium(Path(page).resolve().as_uri(), *flags, "--dump-dom").stdout


def browser_image_check(page: Path) -> list[dict]:
    """Load ``page`` in an iframe and report, per ``<img>``, whether Chromium decoded it.

    Returns:
        One dict per image: ``src`` (prefix), ``complete``, ``width``, ``height``, ``decoded``
        (drawn onto a canvas and read back), ``distinct`` (distinct colours in a pixel sample).
    """
    page = Path(page).resolve()
    wrapper = page.parent / f".img-check-{page.stem}.html"
    wrapper.write_text(WRAPPER.format(result_id=RESULT_ID, src=html.escape(page.name)), encoding="utf-8")
    try:
        dom = dump_dom(wrapper, extra_flags=("--allow-file-access-from-files",))
    finally:
        wrapper.unlink(missing_ok=True)
    match = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', dom, re.DOTALL)
    if match is None:
        raise AssertionError(f"image check wrote no result; DOM was:\n{dom[:2000]}")
    if match.group(1) == "pending":
        raise AssertionError("the report iframe never fired its load event")
    result = json.loads(html.unescape(match.group(1)))
    if not result.get("ok"):
        raise AssertionError(f"image check failed in the browser: {result}")
    return result["images"]


def assert_images_decode(page: Path) -> int:
    """Every ``<img>`` of ``page`` decodes in Chromium AND with PIL; returns the image count."""
    text = Path(page).read_text(encoding="utf-8")
    n_tags = len(re.findall(r"<img\b", text, re.IGNORECASE))
    rows = browser_image_check(page)
    assert len(rows) == n_tags, f"browser saw {len(rows)} images, the file has {n_tags} <img> tags"
    bad = [r for r in rows if not (r["complete"] and r["decoded"] and r["width"] > 0 and r["distinct"] > 1)]
    assert not bad, f"images that did not decode in Chromium: {bad}"
    assert len(decode_data_uri_images(text)) == n_tags, "some <img> is not an inline data: URI"
    return n_tags


def decode_data_uri_images(text: str) -> list[tuple[int, int]]:
    """Decode every inline ``data:image/png`` / ``svg+xml`` ``<img>`` in ``text``; PNG sizes via PIL."""
    import base64

    from PIL import Image

    sizes = []
    for _, kind, payload in DATA_IMG_RE.findall(text):
        data = base64.b64decode(payload, validate=True)
        if kind.lower() == "png":
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                sizes.append(im.size)
        else:
            assert b"<svg" in data[:2000], "svg data URI without an <svg> element"
            sizes.append((0, 0))
    return sizes


def assert_not_blank(png: Path, *, min_std: float = 8.0) -> float:
    """The screenshot has visible content: its grey-level standard deviation exceeds ``min_std``."""
    from PIL import Image, ImageStat

    with Image.open(png) as im:
        std = ImageStat.Stat(im.convert("L")).stddev[0]
    assert std > min_std, f"{png}: screenshot looks blank (grey std {std:.2f} <= {min_std})"
    return std


def dom_elements(dom: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element ``(tag, attrs)`` of a dumped DOM, parsed with the stdlib HTML parser."""
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str | None]]] = []

    class _Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    parser = _Collector()
    parser.feed(dom)
    parser.close()
    return found


def assert_inert(dom: str, payload: str) -> None:
    """``payload`` (hostile user text) appears in ``dom`` as escaped text, never as markup.

    Checks that the DOM has no ``<script>`` element, no element with an ``on*`` handler, no
    ``<img>`` whose src is not a data: URI, and that the escaped payload text is present.
    """
    elements = dom_elements(dom)
    scripts = [a for t, a in elements if t == "script"]
    assert not scripts, f"the DOM has {len(scripts)} <script> element(s)"
    handlers = [(t, k) for t, a in elements for k in a if k.lower().startswith("on")]
    assert not handlers, f"elements with event handlers: {handlers}"
    foreign = [
        a.get("src") for t, a in elements if t == "img" and not (a.get("src") or "").startswith("data:image/")
    ]
    assert not foreign, f"<img> elements with non-data src: {foreign}"
    assert html.escape(payload, quote=False) in dom, "the payload text is missing from the DOM"
