"""The shared HTML report layer: one self-contained page per report.

Every probe renders its page through :func:`render_page` with a :class:`ReportHeader`,
so all reports share one look, one header and one escaping policy. Pages render from
saved result files only; nothing here imports torch or a model.
"""

from sdxl_probe.report.figures import figure_to_data_uri, new_figure
from sdxl_probe.report.render import ReportHeader, make_environment, render_page, render_string

__all__ = [
    "ReportHeader",
    "figure_to_data_uri",
    "make_environment",
    "new_figure",
    "render_page",
    "render_string",
]
