"""Does a clinical context text (case.json's free text, which leaves the hospital) name the sidecar's patient?

Both sides are compared in a normal form, because a surgeon types what they see, not what the registry holds: an
identifier's digits without its prefix or separators ("7777123" for "MRN-7777123"), the birth date in any common
format ("03/02/1961", "3 Feb 61" for "1961-02-03"), a name in another case or without its accents ("Muller" for
"MÜLLER"). Name parts match whole words only, so a patient named TAN or ALI never refuses "distant" or "malignant".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date

from slides.errors import printable

LABELS = {"accession": "accession number", "patient_name": "patient name", "patient_id": "patient ID", "birth_date": "birth date"}
DIGITS, WORD, ALPHANUMERIC = re.compile(r"[0-9]+"), re.compile(r"[^\W\d_]+"), re.compile(r"[^\W_]+")
GAP = re.compile(r"[\s\-/._'’ʼ`]{1,3}")  # what may stand between the pieces of one identifier or name: "777-7123", "O'Brien"
TITLES = frozenset({"dr", "mr", "mrs", "ms", "mx", "miss", "prof", "jr", "sr", "ii", "iii", "iv"})  # never identifying alone
PARTICLES = frozenset({"al", "bin", "bint", "ben", "da", "de", "del", "della", "den", "der", "di", "do", "dos", "du", "el",
                       "ibn", "la", "le", "mac", "mc", "st", "ste", "van", "von"})  # fmt: skip
BASE_LETTERS = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ð": "d", "ı": "i", "ħ": "h", "ŧ": "t", "æ": "ae", "œ": "oe",
                              "þ": "th"})  # fmt: skip
NAME_PREFIX = 3  # letters: "Mc Donald", "O Brien", "Al Hassan" are one name part; longer words match on their own
MONTH = (r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
         r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?(?![^\W\d_])")  # fmt: skip
DAY, YEAR = r"(?P<day>[0-9]{1,2})(?:st|nd|rd|th)?", r"(?P<year>[0-9]{4}|[0-9]{2})(?![0-9])"
DATES = (  # (pattern, whether its first two numbers may be day/month or month/day)
    (re.compile(r"(?<![0-9])(?P<year>[0-9]{4})(?P<sep>[-/.])(?P<month>[0-9]{1,2})(?P=sep)(?P<day>[0-9]{1,2})(?![0-9])"), False),
    (re.compile(rf"(?<![0-9])(?P<day>[0-9]{{1,2}})(?P<sep>[-/.\s])(?P<month>[0-9]{{1,2}})(?P=sep){YEAR}"), True),
    (re.compile(r"(?<![0-9])(?P<year>[0-9]{4})(?P<month>[0-9]{2})(?P<day>[0-9]{2})(?![0-9])"), False),
    (re.compile(r"(?<![0-9])(?P<day>[0-9]{2})(?P<month>[0-9]{2})(?P<year>[0-9]{4})(?![0-9])"), True),
    (re.compile(rf"(?<![0-9]){DAY}[\s\-/.]*(?:of\s+)?{MONTH}[\s\-/.,]*{YEAR}"), False),
    (re.compile(rf"(?<![^\W\d_]){MONTH}[\s\-/.]*{DAY}[\s\-/.,]*{YEAR}"), False),
)
MONTHS = {name: number for number, name in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}

Found = tuple[str, int, int]  # how it matched, and where in the folded text


@dataclass(frozen=True)
class IdentityMention:
    """Where a context text names the patient: the identity field it matches, how, and the words as written there."""

    field: str
    kind: str
    written: str

    @property
    def label(self) -> str:
        return LABELS.get(self.field, self.field.replace("_", " "))

    @property
    def hint(self) -> str:
        """The words' first and last character: enough to find them in the text, too little to repeat the identity."""
        return printable(f"{self.written[0]}…{self.written[-1]}" if len(self.written) > 2 else f"{self.written[0]}…")


def identifying_piece(text: str, identity: Mapping[str, str]) -> IdentityMention | None:
    """The first piece of `text` that names the patient of `identity` (a sidecar's accession, patient_name,
    patient_id, birth_date), or None."""
    folded = Folded.of(text)
    for field, matcher in MATCHERS.items():
        value = identity.get(field, "").strip()
        if value and (found := matcher(folded.text, value)):
            kind, start, end = found
            return IdentityMention(field, kind, folded.written(start, end))
    return None


