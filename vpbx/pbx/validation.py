"""Field checks shared by the directory services; errors collect per field and raise once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from vpbx.errors import FieldError, ValidationFailed
from vpbx.pbx.numbering import to_e164

T = TypeVar("T")

PIN_RE = re.compile(r"[0-9]{2,6}")
LOGIN_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def N_(msgid: str) -> str:
    """Marks a message for the catalog; the cabinet translates it when it shows the error."""
    return msgid


@dataclass
class Check:
    errors: list[FieldError] = field(default_factory=list)

    def add(self, field_name: str, msgid: str, **params: object) -> None:
        self.errors.append(FieldError(field_name, msgid, params))

    def has(self, field_name: str) -> bool:
        return any(e.field == field_name for e in self.errors)

    def done(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)

    def text(self, name: str, value: str, *, max_len: int, required: bool = True) -> str:
        value = value.strip()
        if required and not value:
            self.add(name, N_("Required field"))
        elif len(value) > max_len:
            self.add(name, N_("At most {max} characters"), max=max_len)
        return value

    def pattern(self, name: str, value: str, regex: re.Pattern[str], msgid: str, *, max_len: int) -> str:
        value = self.text(name, value, max_len=max_len)
        if value and not self.has(name) and not regex.fullmatch(value):
            self.add(name, msgid)
        return value

    def pin(self, name: str, value: str) -> str:
        return self.pattern(name, value, PIN_RE, N_("From 2 to 6 digits"), max_len=6)

    def login(self, name: str, value: str) -> str:
        return self.pattern(
            name,
            value.lower(),
            LOGIN_RE,
            N_("Latin lower-case letters, digits, dot, dash and underscore"),
            max_len=64,
        )

    def email(self, name: str, value: str) -> str | None:
        value = self.text(name, value, max_len=254, required=False)
        if value and not self.has(name) and not EMAIL_RE.fullmatch(value):
            self.add(name, N_("Not an e-mail address"))
        return value or None

    def number(self, name: str, value: str, *, required: bool = True) -> str | None:
        value = value.strip()
        if not value:
            if required:
                self.add(name, N_("Required field"))
            return None
        e164 = to_e164(value)
        if e164 is None:
            self.add(name, N_("Not a valid phone number: {value}"), value=value[:32])
        return e164

    def numbers(self, name: str, values: Sequence[str], *, max_count: int) -> list[str]:
        out: list[str] = []
        for v in values:
            if not v.strip():
                continue
            n = self.number(name, v)
            if n is not None and n not in out:
                out.append(n)
        if len(out) > max_count:
            self.add(name, N_("At most {max} numbers"), max=max_count)
        return out

    def integer(self, name: str, value: str | int, *, lo: int, hi: int) -> int:
        try:
            n = int(str(value).strip())
        except ValueError:
            self.add(name, N_("Must be a whole number"))
            return lo
        if not lo <= n <= hi:
            self.add(name, N_("Must be from {lo} to {hi}"), lo=lo, hi=hi)
        return n

    def choice(self, name: str, value: str, options: Sequence[T]) -> T | None:
        for o in options:
            if o == value:
                return o
        self.add(name, N_("Choose one of the options"))
        return None
