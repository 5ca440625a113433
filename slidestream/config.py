"""One configuration for every command: flags > environment > config file > built-in defaults.

The config file is TOML with one table per command (`[send]`, `[watch]`, `[serve]`, `[analyze]`, ...) whose keys are
the commands' option names with underscores; a `[defaults]` table applies to every command that has the option.
A table or key no command knows is an error naming it (with the nearest valid name), never silently ignored: a
mistyped `setle = 20` would otherwise leave the default in force without a word.
A centre's models are chosen here like any option: `[hub]` (or `[analyze]`, or `[defaults]` for both)
`models = ["colon-crc", "skin-bcc"]` is its routing table (`--model`, repeated): model packages, each a folder or a name
in the centre's models folder (`slidestream models`), tried in that order (`inference.routing`).
The viewer's sign-in through the centre's directory is the one table that is not a command's: `[viewer.oidc]`
(issuer, client_id, groups = {"pathologists" = "pathologist"}, and optionally groups_claim, scopes; the client secret
from $SLIDESTREAM_OIDC_SECRET, or client_secret here), which `serve` finds in its defaults under `OIDC_TABLE`.
What the hospital's interface team names for its systems goes in `[watch.hl7]` (MSH-3 to MSH-6, MSH-11 and PID-3's
assigning authority: `hospital.hl7.Routing`'s fields) and `[watch.fhir]` (the FHIR server's profile:
`hospital.fhir.Profile`'s fields), which `watch` finds in its defaults under `HL7_TABLE` and `FHIR_TABLE`.
Environment variables follow the pattern SLIDESTREAM_<COMMAND>_<OPTION> (e.g. SLIDESTREAM_SEND_ENDPOINT_URL); AWS
credentials come only from the standard AWS chain (AWS_PROFILE, ~/.aws, environment, instance role), never from here.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

ENV_PREFIX = "SLIDESTREAM"
DEFAULTS = "defaults"
VIEWER, OIDC = "viewer", "oidc"
OIDC_TABLE = "viewer.oidc"  # the key of [viewer.oidc] in serve's defaults: no option is named with a dot
OIDC_KEYS = {"issuer": str, "client_id": str, "client_secret": str, "groups": dict, "groups_claim": str, "scopes": str}
OIDC_REQUIRED = ("issuer", "client_id", "groups")
OIDC_ROLES = ("pathologist",)  # a station signs in by its own link: no directory group names its station
WATCH = "watch"
HL7_TABLE, FHIR_TABLE = "watch.hl7", "watch.fhir"  # keys of [watch.hl7] and [watch.fhir] in watch's defaults


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "slidestream" / "config.toml"


def options_of(group: click.Command) -> dict[str, set[str]]:
    """Every command's configurable parameter names (what click's `default_map` looks up)."""
    commands = getattr(group, "commands", {})
    return {name: {p.name for p in command.params if p.name and p.name != "help"} for name, command in commands.items()}


def load_config(path: Path | None, options: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    """click's `default_map` from the config file (an explicit path must exist; the default one may not), checked
    against `options` (command -> its parameter names)."""
    from slidestream.errors import ConfigError

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
    directory = _directory(path, data.pop(VIEWER, None))
    hospital = _hospital_tables(path, data.get(WATCH))
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{name}' must be a table like [{name}]")
        if name != DEFAULTS and name not in options:
            raise ConfigError(f"{path}: unknown section [{name}]{_nearest(name, [*options, DEFAULTS])}")
        valid = set().union(*options.values()) if name == DEFAULTS else options[name]
        for key in table:
            if key not in valid:
                raise ConfigError(f"{path}: unknown key '{key}' in [{name}]{_nearest(key, valid)}")
    defaults = data.pop(DEFAULTS, {})
    loaded = {
        command: {**{k: v for k, v in defaults.items() if k in names}, **data.get(command, {})} for command, names in options.items()
    }
    if directory is not None and "serve" in loaded:
        loaded["serve"][OIDC_TABLE] = directory
    if hospital and WATCH in loaded:
        loaded[WATCH] |= hospital
    return loaded


def _hospital_tables(path: Path, watch: object) -> dict[str, dict[str, str]]:
    """`[watch.hl7]` and `[watch.fhir]`, taken out of the `[watch]` table and checked: the fields of
    `hospital.hl7.Routing` and `hospital.fhir.Profile`, each a string."""
    from dataclasses import fields

    from slidestream.errors import ConfigError

    if not isinstance(watch, dict):
        return {}
    found = {}
    for name, key in (("hl7", HL7_TABLE), ("fhir", FHIR_TABLE)):
        table = watch.pop(name, None)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{name}' in [watch] must be the table [watch.{name}]")
        from hospital.fhir import Profile
        from hospital.hl7 import Routing

        valid = {field.name for field in fields(Routing if name == "hl7" else Profile)}
        for field_name, value in table.items():
            if field_name not in valid:
                raise ConfigError(f"{path}: unknown key '{field_name}' in [watch.{name}]{_nearest(field_name, valid)}")
            if not isinstance(value, str):
                raise ConfigError(f"{path}: [watch.{name}] {field_name} must be a string")
        found[key] = dict(table)
    return found


def _directory(path: Path, viewer: object) -> dict[str, Any] | None:
    """The `[viewer.oidc]` table, checked: known keys of the right types, the required ones, groups mapped to roles."""
    from slidestream.errors import ConfigError

    if viewer is None:
        return None
    if not isinstance(viewer, dict) or set(viewer) - {OIDC} or not isinstance(viewer.get(OIDC), dict):
        raise ConfigError(f"{path}: [viewer] holds only the table [viewer.oidc]")
    table: dict[str, Any] = viewer[OIDC]
    for key, value in table.items():
        if key not in OIDC_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}' in [viewer.oidc]{_nearest(key, OIDC_KEYS)}")
        if not isinstance(value, OIDC_KEYS[key]) or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"{path}: [viewer.oidc] {key} must be a {'table' if OIDC_KEYS[key] is dict else 'non-empty string'}")
    missing = [key for key in OIDC_REQUIRED if key not in table]
    if missing:
        raise ConfigError(f"{path}: [viewer.oidc] needs {', '.join(missing)}")
    for group, role in table["groups"].items():
        if role not in OIDC_ROLES:
            raise ConfigError(f"{path}: [viewer.oidc] groups: {group!r} maps to {role!r}; a directory group grants {' or '.join(OIDC_ROLES)}")
    return table


def _nearest(name: str, candidates: object) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)  # type: ignore[call-overload]
    return f" (did you mean '{close[0]}'?)" if close else ""
