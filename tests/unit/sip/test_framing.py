from __future__ import annotations

from vpbx.sip.framing import Frame, FramingError, Ping, StreamFramer

OPTIONS = (
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCall-ID: x\r\n"
    b"Content-Length: 4\r\n\r\nbody"
)


def test_one_message_in_pieces() -> None:
    f = StreamFramer()
    events = []
    for i in range(0, len(OPTIONS), 7):
        events += f.feed(OPTIONS[i : i + 7])
    assert events == [Frame(OPTIONS)]
    assert f.pending == 0


def test_two_messages_and_keepalives_in_one_read() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n" + OPTIONS + b"\r\n" + OPTIONS + b"\r\n\r\n") == [
        Ping(),
        Frame(OPTIONS),
        Frame(OPTIONS),
        Ping(),
    ]


def test_compact_content_length_and_case() -> None:
    msg = OPTIONS.replace(b"Content-Length: 4", b"l:4")
    assert StreamFramer().feed(msg) == [Frame(msg)]
    msg2 = OPTIONS.replace(b"Content-Length", b"CONTENT-length")
    assert StreamFramer().feed(msg2) == [Frame(msg2)]


def test_missing_or_bad_length_breaks_the_stream() -> None:
    f = StreamFramer()
    assert f.feed(OPTIONS.replace(b"Content-Length: 4\r\n", b"")) == [
        FramingError(400, "missing-content-length")
    ]
    assert f.feed(OPTIONS) == []  # nothing more is read from a broken stream
    assert StreamFramer().feed(OPTIONS.replace(b": 4", b": -4")) == [FramingError(400, "bad-content-length")]


def test_oversize_is_513() -> None:
    f = StreamFramer(max_message=200)
    assert f.feed(OPTIONS.replace(b": 4", b": 5000")) == [FramingError(513, "message-too-large")]
    g = StreamFramer(max_message=200)
    assert g.feed(b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * 300) == [FramingError(513, "message-too-large")]


def test_partial_keepalive_waits() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n") == []
    assert f.feed(b"\r\n") == [Ping()]


def test_content_length_anywhere_in_the_header() -> None:
    """sipsak, like many phones, puts Content-Length before other headers (it was found only when last)."""
    msg = (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nContent-Length: 4 \r\n"
        b"Call-ID: x\r\nAccept: text/plain\r\n\r\nbody"
    )
    assert StreamFramer().feed(msg + msg) == [Frame(msg), Frame(msg)]
    compact = msg.replace(b"Content-Length: 4 ", b"l:4")
    assert StreamFramer().feed(compact) == [Frame(compact)]
