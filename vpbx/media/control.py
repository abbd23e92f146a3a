"""The media worker control protocol (telephony.md §3.9): length-prefixed JSON over a unix socket.

Each frame is a 4-octet big-endian length followed by that many octets of UTF-8 JSON (one object)::

    request   {"id": 7, "op": "allocate", "args": {"session": "…"}}        signalling → worker
    reply     {"id": 7, "ok": true, "result": {"a": 10000, "b": 10002}}     worker → signalling
              {"id": 7, "ok": false, "error": {"code": "no-media-ports", "message": "…"}}
    event     {"event": "media_timeout", "session": "…", "side": "a", "idle_s": 60.2}
              {"event": "dtmf", "session": "…", "side": "a", "digit": "5", "timestamp": …, "duration": …,
               "ended": true}
              {"event": "play_done", "session": "…", "side": "a", "play_id": 3}   a prompt has played out
              {"event": "ready", "pid": 1234, "capacity": 2500}              once, when the worker listens

Verbs: ``allocate``, ``update``, ``release``, ``stats``, ``info``, ``shutdown``, ``play`` (session, side,
prompt id, paths of its ``.pcma`` and ``.pcmu`` files, loop, play_id), ``stop_play`` (session, side),
``record_start`` (session, absolute WAV path, channels ``stereo``|``a``) and ``record_stop`` (session; the
reply has path, duration_s, frames, channels, or is empty when the session was not recording).
``FrameDecoder`` is the sans-I/O framing; ``ControlChannel`` is the signalling side's asyncio adapter:
request ids, one pending future per request, a timeout per command (``COMMAND_TIMEOUT_S``), events handed to
a callback, and ``closed`` set when the worker's end goes away (EOF: the worker exited or died).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from vpbx.errors import MediaError, NoMediaPorts, NoMediaSession, RecordingFailed, WorkerUnavailable
from vpbx.logs import get_logger
from vpbx.media.prompts import PromptError

log = get_logger("vpbx.media.control")

COMMAND_TIMEOUT_S = 2.0  # telephony.md §3.9: per command
MAX_FRAME = 1 << 20  # octets; a stats reply is about 1 KiB
LENGTH_SIZE = 4

Message = dict[str, Any]
EventHook = Callable[[Message], None]


class ControlProtocolError(MediaError):
    """A frame that is too long or not a JSON object: the channel is closed, the worker treated as dead."""

    code = "media-control-protocol"


def encode_frame(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise ControlProtocolError(f"frame of {len(body)} octets exceeds {MAX_FRAME}")
    return len(body).to_bytes(LENGTH_SIZE, "big") + body


def decode_body(body: bytes) -> Message:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlProtocolError(f"frame is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ControlProtocolError("frame is not a JSON object")
    return message


class FrameDecoder:
    """Bytes in, whole messages out; keeps a partial frame between calls."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= LENGTH_SIZE:
            size = int.from_bytes(self._buf[:LENGTH_SIZE], "big")
            if size > MAX_FRAME:
                raise ControlProtocolError(f"frame of {size} octets exceeds {MAX_FRAME}")
            if len(self._buf) < LENGTH_SIZE + size:
                break
            body = bytes(self._buf[LENGTH_SIZE : LENGTH_SIZE + size])
            del self._buf[: LENGTH_SIZE + size]
            out.append(decode_body(body))
        return out

    @property
    def partial(self) -> bool:
        """Octets of an unfinished frame are waiting."""
        return bool(self._buf)


READ_CHUNK = 64 * 1024


async def read_messages(reader: asyncio.StreamReader) -> AsyncIterator[Message]:
    """Every message until a clean EOF, reading whatever has arrived at once: one wake-up for a burst of
    frames, not two awaits (header, body) per frame."""
    decoder = FrameDecoder()
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            if decoder.partial:
                raise ControlProtocolError("EOF inside a frame")
            return
        for message in decoder.feed(data):
            yield message


# error codes a worker may answer with, raised again on the signalling side as the same exception
def error_from_reply(error: Message, op: str) -> Exception:
    code = str(error.get("code", ""))
    message = str(error.get("message", ""))
    if code == "no-media-ports":
        return NoMediaPorts(message)
    if code == "no-media-session":
        return NoMediaSession(str(error.get("session", "")))
    if code == "invalid-value":
        return ValueError(message)
    if code == RecordingFailed.code:
        return RecordingFailed(message)
    if code == PromptError.code:
        return PromptError(str(error.get("reason", "")), message)
    return MediaError(f"media worker failed {op}: {code}: {message}")


def error_reply(request_id: object, e: Exception) -> Message:
    """The reply for a command that raised ``e`` (``ValueError``: bad arguments, e.g. a host name)."""
    if isinstance(e, MediaError):
        error: Message = {"code": e.code, "message": str(e)}
        if isinstance(e, NoMediaSession):
            error["session"] = e.details.get("session_id", "")
        elif isinstance(e, PromptError):
            error["reason"] = e.reason
    elif isinstance(e, (ValueError, TypeError, KeyError)):
        error = {"code": "invalid-value", "message": f"{type(e).__name__}: {e}"}
    else:
        error = {"code": "internal", "message": f"{type(e).__name__}: {e}"}
    return {"id": request_id, "ok": False, "error": error}


class ControlChannel:
    """The signalling side of one worker's control socket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str,
        on_event: EventHook,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._next_id = 1
        self.timeouts_in_a_row = 0  # commands unanswered since the last reply: a stuck worker
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read_loop(), name=f"media-control-{name}")

    async def request(self, op: str, **args: object) -> Message:
        """Send one command and wait for its reply (at most ``timeout_s``); its error is raised again."""
        if self.closed.is_set():
            raise WorkerUnavailable(f"media worker {self.name} is down")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(encode_frame({"id": request_id, "op": op, "args": args}))
            async with asyncio.timeout(self.timeout_s):
                reply = await future
        except TimeoutError:
            self.timeouts_in_a_row += 1
            raise WorkerUnavailable(
                f"media worker {self.name} did not answer {op} within {self.timeout_s:g} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            raise error_from_reply(reply.get("error") or {}, op)
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    async def _read_loop(self) -> None:
        try:
            async for message in read_messages(self._reader):
                if "event" in message:
                    try:
                        self._on_event(message)
                    except Exception:
                        log.exception(
                            "media.event_hook_failed", worker=self.name, media_event=message["event"]
                        )
                    continue
                self.timeouts_in_a_row = 0
                future = self._pending.get(message.get("id", -1))
                if future is not None and not future.done():
                    future.set_result(message)
        except (ControlProtocolError, ConnectionError) as e:
            log.warning("media.control_broken", worker=self.name, error=str(e))
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(WorkerUnavailable(f"media worker {self.name} went away"))

    async def aclose(self) -> None:
        """Close our end (the worker sees EOF and exits) and stop reading."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.closed.set()
