"""Stream framing for SIP over TCP/TLS (RFC 3261 §18.3) and CRLF keep-alive (RFC 5626 §3.5.1). Pure.

Bytes go in as they arrive; whole messages, keep-alive pings and framing errors come out. A message on a
stream must carry ``Content-Length``; without it the stream cannot be framed and the connection is closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_MESSAGE = 64 * 1024  # octets per stream message (telephony.md §3.1); beyond it → 513 and close
HEADER_END = b"\r\n\r\n"
PING = b"\r\n\r\n"  # RFC 5626 §3.5.1 double-CRLF keep-alive; the answer is PONG
PONG = b"\r\n"
# a header line of its own; ``$`` in MULTILINE stops before "\n", so the "\r" of CRLF is matched here
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)\r?$", re.I | re.M)


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream is broken at this point: answer ``status`` if possible, then close the connection."""

    status: int
    reason: str


Event = Frame | Ping | FramingError


class StreamFramer:
    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._broken = False

    def feed(self, data: bytes) -> list[Event]:
        if self._broken:
            return []
        self._buf += data
        out: list[Event] = []
        while self._buf:
            if self._buf.startswith(b"\r\n"):
                if self._buf.startswith(PING):
                    del self._buf[:4]
                    out.append(Ping())
                    continue
                if len(self._buf) < 4 and PING.startswith(bytes(self._buf)):
                    break  # a keep-alive may still be arriving
                del self._buf[:2]  # a lone CRLF between messages (RFC 3261 §7.5) is ignored
                continue
            end = self._buf.find(HEADER_END)
            if end < 0:
                if len(self._buf) > self._max:
                    return self._fail(out, 513, "message-too-large")
                break
            head = bytes(self._buf[:end])
            m = _CONTENT_LENGTH.search(head)
            if m is None:
                return self._fail(out, 400, "missing-content-length")
            value = m.group(1).strip()
            if not value.isdigit():
                return self._fail(out, 400, "bad-content-length")
            total = end + 4 + int(value)
            if total > self._max:
                return self._fail(out, 513, "message-too-large")
            if len(self._buf) < total:
                break
            out.append(Frame(bytes(self._buf[:total])))
            del self._buf[:total]
        return out

    def _fail(self, out: list[Event], status: int, reason: str) -> list[Event]:
        self._broken = True
        self._buf.clear()
        out.append(FramingError(status, reason))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
