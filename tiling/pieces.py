"""The unit that flows from tiling/ to transfer/: one finished object of an OME-Zarr store."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PieceKind(StrEnum):
    """What a piece is, so transfer/ and the arrival manifest can treat it accordingly."""

    METADATA = "metadata"  # a zarr.json: must arrive before any chunk so readers can open the image
    SHARD = "shard"  # one shard object of one pyramid level
    SIDECAR = "sidecar"  # small JSON beside the image (tissue mask, triage, ...)


@dataclass(frozen=True)
class Piece:
    """One complete object, produced once and never modified afterwards.

    `key` is relative to the image root (e.g. ``"zarr.json"``, ``"0/c/0/3/5"``); `data` holds its exact bytes.
    `level` is the pyramid level for shards (None otherwise); `tissue` says whether the shard holds tissue;
    `priority` is the position in the send plan (lower goes first).
    """

    key: str
    data: bytes
    kind: PieceKind
    level: int | None = None
    tissue: bool = True
    priority: int = 0
