"""matplotlib figures as inline data URIs (Agg backend, imported lazily).

Figures are built with ``matplotlib.figure.Figure`` directly rather than pyplot, so no
global backend state or GUI is touched and the module is safe to import anywhere.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Image formats a figure may be inlined as, with their MIME types.
FIGURE_FORMATS = {"png": "image/png", "svg": "image/svg+xml"}


def new_figure(width: float = 7.0, height: float = 3.2) -> Figure:
    """A fresh Agg-backed figure of ``width`` x ``height`` inches."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig: Figure, fmt: str = "png", dpi: int = 100) -> str:
    """Serialise ``fig`` to a ``data:`` URI (base64) for an inline ``<img src>``.

    Args:
        fig: a matplotlib figure; it is not used again afterwards.
        fmt: ``"png"`` or ``"svg"``.
        dpi: resolution for PNG output.
    """
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {', '.join(FIGURE_FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return bytes_to_data_uri(buf.getvalue(), FIGURE_FORMATS[fmt])


def bytes_to_data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` for raw file bytes (e.g. a PNG written by PIL)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def count_histogram(
    counts: Mapping[int, int],
    *,
    limits: Sequence[int] = (),
    title: str = "",
    xlabel: str = "tokens per caption",
    ylabel: str = "captions",
) -> str:
    """A bar histogram of integer values with labelled vertical limit lines, as a data URI.

    Args:
        counts: value -> how many items have it (e.g. token count -> number of captions).
        limits: x positions to mark (e.g. 75, 150, 225 token limits).
    """
    fig = new_figure()
    ax = fig.add_subplot()
    if counts:
        xs = sorted(counts)
        ax.bar(xs, [counts[x] for x in xs], width=1.0, color="#4c72b0", linewidth=0)
    top = max(counts.values(), default=1)
    for limit in limits:
        ax.axvline(limit + 0.5, color="#c44e52", linestyle="--", linewidth=1.2)
        ax.text(limit + 1.5, top * 0.95, f"{limit}", color="#c44e52", va="top", fontsize=9)
    _label(ax, title, xlabel, ylabel)
    return figure_to_data_uri(fig)


def horizontal_bars(
    labels: Sequence[str], values: Sequence[float], *, title: str = "", xlabel: str = "", xlim: Any = None
) -> str:
    """A horizontal bar chart (first label on top), as a data URI. Labels are drawn as plain text."""
    fig = new_figure(7.0, max(1.6, 0.28 * len(labels) + 0.9))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))
    ax.barh(ys, list(values), color="#55a868")
    ax.set_yticks(ys, [_short(label) for label in labels], fontsize=8)
    ax.invert_yaxis()
    if xlim is not None:
        ax.set_xlim(*xlim)
    _label(ax, title, xlabel, "")
    return figure_to_data_uri(fig)


def _label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="both", alpha=0.25)


def _short(label: str, width: int = 40) -> str:
    # matplotlib treats "$...$" as mathtext; user text must be drawn literally.
    text = label if len(label) <= width else label[: width - 1] + "…"
    return text.replace("$", r"\$")
