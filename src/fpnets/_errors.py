"""Errors shared by the configuration edge (the trainer's engine and the tasks' config sections)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that cannot be used (unknown key, wrong type, bad value)."""
