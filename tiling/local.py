"""Local output (an OME-Zarr directory, a DICOM series): published only once it is complete."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slides import SlidestreamError
from tiling.pieces import Piece


class OutputError(SlidestreamError, OSError):
    """The output cannot be written (exists, not writable, disk full)."""


@contextmanager
def published(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """A directory to write `out` into, published as `out` only once the block completes.

    Writes go to `OUT.partial/`, renamed to `OUT` after the last one, so a crash, a corrupt tile or a full disk
    never leaves something at `OUT` that looks finished; on any failure the partial directory is removed.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (use --overwrite to replace it)")
    partial = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        yield partial
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, SlidestreamError):
            raise
        raise OutputError(f"{out}: cannot write output: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_pieces(pieces: Iterable[Piece], out: Path, overwrite: bool = False, on_piece: Callable[[Piece], None] | None = None) -> int:
    """Write every piece under `out` (published only when complete, see `published`); returns bytes written."""
    written = 0
    with published(out, overwrite) as partial:
        for piece in pieces:
            path = partial / piece.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(piece.data)
            written += len(piece.data)
            if on_piece is not None:
                on_piece(piece)
    return written
