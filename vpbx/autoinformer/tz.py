"""The recipient's time zone (autoinformer.md §3.3) and the numbering table it comes from.

Russian numbers: the platform's numbering table (``NumberingRange``, the regulator's ABC/DEF ranges with
their region and its IANA zone) by ``first ≤ number ≤ last``; mobile DEF codes need it, since phonenumbers
knows no zone for them. Any other number, or a Russian one outside the table: phonenumbers' zones when there
is exactly one (geographic ABC codes, single-zone countries). Otherwise None, meaning the domain's zone.

The table is loaded from the regulator's (Rossvyaz's) published CSV files («ABC-3xx», «ABC-4xx», «ABC-8xx»,
«DEF-9xx»): header ``АВС/ DEF;От;До;Емкость;Оператор;Регион`` plus optional extra columns (newer files add
``ИНН``), in Windows-1251 or UTF-8. Each row's region name is matched leniently to an IANA zone by
``REGION_ZONES``; loading a file replaces the ranges of the codes it holds.
"""

from __future__ import annotations

import bisect
import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import phonenumbers
from phonenumbers import timezone as pn_timezone
from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.store.models import NumberingRange

RU_LENGTH = 11  # 7 + 3-digit ABC/DEF code + 7-digit subscriber part
SUBSCRIBER_DIGITS = 7
INSERT_BATCH = 5000
MAX_FILE_BYTES = 200 * 1024 * 1024  # the largest regulator's file (ABC-4xx) is about 40 MB
UNKNOWN_ZONE = "Etc/Unknown"
PN_PREFIX = 9  # phonenumbers.tzdata.TIMEZONE_LONGEST_PREFIX

# Region name stem → IANA zone, checked in order: the first stem found in the (lower-cased, ё → е,
# punctuation → space) region name wins, so more specific stems come before the ones they contain
# («ямало ненец» before «ненец», «томск» before «омск», «сахалин» before «саха»).
REGION_ZONES: tuple[tuple[str, str], ...] = (
    # UTC+2
    ("калининград", "Europe/Kaliningrad"),
    # UTC+4 and the Volga zones (before the generic UTC+3 ones)
    ("самарск", "Europe/Samara"),
    ("удмурт", "Europe/Samara"),
    ("ульянов", "Europe/Ulyanovsk"),
    ("саратов", "Europe/Saratov"),
    ("астрахан", "Europe/Astrakhan"),
    ("волгоград", "Europe/Volgograd"),
    ("кировск", "Europe/Kirov"),
    ("крым", "Europe/Simferopol"),
    ("севастопол", "Europe/Simferopol"),
    # UTC+5
    ("ямало ненец", "Asia/Yekaterinburg"),
    ("ханты", "Asia/Yekaterinburg"),
    ("югра", "Asia/Yekaterinburg"),
    ("тюмен", "Asia/Yekaterinburg"),
    ("свердлов", "Asia/Yekaterinburg"),
    ("екатеринбург", "Asia/Yekaterinburg"),
    ("челябин", "Asia/Yekaterinburg"),
    ("курган", "Asia/Yekaterinburg"),
    ("оренбург", "Asia/Yekaterinburg"),
    ("башкор", "Asia/Yekaterinburg"),
    ("коми пермяц", "Asia/Yekaterinburg"),
    ("пермск", "Asia/Yekaterinburg"),
    ("пермь", "Asia/Yekaterinburg"),
    # UTC+7 (before «омск»: «томск» contains it)
    ("томск", "Asia/Tomsk"),
    ("новосибир", "Asia/Novosibirsk"),
    ("кемеров", "Asia/Novokuznetsk"),
    ("кузбасс", "Asia/Novokuznetsk"),
    ("алтай", "Asia/Barnaul"),
    ("красноярск", "Asia/Krasnoyarsk"),
    ("таймыр", "Asia/Krasnoyarsk"),
    ("эвенк", "Asia/Krasnoyarsk"),
    ("тыва", "Asia/Krasnoyarsk"),
    ("тува", "Asia/Krasnoyarsk"),
    ("хакас", "Asia/Krasnoyarsk"),
    # UTC+6
    ("омск", "Asia/Omsk"),
    # UTC+8
    ("иркутск", "Asia/Irkutsk"),
    ("усть орд", "Asia/Irkutsk"),
    ("бурят", "Asia/Irkutsk"),
    # UTC+9
    ("забайкал", "Asia/Chita"),
    ("читинск", "Asia/Chita"),
    ("агинск", "Asia/Chita"),
    ("амурск", "Asia/Yakutsk"),
    ("сахалин", "Asia/Sakhalin"),  # UTC+11, before «саха»
    ("саха", "Asia/Yakutsk"),
    ("якут", "Asia/Yakutsk"),
    # UTC+10
    ("приморск", "Asia/Vladivostok"),
    ("хабаровск", "Asia/Vladivostok"),
    ("еврейск", "Asia/Vladivostok"),
    # UTC+11
    ("магадан", "Asia/Magadan"),
    # UTC+12
    ("камчат", "Asia/Kamchatka"),
    ("коряк", "Asia/Kamchatka"),
    ("чукот", "Asia/Anadyr"),
    # UTC+3
    ("москв", "Europe/Moscow"),
    ("московск", "Europe/Moscow"),
    ("санкт петербург", "Europe/Moscow"),
    ("ленинград", "Europe/Moscow"),
    ("белгород", "Europe/Moscow"),
    ("брянск", "Europe/Moscow"),
    ("владимир", "Europe/Moscow"),
    ("воронеж", "Europe/Moscow"),
    ("иванов", "Europe/Moscow"),
    ("калуж", "Europe/Moscow"),
    ("костром", "Europe/Moscow"),
    ("курск", "Europe/Moscow"),
    ("липецк", "Europe/Moscow"),
    ("орлов", "Europe/Moscow"),
    ("рязан", "Europe/Moscow"),
    ("смолен", "Europe/Moscow"),
    ("тамбов", "Europe/Moscow"),
    ("твер", "Europe/Moscow"),
    ("тульск", "Europe/Moscow"),
    ("ярослав", "Europe/Moscow"),
    ("архангел", "Europe/Moscow"),
    ("ненец", "Europe/Moscow"),
    ("вологод", "Europe/Moscow"),
    ("мурман", "Europe/Moscow"),
    ("новгород", "Europe/Moscow"),
    ("нижегород", "Europe/Moscow"),
    ("псков", "Europe/Moscow"),
    ("карел", "Europe/Moscow"),
    ("коми", "Europe/Moscow"),
    ("марий", "Europe/Moscow"),
    ("мордов", "Europe/Moscow"),
    ("татарстан", "Europe/Moscow"),
    ("чуваш", "Europe/Moscow"),
    ("пензен", "Europe/Moscow"),
    ("ростов", "Europe/Moscow"),
    ("краснодар", "Europe/Moscow"),
    ("адыг", "Europe/Moscow"),
    ("калмык", "Europe/Moscow"),
    ("ставропол", "Europe/Moscow"),
    ("дагестан", "Europe/Moscow"),
    ("ингуш", "Europe/Moscow"),
    ("чечен", "Europe/Moscow"),
    ("кабардин", "Europe/Moscow"),
    ("карачаев", "Europe/Moscow"),
    ("осети", "Europe/Moscow"),
    ("донецк", "Europe/Moscow"),
    ("луганск", "Europe/Moscow"),
    ("запорож", "Europe/Moscow"),
    ("херсон", "Europe/Moscow"),
)

