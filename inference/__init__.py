"""inference: AI triage of slides: tile-model heatmaps, a slide score and QC, computed with Dask.

Edge (a slide before sending): `analyze_slide(..., AnalyzeOptions(sample=80))` and `priority_from_heatmap`.
Receiving side (a case on S3 while it arrives): `analyze_case` (one pass), `follow_case` (until complete).
Many slides: `analyze_batch`. QC without the model: `qc_slide`.
"""

from inference.batch import analyze_batch
from inference.errors import InferenceError
from inference.heatmap import Heatmap, priority_from_heatmap
from inference.model import CAPRICORN, ModelSpec, TileModel, load_model
from inference.pipeline import AnalyzeOptions, CaseNotReadyError, analyze_case, analyze_slide, follow_case, qc_slide
from inference.scoring import ModelRef, Runner

__all__ = [
    "CAPRICORN",
    "AnalyzeOptions",
    "CaseNotReadyError",
    "Heatmap",
    "InferenceError",
    "ModelRef",
    "ModelSpec",
    "Runner",
    "TileModel",
    "analyze_batch",
    "analyze_case",
    "analyze_slide",
    "follow_case",
    "load_model",
    "priority_from_heatmap",
    "qc_slide",
]
