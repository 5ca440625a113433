"""`slidestream keys`: the centre's signing key, and the public keys a station trusts.

At the centre, `keys show` creates the key on first use and prints its ID; `keys export FILE` writes the public keys
a station needs (hand the file over at enrolment, like a certificate); `keys rotate` replaces the private key (the
old one is destroyed; its public key stays trusted so every document it signed still verifies). At a station,
`keys trust FILE` installs the centre's public keys where `watch` and `status` look for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stdout = Console(highlight=False, soft_wrap=True)
keys = typer.Typer(no_args_is_help=True, help="The centre's signing key (centre) and the public keys a station trusts (station).")

KeyDir = Annotated[Path | None, typer.Option("--key-dir", help="The centre's key folder (default $XDG_STATE_HOME/slidestream).")]
StateDir = Annotated[Path | None, typer.Option("--state-dir", help="The station's state folder (default $XDG_STATE_HOME/slidestream).")]


def key_folder(key_dir: Path | None) -> Path:
    """Where the centre's key and its public keys file live: --key-dir, else the state folder."""
    from transfer.journal import default_state_dir

    return key_dir if key_dir is not None else default_state_dir()


@keys.command("show")
def show(key_dir: KeyDir = None) -> None:
    """Print the centre's signing key ID and the keys its readers trust (creates the key on first use)."""
    from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey, TrustedKeys

    folder = key_folder(key_dir)
    key = SigningKey.load_or_create(folder)
    trusted = TrustedKeys.load(folder / PUBLIC_KEYS_FILE)
    stdout.print(f"signing key: {key.id} ({folder})")
    stdout.print(f"trusted: {', '.join(sorted(trusted.keys))} ({folder / PUBLIC_KEYS_FILE})")


@keys.command("export")
def export(out: Annotated[Path, typer.Argument(help="Where to write the public keys file for stations.")], key_dir: KeyDir = None) -> None:
    """Write the public keys a station needs to verify the centre (every trusted key: rotation keeps old reports valid)."""
    from caseformat.signing import PUBLIC_KEYS_FILE, KeyFileError, SigningKey, TrustedKeys

    folder = key_folder(key_dir)
    SigningKey.load_or_create(folder)
    data = (folder / PUBLIC_KEYS_FILE).read_bytes()
    try:
        out.write_bytes(data)
    except OSError as error:
        raise KeyFileError(f"{out}: cannot write it: {error.strerror or error}") from None
    stdout.print(f"{out}: {len(TrustedKeys.load(out).keys)} public key(s); give it to each station (`slidestream keys trust FILE`)")


@keys.command("rotate")
def rotate(key_dir: KeyDir = None) -> None:
    """A new signing key; the old private key is destroyed, its public key stays trusted. Export to stations again."""
    from caseformat.signing import PRIVATE_KEY_FILE, SigningKey

    folder = key_folder(key_dir)
    old = SigningKey.load_or_create(folder)
    (folder / PRIVATE_KEY_FILE).unlink()
    new = SigningKey.load_or_create(folder)
    stdout.print(f"signing key: {new.id} (was {old.id}, still trusted); run `slidestream keys export` for the stations")


@keys.command("trust")
def trust(centre_keys: Annotated[Path, typer.Argument(help="The public keys file the centre exported.")], state_dir: StateDir = None) -> None:
    """At a station: trust the centre's public keys (watch and status verify every report and request with them)."""
    from caseformat.signing import PUBLIC_KEYS_FILE, TrustedKeys
    from caseformat.signing import trust as add_trusted

    folder = key_folder(state_dir)
    for key in TrustedKeys.load(centre_keys).keys.values():
        add_trusted(folder / PUBLIC_KEYS_FILE, key)
    stdout.print(f"{folder / PUBLIC_KEYS_FILE}: trusts {', '.join(sorted(TrustedKeys.load(folder / PUBLIC_KEYS_FILE).keys))}")