T = TypeVar("T")

_NOT_LETTERS = re.compile(r"[^a-zа-я0-9]+")


def _simplify(name: str) -> str:
    return " " + _NOT_LETTERS.sub(" ", name.lower().replace("ё", "е")).strip() + " "


def region_zone(region: str) -> str | None:
    """The IANA zone of a region as the regulator spells it («Новосибирская обл.», «Республика Саха
    /Якутия/», «г. Москва и Московская область»); None for a name it does not know."""
    # newer files write "region|district"; the region comes first
    text = _simplify(region.split("|", 1)[0])
    for stem, zone in REGION_ZONES:
        if stem in text:
            return zone
    return None


# --- lookups -------------------------------------------------------------------------------------------


def phonenumbers_zone(digits: str) -> str | None:
    """The zone phonenumbers gives a number when it gives exactly one."""
    try:
        num = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None
    zones = [z for z in pn_timezone.time_zones_for_number(num) if z != UNKNOWN_ZONE]
    return zones[0] if len(zones) == 1 else None


class ZoneLookup:
    """Recipient zones for many numbers in one session: every range found, and every gap between ranges,
    is remembered, so a list of 100 000 numbers from a few ranges costs a few queries. phonenumbers'
    answers are remembered per prefix of its longest zone prefix (9 digits) and length."""

    def __init__(self, s: AsyncSession) -> None:
        self._s = s
        self._starts: list[str] = []
        self._spans: list[tuple[str, str, str | None, bool]] = []  # (first, last, zone, in the table)
        self._pn: dict[tuple[str, int], str | None] = {}

    async def zone(self, digits: str) -> str | None:
        """The IANA zone of a normalised number, None = the domain's zone."""
        if len(digits) == RU_LENGTH and digits.startswith("7"):
            zone = await self._table(digits)
            if zone:
                return zone
        key = (digits[:PN_PREFIX], len(digits))
        if key not in self._pn:
            self._pn[key] = phonenumbers_zone(digits)
        return self._pn[key]

    async def _table(self, digits: str) -> str | None:
        i = bisect.bisect_right(self._starts, digits) - 1
        if i >= 0 and self._spans[i][0] <= digits <= self._spans[i][1]:
            return self._spans[i][2]
        before = (
            await self._s.execute(
                select(NumberingRange.first, NumberingRange.last, NumberingRange.timezone)
                .where(NumberingRange.first <= digits)
                .order_by(NumberingRange.first.desc())
                .limit(1)
            )
        ).first()
        if before is not None and digits <= before.last:
            zone: str | None = before.timezone
            self._remember(before.first, before.last, zone, True)
            return zone
        after = await self._s.scalar(
            select(func.min(NumberingRange.first)).where(NumberingRange.first > digits)
        )
        low = _next(before.last) if before is not None else "7" + "0" * (RU_LENGTH - 1)
        high = _prev(after) if after is not None else "7" + "9" * (RU_LENGTH - 1)
        self._remember(max(low, "7" + "0" * (RU_LENGTH - 1)), high, None, False)
        return None

    def _remember(self, first: str, last: str, zone: str | None, listed: bool) -> None:
        j = bisect.bisect_left(self._starts, first)
        self._starts.insert(j, first)
        self._spans.insert(j, (first, last, zone, listed))


