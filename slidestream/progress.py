"""Progress bars shared by the commands (rich, on stderr so --json output stays clean)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tiling import Piece, PieceKind


@contextmanager
def piece_progress(console: Console, description: str, shards: int) -> Iterator[Callable[[Piece], None]]:
    """A bar over the shards of one image, with bytes written; yields the per-piece callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=shards)
        written = 0

        def advance(piece: Piece) -> None:
            nonlocal written
            written += len(piece.data)
            progress.update(task, advance=1 if piece.kind is PieceKind.SHARD else 0, description=f"{description} ({written / 1e6:.1f} MB)")

        yield advance