def fold(text: str) -> str:
    """The form both sides are compared in: NFKD and casefold without combining marks ("Müller" -> "muller"; the
    letters NFKD keeps whole, "Łukasz", "Søren", as their base letter too), any script's decimal digits as 0-9."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold()).translate(BASE_LETTERS)
    kept = (char for char in decomposed if not unicodedata.combining(char))
    return "".join(str(digit) if (digit := unicodedata.decimal(char, None)) is not None else char for char in kept)


@dataclass(frozen=True)
class Folded:
    """A text folded character by character, each folded character mapped back to the one it came from, so a match
    in the folded text can be shown as written."""

    text: str
    origin: tuple[int, ...]
    source: str

    @classmethod
    def of(cls, source: str) -> Folded:
        pairs = [(folded, index) for index, char in enumerate(source) for folded in fold(char)]
        return cls("".join(folded for folded, _ in pairs), tuple(index for _, index in pairs), source)

    def written(self, start: int, end: int) -> str:
        return self.source[self.origin[start] : self.origin[end - 1] + 1]


def runs(text: str, token: re.Pattern[str], longest: int, prefix: int | None = None) -> Iterator[tuple[int, int, str]]:
    """Every whole token of `text`, and every run of consecutive tokens apart by a GAP, joined (start, end, joined),
    up to `longest` characters; with `prefix`, a run only goes on while what it joined so far is that short."""
    tokens = list(token.finditer(text))
    for first, match in enumerate(tokens):
        joined, end = match.group(), match.end()
        yield match.start(), end, joined
        for following in tokens[first + 1 :]:
            if (prefix is not None and len(joined) > prefix) or len(joined) + len(following.group()) > longest:
                break
            if not GAP.fullmatch(text, end, following.start()):
                break
            joined, end = joined + following.group(), following.end()
            yield match.start(), end, joined


def identifier(text: str, value: str) -> Found | None:
    """An identifier's digit runs of 4 or more (as a whole run in the text, separators ignored, leading zeros too),
    or the whole identifier (case and separators ignored)."""
    value = fold(value)
    mine = {run for _, _, run in runs(value, DIGITS, len(value)) if len(run) >= 4}
    if mine:
        for start, end, run in runs(text, DIGITS, max(map(len, mine))):
            if any(run == digits or (len(digits.lstrip("0")) >= 4 and run.lstrip("0") == digits.lstrip("0")) for digits in mine):
                return "its digits", start, end
    whole = "".join(ALPHANUMERIC.findall(value))
    if len(whole) >= 3:
        for start, end, joined in runs(text, ALPHANUMERIC, len(whole)):
            if joined == whole:
                return "the whole identifier", start, end
    return None


@dataclass(frozen=True)
class Day:
    """A calendar date as written: a two-digit year stands for its year in any century."""

    year: int
    month: int
    day: int
    two_digit_year: bool

    def valid(self) -> bool:
        try:
            date(2000 if self.two_digit_year else self.year, self.month, self.day)  # 2000: a leap year, for 29 Feb
        except ValueError:
            return False
        return True

    def same(self, other: Day) -> bool:
        if (self.month, self.day) != (other.month, other.day):
            return False
        if self.two_digit_year or other.two_digit_year:
            return self.year % 100 == other.year % 100
        return self.year == other.year


def dates_in(text: str) -> Iterator[tuple[int, int, Day]]:
    """The dates a folded text holds in a common format (ISO, DD/MM/YYYY and MM/DD/YYYY: both readings, DD.MM.YYYY,
    YYYYMMDD, "3 Feb 1961", "Feb 3, 1961"; two-digit years too) as (start, end, date)."""
    for pattern, either_way in DATES:
        for match in pattern.finditer(text):
            day, month, year = match["day"], match["month"], match["year"]
            month_number = MONTHS[month[:3]] if month[0].isalpha() else int(month)
            readings = {(int(day), month_number), (month_number, int(day))} if either_way else {(int(day), month_number)}
            for day_number, month_of in readings:
                found = Day(int(year), month_of, day_number, len(year) == 2)
                if found.valid():
                    yield match.start(), match.end(), found


def birth_date(text: str, value: str) -> Found | None:
    """The birth date in any common format; one that does not read as a date is compared as an identifier where it
    has digits (a word such as "unknown" names nobody)."""
    born = [day for _, _, day in dates_in(fold(value))]
    if not born:
        return identifier(text, value) if DIGITS.search(fold(value)) else None
    return next((("a date", start, end) for start, end, day in dates_in(text) if any(day.same(mine) for mine in born)), None)


def name_pieces(name: str) -> frozenset[str]:
    """The name's parts of 2 letters or more (split on ^, comma, spaces, hyphens, apostrophes), and each ^- or
    comma-separated component joined ("O'BRIEN" -> "obrien", "brien"); a particle (van, al, de...) only where it is a
    component alone, a title (Dr, Jr) never."""
    pieces = set()
    for component in re.split(r"[\^,]+", fold(name)):
        parts = WORD.findall(component)
        pieces.add("".join(parts))
        pieces.update(part for part in parts if len(parts) == 1 or part not in PARTICLES)
    return frozenset(piece for piece in pieces if len(piece) >= 2 and piece not in TITLES)


def name_part(text: str, value: str) -> Found | None:
    """A part of the patient's name as a whole word (or words: "Mc Donald"), never inside another word."""
    pieces = name_pieces(value)
    if not pieces:
        return None
    words = runs(text, WORD, max(map(len, pieces)), NAME_PREFIX)
    return next((("a name part", start, end) for start, end, joined in words if joined in pieces), None)


MATCHERS: dict[str, Callable[[str, str], Found | None]] = {
    "accession": identifier,
    "patient_id": identifier,
    "birth_date": birth_date,
    "patient_name": name_part,
}
