"""slides: open any whole-slide image, read its pixels and compressed tiles, and de-identify it."""

from slides.errors import CorruptSlideError, SlideNotFoundError, SlidestreamError, UnsupportedSlideError
from slides.slide import Level, RawTile, Slide, open_slide
from slides.written import fully_written

__all__ = [
    "CorruptSlideError",
    "Level",
    "RawTile",
    "Slide",
    "SlideNotFoundError",
    "SlidestreamError",
    "UnsupportedSlideError",
    "fully_written",
    "open_slide",
]
