"""The CLI's own errors, apart from the commands: defining them loads `slides` (numpy, openslide), which
`slidestream --help` must not pay for, so the commands import this module only when they raise."""

from __future__ import annotations

from slides import SlidestreamError


class ConfigError(SlidestreamError, ValueError):
    """The configuration file cannot be read, has the wrong shape, or names an option no command has."""


class ServeError(SlidestreamError, OSError):
    """The server cannot start (port taken, bad TLS files, a store it cannot serve)."""


class DemoError(SlidestreamError, RuntimeError):
    """The demo cannot run here (no sample slide, no S3 server package, port taken)."""