def _next(number: str) -> str:
    return str(int(number) + 1).zfill(len(number))


def _prev(number: str) -> str:
    return str(int(number) - 1).zfill(len(number))


async def recipient_zone(s: AsyncSession, digits: str) -> str | None:
    """The recipient's IANA zone for one normalised number; None = the domain's zone."""
    return await ZoneLookup(s).zone(digits)


# --- the regulator's files -----------------------------------------------------------------------------


class NumberingFileError(ValueError):
    """A numbering file that cannot be read; nothing was loaded. The message names the line."""


@dataclass(frozen=True, slots=True)
class ParsedRange:
    first: str
    last: str
    operator: str
    region: str
    timezone: str | None


@dataclass(slots=True)
class LoadResult:
    ranges: int = 0
    codes: list[str] = field(default_factory=list)
    unmatched_regions: dict[str, int] = field(default_factory=dict)  # region → ranges without a zone


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1251 (the regulator's usual encoding)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1251")


def parse_numbering(data: bytes) -> list[ParsedRange]:
    """The ranges of one regulator's file; ``NumberingFileError`` names the first bad line."""
    if len(data) > MAX_FILE_BYTES:
        raise NumberingFileError(f"the file is over {MAX_FILE_BYTES // (1024 * 1024)} MB")
    text = decode_text(data)
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(";") else ";"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[ParsedRange] = []
    for line_no, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip():
            continue
        if line_no == 1 and not row[0].strip().isdigit():
            continue  # the header
        if len(row) < 6:
            raise NumberingFileError(f"line {line_no}: expected 6 columns, got {len(row)}")
        code, lo, hi = row[0].strip(), row[1].strip(), row[2].strip()
        if not (len(code) == 3 and code.isdigit()):
            raise NumberingFileError(f"line {line_no}, column 1: {code!r} is not a 3-digit code")
        for col, part in ((2, lo), (3, hi)):
            if not (part.isdigit() and len(part) <= SUBSCRIBER_DIGITS):
                raise NumberingFileError(f"line {line_no}, column {col}: {part!r} is not a subscriber number")
        first = "7" + code + lo.zfill(SUBSCRIBER_DIGITS)
        last = "7" + code + hi.zfill(SUBSCRIBER_DIGITS)
        if last < first:
            raise NumberingFileError(f"line {line_no}: the range ends before it starts")
        operator, region = " ".join(row[4].split())[:255], " ".join(row[5].split())[:255]
        out.append(ParsedRange(first, last, operator, region, region_zone(region)))
    if not out:
        raise NumberingFileError("the file holds no ranges")
    return out


async def load_numbering(s: AsyncSession, data: bytes) -> LoadResult:
    """Replace the ranges of every code in ``data`` with the file's (the caller commits)."""
    ranges = parse_numbering(data)
    result = LoadResult()
    codes = sorted({r.first[1:4] for r in ranges})
    for chunk in _chunks(codes, 100):
        await s.execute(
            delete(NumberingRange).where(
                or_(
                    *(
                        and_(NumberingRange.first >= f"7{c}0000000", NumberingRange.first <= f"7{c}9999999")
                        for c in chunk
                    )
                )
            )
        )
    for batch in _chunks(ranges, INSERT_BATCH):
        await s.execute(
            insert(NumberingRange),
            [
                {
                    "first": r.first,
                    "last": r.last,
                    "operator": r.operator,
                    "region": r.region,
                    "timezone": r.timezone,
                }
                for r in batch
            ],
        )
    for r in ranges:
        if r.timezone is None:
            result.unmatched_regions[r.region] = result.unmatched_regions.get(r.region, 0) + 1
    result.ranges = len(ranges)
    result.codes = codes
    return result


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
