"""The installed distribution's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("tether")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


__version__ = _installed_version()
