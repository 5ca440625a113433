"""Store documents are untrusted input: decoded with limits, then read field by field into types with bounds.

Ninety hospitals write to the store over flaky links, and any one may be buggy or hostile. `load` refuses a
document before it can cost memory or time (size, nesting, NaN, lone surrogates, duplicate keys); `Fields` reads
what a format promises (a type, a range, a length, a pattern) and raises `DocumentError` naming the field, so the
reader shows that one document as "unreadable: reason" and carries on with the rest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from caseformat.errors import DocumentError

DOCUMENT_LIMIT = 256 * 1024  # bytes: the largest report with 20,000-character fields is ~90 KB
DEPTH_LIMIT = 12
STRINGS_LIMIT = 20_000  # characters of any one string unless a field says less
EARLIEST_YEAR, LATEST_YEAR = 2000, 2200
T = TypeVar("T")
_ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")


def load(data: bytes, what: str, limit: int = DOCUMENT_LIMIT) -> dict[str, Any]:
    """The JSON object in `data`, or `DocumentError`: larger than `limit`, not UTF-8, not JSON, not an object,
    nested deeper than DEPTH_LIMIT, with NaN or Infinity, a duplicate key or a string that is no text."""
    if len(data) > limit:
        raise DocumentError(f"{what}: {len(data):,} bytes, more than the {limit:,} a document may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentError(f"{what}: not UTF-8 text") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise DocumentError(f"{what}: nested too deeply") from None
    except ValueError as error:
        raise DocumentError(f"{what}: not JSON ({str(error).splitlines()[0][:120]})") from None
    if not isinstance(document, dict):
        raise DocumentError(f"{what}: expected a JSON object, found {_kind(document)}")
    for depth, value in _walk(document, 1):
        if depth > DEPTH_LIMIT:
            raise DocumentError(f"{what}: nested deeper than {DEPTH_LIMIT} levels")
        if isinstance(value, str) and not _is_text(value):
            raise DocumentError(f"{what}: holds a string that is not text (a lone surrogate)")
    return document


def dump(document: dict[str, Any]) -> bytes:
    """How every document is written: UTF-8 JSON, readable, no NaN."""
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False).encode()


class Fields:
    """Typed, bounded reads of one document's fields; each failure is a `DocumentError` naming document and field."""

    def __init__(self, document: Any, what: str) -> None:
        if not isinstance(document, dict):
            raise DocumentError(f"{what}: expected a JSON object, found {_kind(document)}")
        self.document, self.what = document, what

    def fail(self, name: str, expected: str) -> DocumentError:
        found = self.document.get(name, None) if name in self.document else "nothing"
        shown = found if found == "nothing" else _kind(found)
        return DocumentError(f"{self.what}: {name} must be {expected}, found {shown}")

    def _get(self, name: str, optional: bool) -> Any:
        value = self.document.get(name)
        if value is None and not optional:
            raise self.fail(name, "given")
        return value

    def text(self, name: str, limit: int = STRINGS_LIMIT, *, optional: bool = False, pattern: re.Pattern[str] | None = None,
             empty: bool = False) -> Any:
        """A string of at most `limit` characters (matching `pattern`); None where optional and absent."""
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit or (not value and not empty):
            raise self.fail(name, f"text of {'0' if empty else '1'}-{limit:,} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(name, f"text matching {pattern.pattern}")
        return value

    def checked(self, name: str, check: Callable[[str], str], *, optional: bool = False) -> Any:
        """A string that `check` accepts (an ID validator); its error becomes this document's."""
        value = self.text(name, 200, optional=optional)
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as error:
            raise DocumentError(f"{self.what}: {name}: {error}") from None

    def choice(self, name: str, choices: tuple[str, ...], *, optional: bool = False) -> Any:
        value = self._get(name, optional)
        if value is None:
            return None
        if value not in choices:
            raise self.fail(name, f"one of {', '.join(choices)}")
        return value

    def integer(self, name: str, low: int, high: int, *, optional: bool = False) -> Any:
        value = self._get(name, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(name, f"a whole number from {low} to {high:,}")
        return value

    def number(self, name: str, low: float, high: float, *, optional: bool = False) -> Any:
        value = self._get(name, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
            raise self.fail(name, f"a number from {low} to {high}")
        return value

    def boolean(self, name: str, *, optional: bool = False) -> Any:
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(name, "true or false")
        return value

    def time(self, name: str, *, optional: bool = False) -> Any:
        """An ISO 8601 time with its zone, years 2000-2200, as written (`parse_time` reads it)."""
        value = self.text(name, 40, optional=optional)
        if value is None:
            return None
        try:
            parse_time(value)
        except ValueError:
            raise self.fail(name, f"an ISO 8601 time with a zone, years {EARLIEST_YEAR}-{LATEST_YEAR}") from None
        return value

    def fields(self, name: str, *, optional: bool = False) -> Fields | None:
        """A nested object, read with the same checks (None where optional and absent)."""
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(name, "an object")
        return Fields(value, f"{self.what}: {name}")

    def items(self, name: str, limit: int, read: Callable[[Fields], T], *, optional: bool = False) -> list[T]:
        """A list of at most `limit` objects, each read by `read`."""
        value = self._get(name, optional)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(name, f"a list of at most {limit:,}")
        return [read(Fields(item, f"{self.what}: {name}[{index}]")) for index, item in enumerate(value)]

    def raw_list(self, name: str, limit: int, *, optional: bool = False) -> list[Any]:
        value = self._get(name, optional)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(name, f"a list of at most {limit:,}")
        return value


def parse_time(text: str) -> datetime:
    """A zone-aware time from `text` (ISO 8601 with Z or an offset), years 2000-2200; ValueError otherwise."""
    if not _ISO_TIME.fullmatch(text):
        raise ValueError(f"{text!r} is not an ISO 8601 time with a zone")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if not EARLIEST_YEAR <= moment.astimezone(UTC).year <= LATEST_YEAR:
        raise ValueError(f"{text!r} is outside {EARLIEST_YEAR}-{LATEST_YEAR}")
    return moment


def utc_now(now: datetime | None = None) -> str:
    """The one way documents write a time: UTC, milliseconds, "Z" (2026-12-05T17:30:01.123Z)."""
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return document


def _walk(value: Any, depth: int) -> Iterator[tuple[int, Any]]:
    """Every value with its nesting depth, without recursion (a document cannot exhaust the stack here)."""
    stack = [(depth, value)]
    while stack:
        depth, value = stack.pop()
        yield depth, value
        if isinstance(value, dict):
            stack.extend((depth + 1, key) for key in value)
            stack.extend((depth + 1, item) for item in value.values())
        elif isinstance(value, list):
            stack.extend((depth + 1, item) for item in value)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(type(value), "a number")
