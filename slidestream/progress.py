"""Progress bars shared by the commands (rich, on stderr so --json output stays clean)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tiling import Piece, PieceKind


@contextmanager
def piece_progress(console: Console, description: str, shards: int) -> Iterator[Callable[[Piece], None]]:
    """A bar over the shards of one image, with bytes written; yields the per-piece callback. Shards that turn out
    empty are never written: at the end they count as done, so the bar ends full, at `shards`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=shards)
        written, done = 0, 0

        def advance(piece: Piece) -> None:
            nonlocal written, done
            written += len(piece.data)
            done += piece.kind is PieceKind.SHARD
            progress.update(task, completed=done, description=f"{description} ({written / 1e6:.1f} MB)")

        yield advance
        empty = f", {shards - done} empty" if shards > done else ""
        progress.update(task, completed=shards, description=f"{description} ({written / 1e6:.1f} MB{empty})")
