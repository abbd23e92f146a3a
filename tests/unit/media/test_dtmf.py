"""RFC 4733 payloads and the digit receiver (telephony.md §3.8), on a fake clock."""

from __future__ import annotations

import pytest

from vpbx.clock import FakeClock
from vpbx.errors import MediaParseError
from vpbx.media.dtmf import (
    Digit,
    DtmfEvent,
    DtmfReceiver,
    build_event,
    digit_payloads,
    event_code,
    parse_event,
)


def test_parse_exact_fields() -> None:
    assert parse_event(bytes([5, 0x8A, 0x03, 0x20])) == DtmfEvent(event=5, end=True, volume=10, duration=800)
    ev = parse_event(bytes([11, 0x40 | 63, 0xFF, 0xFF]))  # R bit ignored
    assert ev == DtmfEvent(event=11, end=False, volume=63, duration=65535) and ev.digit == "#"
    assert parse_event(bytes([16, 0, 0, 0])).digit is None  # hook flash is an event, not a digit


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x02\x03"])
def test_parse_short(data: bytes) -> None:
    with pytest.raises(MediaParseError) as e:
        parse_event(data)
    assert e.value.reason == "dtmf-short"


@pytest.mark.parametrize(
    ("digit", "code"), [*((str(i), i) for i in range(10)), ("*", 10), ("#", 11), ("A", 12), ("d", 15)]
)
def test_codes(digit: str, code: int) -> None:
    assert event_code(digit) == code
    assert parse_event(build_event(digit)).event == code


def test_build_round_trip_and_limits() -> None:
    raw = build_event("7", end=True, volume=10, duration=800)
    assert raw == bytes([7, 0x8A, 0x03, 0x20])
    assert parse_event(raw) == DtmfEvent(7, True, 10, 800)
    for bad in ({"volume": 64}, {"duration": 65536}, {"volume": -1}):
        with pytest.raises(ValueError):
            build_event("1", **bad)  # type: ignore[arg-type]
    for bad_digit in ("E", "12", "", "x"):
        with pytest.raises(ValueError):
            event_code(bad_digit)


def test_digit_payloads_follow_our_sending_rules() -> None:
    payloads = digit_payloads("5")
    events = [parse_event(p) for p in payloads]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]  # 20 ms steps, 100 ms
    assert [e.end for e in events] == [False] * 4 + [True] * 3  # end ×3
    assert all(e.volume == 10 and e.event == 5 for e in events)


class Feed:
    """Helper: feeds payloads with a timestamp, collecting closed digits."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.rx = DtmfReceiver(self.clock)
        self.digits: list[Digit] = []

    def send(
        self, digit: str, ts: int, *, ssrc: int = 1, step_s: float = 0.02, payloads: list[bytes] | None = None
    ) -> None:
        for p in payloads if payloads is not None else digit_payloads(digit):
            self.digits += self.rx.feed(p, ts, ssrc)
            self.clock.advance(step_s)


def test_a_digit_with_retransmitted_ends_is_reported_once() -> None:
    f = Feed()
    f.send("5", 1000)
    assert f.digits == [Digit("5", 1000, 800, True)]
    assert f.rx.pending is None


def test_sequence_of_digits_including_repeats_of_the_same_digit() -> None:
    f = Feed()
    for i, d in enumerate("1223#*A"):
        f.send(d, 1000 + 2000 * i)
    assert "".join(d.digit for d in f.digits) == "1223#*A"
    assert all(d.ended for d in f.digits)


def test_digit_reported_at_its_end_not_its_start() -> None:
    f = Feed()
    first = digit_payloads("9")[:2]
    f.send("9", 500, payloads=first)
    assert f.digits == [] and f.rx.pending == "9"
    f.send("9", 500, payloads=[build_event("9", end=True, duration=800)])
    assert f.digits == [Digit("9", 500, 800, True)]


def test_lost_end_closes_after_one_second_without_packets() -> None:
    f = Feed()
    f.send("4", 100, payloads=digit_payloads("4")[:4])  # the three end packets are lost
    assert f.digits == [] and f.rx.pending == "4"
    f.clock.advance(0.9)
    assert f.rx.poll() is None
    f.clock.advance(0.2)
    assert f.rx.poll() == Digit("4", 100, 640, False)
    assert f.rx.poll() is None and f.rx.pending is None
    # a straggler of that digit after it was closed is not a new digit
    assert f.rx.feed(build_event("4", end=True, duration=800), 100, 1) == ()


def test_a_long_press_is_not_cut_at_one_second() -> None:
    f = Feed()
    for i in range(1, 100):  # 2 s of updates every 20 ms
        f.send("0", 10, payloads=[build_event("0", duration=160 * i)])
        assert f.rx.poll() is None
    f.send("0", 10, payloads=[build_event("0", end=True, duration=16000)])
    assert f.digits == [Digit("0", 10, 16000, True)]


def test_next_event_closes_an_unended_digit() -> None:
    f = Feed()
    f.send("1", 100, payloads=digit_payloads("1")[:2])
    f.send("2", 2100)
    assert f.digits == [Digit("1", 100, 320, False), Digit("2", 2100, 800, True)]


def test_only_end_packets_survived() -> None:
    f = Feed()
    f.send("8", 100, payloads=digit_payloads("8")[-3:])
    assert f.digits == [Digit("8", 100, 800, True)]


def test_late_packet_of_an_earlier_event_is_ignored() -> None:
    f = Feed()
    f.send("1", 5000)
    f.send("2", 7000)
    f.send("1", 5000, payloads=[build_event("1", duration=160)])  # reordered straggler
    assert [d.digit for d in f.digits] == ["1", "2"]


def test_new_source_starts_afresh() -> None:
    f = Feed()
    f.send("1", 5000, payloads=digit_payloads("1")[:2])
    f.send("2", 10, ssrc=2)  # lower timestamp, but another SSRC (transfer): still a new digit
    assert f.digits == [Digit("1", 5000, 320, False), Digit("2", 10, 800, True)]


def test_non_digit_events_are_ignored() -> None:
    f = Feed()
    assert f.rx.feed(bytes([16, 0x8A, 0, 160]), 1, 1) == ()
    assert f.rx.pending is None


def test_a_sender_that_reuses_its_event_timestamp_still_gets_every_digit() -> None:
    """Replayed recordings (SIPp's pcaps) and some gateways send each digit with the same RTP timestamp, or
    an older one: a digit well after the last one ended is a new digit; an end packet straggling in for the
    digit already reported is not."""
    f = Feed()
    f.send("9", 8000)
    f.clock.advance(1.0)
    f.send("1", 8000)
    f.clock.advance(1.0)
    f.send("1", 4000)  # an older timestamp, the same digit again
    assert [d.digit for d in f.digits] == ["9", "1", "1"]
    f.clock.advance(1.0)
    assert f.rx.feed(build_event("1", end=True, duration=800), 4000, 1) == ()
