"""One exception root for uxbseg, with subclasses for bad data and bad configuration."""

from __future__ import annotations

__all__ = ["BadDataError", "ConfigError", "UXBError"]


class UXBError(Exception):
    """Root of every error uxbseg raises on purpose (the CLI turns these into exit code 1)."""


class BadDataError(UXBError):
    """An input file is missing, unreadable or holds values we cannot use."""


class ConfigError(UXBError):
    """A configuration key or value is invalid."""
