"""A/B caption studies: spec, runner and launchers, metrics, statistics, report (``sdxl-probe study``)."""
