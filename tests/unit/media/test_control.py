"""The media worker control protocol's framing and error mapping, and the split of the port range."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from vpbx.errors import MediaError, NoMediaPorts, NoMediaSession
from vpbx.media.backend import LegStats, leg_stats_from
from vpbx.media.control import (
    MAX_FRAME,
    ControlProtocolError,
    FrameDecoder,
    encode_frame,
    error_from_reply,
    error_reply,
    read_messages,
)
from vpbx.media.relay import Address
from vpbx.media.supervisor import split_ports


def test_frame_is_length_then_json() -> None:
    frame = encode_frame({"id": 1, "op": "release", "args": {"session": "s"}})
    assert frame[:4] == (len(frame) - 4).to_bytes(4, "big")
    assert json.loads(frame[4:]) == {"id": 1, "op": "release", "args": {"session": "s"}}


def test_decoder_reassembles_frames_fed_byte_by_byte() -> None:
    messages = [{"id": i, "ok": True, "result": {"a": 10000 + i}} for i in range(3)]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == messages


def test_decoder_returns_several_frames_from_one_read() -> None:
    stream = encode_frame({"event": "ready"}) + encode_frame({"id": 2, "ok": True})
    assert FrameDecoder().feed(stream) == [{"event": "ready"}, {"id": 2, "ok": True}]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ((MAX_FRAME + 1).to_bytes(4, "big"), "exceeds"),
        (b"\x00\x00\x00\x03[1]", "not a JSON object"),
        (b"\x00\x00\x00\x02{x", "not JSON"),
        (b"\x00\x00\x00\x02\xff\xfe", "not JSON"),
    ],
)
def test_decoder_refuses_bad_frames(raw: bytes, reason: str) -> None:
    with pytest.raises(ControlProtocolError, match=reason):
        FrameDecoder().feed(raw)


def test_encoder_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_frame({"idle_s": float("nan")})


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NoMediaPorts("full"), NoMediaPorts),
        (NoMediaSession("s-1"), NoMediaSession),
        (ValueError("not an IP"), ValueError),
        (RuntimeError("boom"), MediaError),
    ],
)
def test_a_worker_error_is_raised_again_as_the_same_kind(error: Exception, kind: type[Exception]) -> None:
    reply = json.loads(encode_frame(error_reply(5, error))[4:])
    assert reply["id"] == 5 and reply["ok"] is False
    again = error_from_reply(reply["error"], "allocate")
    assert type(again) is kind
    if isinstance(again, NoMediaSession):
        assert again.details == {"session_id": "s-1"}


def test_leg_stats_come_back_with_our_advertised_host() -> None:
    stats = LegStats(
        local=Address("0.0.0.0", 10000),
        remote=Address("192.0.2.1", 4000),
        latched=None,
        codec_pt=0,
        telephone_event_pt=101,
        rx_packets=3,
        rx_bytes=516,
        tx_packets=2,
        tx_bytes=344,
        lost=0,
        invalid=0,
        unknown_pt=0,
        unexpected_source=0,
        relatches=0,
        dropped=0,
        send_errors=0,
        rtcp_packets=0,
        rtcp_fraction_lost=None,
        rtcp_cumulative_lost=None,
        rtcp_jitter=None,
        idle_s=0.5,
    )
    wire = json.loads(json.dumps(dataclasses.asdict(stats)))  # tuples became lists
    again = leg_stats_from(wire, "203.0.113.5")
    assert again == dataclasses.replace(stats, local=Address("203.0.113.5", 10000))


@pytest.mark.parametrize(
    ("ports", "count", "expected"),
    [
        ((10000, 20000), 1, [(10000, 19999)]),
        ((10000, 10011), 2, [(10000, 10005), (10006, 10011)]),
        ((10001, 10010), 2, [(10002, 10005), (10006, 10009)]),
        ((10000, 10009), 3, [(10000, 10003), (10004, 10007), (10008, 10009)]),
    ],
)
def test_port_range_is_split_into_whole_pairs(
    ports: tuple[int, int], count: int, expected: list[tuple[int, int]]
) -> None:
    slices = split_ports(ports, count)
    assert slices == expected
    for lo, hi in slices:
        assert lo % 2 == 0 and (hi - lo + 1) % 2 == 0


def test_too_few_ports_for_the_workers() -> None:
    with pytest.raises(ValueError, match="fewer than 3 workers"):
        split_ports((10000, 10003), 3)


async def test_messages_are_read_in_bursts_and_a_cut_frame_is_an_error() -> None:
    reader = asyncio.StreamReader()
    frames = b"".join(encode_frame({"id": i, "ok": True}) for i in range(3))
    reader.feed_data(frames[:5])  # a header cut in two
    reader.feed_data(frames[5:])  # the rest: three frames in one read
    reader.feed_eof()
    assert [m["id"] async for m in read_messages(reader)] == [0, 1, 2]

    cut = asyncio.StreamReader()
    cut.feed_data(encode_frame({"id": 9})[:-1])
    cut.feed_eof()
    with pytest.raises(ControlProtocolError, match="EOF inside a frame"):
        [m async for m in read_messages(cut)]
