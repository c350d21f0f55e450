"""Render self-contained HTML report pages with jinja2 (autoescape always on).

A page is a template under ``sdxl_probe/report/templates`` that extends ``base.html.j2``.
The base template carries the shared header (model, dataset, config, version, time),
the toy-model banner, inline CSS and a Content-Security-Policy that forbids scripts and
every network fetch: figures are ``data:`` URIs, so the file opens anywhere offline.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdxl_probe import __version__
from sdxl_probe.io import write_text

if TYPE_CHECKING:
    import jinja2

TEMPLATE_DIR = Path(__file__).parent / "templates"
# Probes may keep their own page templates here (each extending "base.html.j2").
PROBE_TEMPLATE_DIR = Path(__file__).parent.parent / "probes" / "templates"
TOY_KINDS = ("toy", "tiny")
TOY_BANNER = "toy model — figures are from the project's toy model, not real SDXL"


@dataclasses.dataclass
class ReportHeader:
    """What every report page states at the top.

    Attributes:
        title: the page title, e.g. ``"Caption audit: my_dataset"``.
        model: the model source (path or preset name); None when no model was used.
        model_kind: ``"sdxl"``, ``"toy"`` or ``"tiny"`` (as ``SDXLComponents.kind``); None without a model.
        dataset: the dataset path or name; None when not applicable.
        config: the resolved settings the result was computed with (shown as a table).
        device: the torch device the model ran on (``"cpu"``, ``"cuda:0"``); None without a model
            or for results saved before it was recorded.
        dtype: the compute dtype (``"fp32"``, ``"bf16"``, ``"fp16"``, with the VAE's when it differs,
            e.g. ``"fp16, VAE fp32"``); None likewise.
        version: the sdxl-probe version that computed the result.
        created: ISO-8601 UTC time the result was computed.
    """

    title: str
    model: str | None = None
    model_kind: str | None = None
    dataset: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    version: str = __version__
    created: str = dataclasses.field(default_factory=lambda: utc_now())

    @property
    def is_toy(self) -> bool:
        """True when the figures come from the toy or tiny model: the page must say so."""
        return self.model_kind in TOY_KINDS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportHeader:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def precision_text(model: dict[str, Any]) -> tuple[str | None, str | None]:
    """(device, dtype) for the header from a saved result's model entry (None for older results)."""
    dtype, vae = model.get("dtype"), model.get("vae_dtype")
    if dtype and vae and vae != dtype:
        dtype = f"{dtype}, VAE {vae}"
    return model.get("device"), dtype


def utc_now() -> str:
    """The current UTC time, ISO-8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@lru_cache(maxsize=1)
def make_environment() -> jinja2.Environment:
    """The one jinja2 environment for all reports: autoescape on for every template.

    ``select_autoescape(default=True)`` escapes even templates whose name does not end in
    ``.html``; ``StrictUndefined`` turns a missing context value into an error instead of
    a silently empty cell.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(TEMPLATE_DIR), str(PROBE_TEMPLATE_DIR)]),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    env.globals["TOY_BANNER"] = TOY_BANNER
    return env


def render_string(template: str, context: dict[str, Any], *, header: ReportHeader) -> str:
    """Render ``template`` (a file name under templates/) to an HTML string."""
    if "header" in context:
        raise ValueError("context key 'header' is reserved for the ReportHeader")
    return make_environment().get_template(template).render(**context, header=header)


def render_page(template: str, context: dict[str, Any], out: str | Path, *, header: ReportHeader) -> Path:
    """Render ``template`` with ``context`` and write it atomically to ``out``.

    Args:
        template: a template file name under ``sdxl_probe/report/templates`` or
            ``sdxl_probe/probes/templates`` that extends ``base.html.j2`` (e.g. ``"audit.html.j2"``;
            ``"simple.html.j2"`` renders generic ``sections`` of paragraphs, figures and tables).
        context: values for the template; every string is HTML-escaped on output.
        out: the ``.html`` file to write.
        header: the shared page header.

    Returns:
        The written path.
    """
    return write_text(out, render_string(template, context, header=header))


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100.0 * value:.{digits}f}%"


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"
