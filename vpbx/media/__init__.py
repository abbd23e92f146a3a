"""Media: RTP relay, G.711, RFC 4733 DTMF and the ``MediaBackend`` interface (telephony.md §3.8, §3.9)."""

from __future__ import annotations

from vpbx.media.backend import (
    InlineMediaBackend,
    LegStats,
    MediaBackend,
    MediaPorts,
    MediaTimeoutHook,
    SessionStats,
)
from vpbx.media.dtmf import Digit, DtmfEvent, DtmfReceiver, build_event, digit_payloads, parse_event
from vpbx.media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW, alaw_to_pcm, pcm_to_alaw, pcm_to_ulaw, ulaw_to_pcm
from vpbx.media.relay import Address, LegRef, PortAllocator, Relay, Side
from vpbx.media.rtp import (
    PT_PCMA,
    PT_PCMU,
    TELEPHONE_EVENT_PT,
    LegRewriter,
    RtpPacket,
    parse_packet,
    serialize_packet,
)

__all__ = [
    "ALAW_TO_ULAW",
    "PT_PCMA",
    "PT_PCMU",
    "TELEPHONE_EVENT_PT",
    "ULAW_TO_ALAW",
    "Address",
    "Digit",
    "DtmfEvent",
    "DtmfReceiver",
    "InlineMediaBackend",
    "LegRef",
    "LegRewriter",
    "LegStats",
    "MediaBackend",
    "MediaPorts",
    "MediaTimeoutHook",
    "PortAllocator",
    "Relay",
    "RtpPacket",
    "SessionStats",
    "Side",
    "alaw_to_pcm",
    "build_event",
    "digit_payloads",
    "parse_event",
    "parse_packet",
    "pcm_to_alaw",
    "pcm_to_ulaw",
    "serialize_packet",
    "ulaw_to_pcm",
]
