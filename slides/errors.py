"""One base class for every error slidestream reports to a user.

Each subclass also inherits the matching built-in type, so callers that catch `OSError` or `ValueError` keep working.
The message of an instance is a complete one-line explanation (it names the file and the problem).
"""

import re


class SlidestreamError(Exception):
    """Base of all errors that the CLI turns into one line on stderr and exit code 2."""


class SlideNotFoundError(SlidestreamError, FileNotFoundError):
    """The path does not exist."""


class UnsupportedSlideError(SlidestreamError, ValueError):
    """The file is not a slide that any reader understands (or its header is not sane)."""


class CorruptSlideError(SlidestreamError, OSError):
    """The slide opened, but some of its image data cannot be read."""


# C0 and C1 controls, DEL, and the format characters that reorder or break a line on a terminal (bidi overrides and
# isolates, line and paragraph separators): what a hostile document could use to forge or hide a line
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` safe to print, log or write as one line of UTF-8: control characters become visible escapes (\\n,
    \\x1b, \\u202e), so text from the store or a file name can neither forge a line nor move the cursor; a file name
    that is not valid UTF-8 reaches Python with surrogate escapes (os.fsdecode), which become visible \\udcXX."""
    escaped = _CONTROLS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def first_line(error: object) -> str:
    """The first line of a library's message (torch, libtiff and tifffile write many; at most 300 characters), else
    the error's type."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def one_line(error: BaseException) -> str:
    """An error as one line for a log or a report row: ours are one line already; anything else gets its type and
    first line."""
    if isinstance(error, SlidestreamError):
        return str(error)
    text = first_line(error)
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text
