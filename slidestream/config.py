"""One configuration for every command: flags > environment > config file > built-in defaults.

The config file is TOML with one table per command (`[send]`, `[watch]`, `[serve]`, `[analyze]`, ...) whose keys are
the commands' option names with underscores; a `[defaults]` table applies to every command that has the option.
Environment variables follow the pattern SLIDESTREAM_<COMMAND>_<OPTION> (e.g. SLIDESTREAM_SEND_ENDPOINT_URL); AWS
credentials come only from the standard AWS chain (AWS_PROFILE, ~/.aws, environment, instance role), never from here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from slides import SlidestreamError

ENV_PREFIX = "SLIDESTREAM"


class ConfigError(SlidestreamError, ValueError):
    """The configuration file cannot be read or has the wrong shape."""


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "slidestream" / "config.toml"


def load_config(path: Path | None) -> dict[str, dict[str, Any]]:
    """click's `default_map` from the config file (an explicit path must exist; the default one may not)."""
    explicit = path is not None
    path = path or default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: config file not found")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config: {error}") from None
    if any(key in data for key in ("aws_access_key_id", "aws_secret_access_key")) or any(
        isinstance(table, dict) and any(k.startswith("aws_secret") for k in table) for table in data.values()
    ):
        raise ConfigError(f"{path}: credentials do not belong in the slidestream config; use an AWS profile")
    defaults = data.pop("defaults", {})
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{name}' must be a table like [{name}]")
    commands = set(data) | {"send", "watch", "serve", "analyze", "convert", "demo", "resume", "info"}
    return {command: {**defaults, **data.get(command, {})} for command in commands}
