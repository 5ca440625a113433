"""One base class for every error slidestream reports to a user.

Each subclass also inherits the matching built-in type, so callers that catch `OSError` or `ValueError` keep working.
The message of an instance is a complete one-line explanation (it names the file and the problem).
"""


class SlidestreamError(Exception):
    """Base of all errors that the CLI turns into one line on stderr and exit code 2."""


class SlideNotFoundError(SlidestreamError, FileNotFoundError):
    """The path does not exist."""


class UnsupportedSlideError(SlidestreamError, ValueError):
    """The file is not a slide that any reader understands (or its header is not sane)."""


class CorruptSlideError(SlidestreamError, OSError):
    """The slide opened, but some of its image data cannot be read."""


def printable(text: str) -> str:
    """`text` safe to print or write as UTF-8: a file name that is not valid UTF-8 reaches Python with surrogate
    escapes (os.fsdecode), which would make every print or log write fail; they become visible \\udcXX escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(error: BaseException) -> str:
    """An error as one line for a log or a report row: ours are one line already; anything else gets its type and
    first line."""
    if isinstance(error, SlidestreamError):
        return str(error)
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
