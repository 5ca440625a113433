"""The centre's word, signed: reports, requests, their copies for stations, people records, annotations and the
audit log carry an Ed25519 signature by a key only the centre holds, and every reader verifies it.

A signature covers the document's canonical form (its JSON with sorted keys, no whitespace, UTF-8, without the
`signature` field) and names the key by ID, so keys can be rotated: readers trust a set of public keys (a PEM file
of one or more keys), the centre signs with its newest. The store holds no secret: a station with write access to
the store can delete or overwrite a document, but it cannot make a reader accept one the centre did not sign.

Files: the centre's private key (PEM, created 0600 in a 0700 folder, never leaves the centre) and the public keys
file readers trust (the centre's own, beside it; a station's, given at enrolment).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from caseformat.errors import CaseFormatError, SignatureError

SIGNATURE = "signature"
ALGORITHM = "Ed25519"
PRIVATE_KEY_FILE = "centre-signing-key.pem"
PUBLIC_KEYS_FILE = "centre-keys.pem"
_PEM_END = b"-----END PUBLIC KEY-----"


class KeyFileError(CaseFormatError, OSError):
    """A key file that cannot be read, written, or holds no key of the expected kind."""


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the document without its signature, sorted keys, no whitespace."""
    unsigned = {name: value for name, value in document.items() if name != SIGNATURE}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex digits of the SHA-256 of the raw public key: how a signature names its key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """The centre's private key: signs what the centre writes for others."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def id(self) -> str:
        return key_id(self.public)

    def sign(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with its signature (any earlier signature replaced)."""
        value = base64.b64encode(self.private.sign(canonical(document))).decode("ascii")
        return {**{name: item for name, item in document.items() if name != SIGNATURE},
                SIGNATURE: {"alg": ALGORITHM, "key": self.id, "value": value}}  # fmt: skip

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as error:
            raise KeyFileError(f"{path}: cannot read the centre's signing key: {error.strerror or error}") from None
        except ValueError:
            raise KeyFileError(f"{path}: not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, folder: Path) -> SigningKey:
        """The centre's key in `folder` (PRIVATE_KEY_FILE), created on first use, private from its first byte; its
        public key is added to the folder's PUBLIC_KEYS_FILE, which the centre's own readers trust."""
        path = folder / PRIVATE_KEY_FILE
        try:
            private_folder(folder)
            key = cls.generate()
            pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                file.write(pem)
        except FileExistsError:
            key = cls.load(path)
        except OSError as error:
            raise KeyFileError(f"{path}: cannot create the centre's signing key: {error.strerror or error}") from None
        trust(folder / PUBLIC_KEYS_FILE, key.public)
        return key


class TrustedKeys:
    """The public keys a reader accepts signatures from, by ID (the centre's current and earlier keys)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self.keys = {key_id(key): key for key in keys}

    @classmethod
    def load(cls, path: Path) -> TrustedKeys:
        """The keys of a PEM file of one or more public keys; `KeyFileError` when it holds none."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise KeyFileError(f"{path}: cannot read the centre's public keys: {error.strerror or error}") from None
        keys = []
        for block in data.split(_PEM_END)[:-1]:
            try:
                key = serialization.load_pem_public_key(block + _PEM_END + b"\n")
            except ValueError:
                raise KeyFileError(f"{path}: holds something that is not a PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(f"{path}: holds a key that is not Ed25519")
            keys.append(key)
        if not keys:
            raise KeyFileError(f"{path}: holds no public key")
        return cls(keys)

    def verify(self, document: dict[str, Any], what: str) -> dict[str, Any]:
        """`document` if the centre signed it as it is; `SignatureError` naming `what` otherwise."""
        signature = document.get(SIGNATURE)
        if not isinstance(signature, dict):
            raise SignatureError(f"{what}: not signed by the centre; refused")
        named = signature.get("key")
        key = self.keys.get(named) if isinstance(named, str) else None
        if key is None or signature.get("alg") != ALGORITHM:
            raise SignatureError(f"{what}: signed by a key this reader does not trust ({str(named)[:16]!r}); refused")
        try:
            value = base64.b64decode(str(signature.get("value")), validate=True)
            key.verify(value, canonical(document))
        except (ValueError, InvalidSignature):
            raise SignatureError(f"{what}: its signature does not match its content (changed after signing); refused") from None
        return document


def trust(path: Path, public: Ed25519PublicKey) -> None:
    """Add `public` to the PEM file of trusted keys at `path` (kept as it is when already there)."""
    known = TrustedKeys.load(path).keys if path.exists() else {}
    if key_id(public) in known:
        return
    try:
        private_folder(path.parent)
        with open(path, "ab") as file:
            file.write(public_pem(public))
    except OSError as error:
        raise KeyFileError(f"{path}: cannot write the centre's public keys: {error.strerror or error}") from None


def private_folder(folder: Path) -> Path:
    """`folder`, created 0700 where it is new: state folders hold identity and keys."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder
