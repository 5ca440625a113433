"""tiling: a slide becomes a sharded OME-Zarr pyramid (NGFF 0.5), produced piece by piece in send order."""

from tiling.local import OutputError, write_pieces
from tiling.pieces import Piece, PieceKind
from tiling.pyramid import ConvertOptions, LevelPlan, PyramidPlan, SendOrder, ShardTask, die_with_parent, plan_pyramid, produce
from tiling.tissue import TissueMask, detect_tissue

__all__ = [
    "ConvertOptions",
    "LevelPlan",
    "OutputError",
    "Piece",
    "PieceKind",
    "PyramidPlan",
    "SendOrder",
    "ShardTask",
    "TissueMask",
    "detect_tissue",
    "die_with_parent",
    "plan_pyramid",
    "produce",
    "write_pieces",
]
