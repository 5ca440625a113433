"""tiling: a slide becomes a sharded OME-Zarr pyramid (NGFF 0.5), produced piece by piece in send order."""

from tiling.local import OutputError, write_pieces
from tiling.pieces import Piece, PieceKind
from tiling.plan import ConvertOptions, LevelPlan, PyramidPlan, ShardTask, plan_pyramid
from tiling.pyramid import die_with_parent, produce
from tiling.send_order import SendOrder
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
