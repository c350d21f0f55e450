"""Probes: one module per probe, each a pure core returning a result dataclass with save/load.

Report renderers live next to their probe as ``render_report(result_dir) -> Path`` (see
:func:`sdxl_probe.report.render_report`) and read saved result files only.
"""
