"""User-facing errors: the CLI prints their message without a traceback."""

from __future__ import annotations


class ProbeError(Exception):
    """An error caused by the user's input (a file, a value, a setting).

    The message must name what was found, what was expected, and how to fix it.
    The CLI catches this type and prints only the message, exiting with code 2.
    """


class ConfigError(ProbeError):
    """A config file or value is invalid."""


class ModelLoadError(ProbeError):
    """A checkpoint or model folder cannot be loaded as SDXL."""


class DatasetError(ProbeError):
    """A dataset folder, TOML or caption file cannot be read."""
