"""A media worker process (telephony.md §2, §3.9): the RTP relay on its own event loop, driven over a socket.

    python -m vpbx.media.worker --control-fd 3 --ports 10000-14999 --bind 0.0.0.0

The supervisor (``vpbx.media.supervisor``) starts one per core but one, each with its own slice of the RTP
port range, and hands it one end of a unix socket pair as ``--control-fd``. The worker answers the commands of
``vpbx.media.control`` with an ``InlineMediaBackend`` (relay, media-timeout watchdog, DTMF peek) and sends its
events back on the same socket. It exits when that socket reaches EOF (the signalling process stopped or died,
so a worker is never orphaned), on ``shutdown``, or on SIGTERM; SIGINT is left to the parent, which stops the
workers itself after ending the calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vpbx.logs import configure_logging, get_logger
from vpbx.media.backend import CHECK_INTERVAL_S, AmdParams, InlineMediaBackend
from vpbx.media.control import ControlProtocolError, Message, encode_frame, error_reply, read_messages
from vpbx.media.dtmf import Digit
from vpbx.media.prompts import Prompt, PromptId
from vpbx.media.relay import MEDIA_TIMEOUT_S, Address, LegRef, Side
from vpbx.media.rtp import StreamState
from vpbx.pbx.bus import SessionId

log = get_logger("vpbx.media.worker")


class Worker:
    """Commands in, replies and events out, for one control connection."""

    def __init__(self, backend: InlineMediaBackend, writer: asyncio.StreamWriter) -> None:
        self.backend = backend
        self._writer = writer
        self.stopping = asyncio.Event()
        backend.on_media_timeout = self._media_timeout
        if backend.on_dtmf is not None:
            backend.on_dtmf = self._dtmf
        backend.on_play_done = self._play_done
        backend.on_amd = self._amd
        self._plays: dict[LegRef, object] = {}  # the signalling side's play id, echoed in play_done
        self._ops: dict[str, Callable[[Message], object]] = {
            "allocate": self._allocate,
            "update": self._update,
            "release": self._release,
            "stats": self._stats,
            "play": self._play,
            "stop_play": self._stop_play,
            "record_start": self._record_start,
            "record_stop": self._record_stop,
            "stream": self._stream,
            "adopt_stream": self._adopt_stream,
            "amd_start": self._amd_start,
            "amd_stop": self._amd_stop,
            "info": self._info,
            "shutdown": self._shutdown,
        }

    def send(self, message: Message) -> None:
        if not self._writer.is_closing():
            self._writer.write(encode_frame(message))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        async for message in read_messages(reader):  # ends at EOF: the signalling process is gone
            if self.stopping.is_set():
                return
            request_id = message.get("id")
            op = self._ops.get(str(message.get("op")))
            try:
                if op is None:
                    raise ValueError(f"unknown op {message.get('op')!r}")
                args = message.get("args")
                result = op(args if isinstance(args, dict) else {})
                if asyncio.iscoroutine(result):
                    result = await result
                reply: Message = {"id": request_id, "ok": True, "result": result}
            except Exception as e:
                reply = error_reply(request_id, e)
            self.send(reply)
            await self._writer.drain()

    # --- verbs ------------------------------------------------------------------------------------------
    async def _allocate(self, args: Message) -> Message:
        ports = await self.backend.allocate(SessionId(str(args["session"])))
        return {"a": ports.a.port, "b": ports.b.port}

    async def _update(self, args: Message) -> None:
        remote = args.get("remote")
        te = args.get("telephone_event_pt")
        await self.backend.update(
            LegRef(SessionId(str(args["session"])), _side(args["side"])),
            None if remote is None else Address(str(remote[0]), int(remote[1])),
            int(args["codec_pt"]),
            None if te is None else int(te),
        )

    async def _release(self, args: Message) -> None:
        session = SessionId(str(args["session"]))
        for side in ("a", "b"):
            self._plays.pop(LegRef(session, _side(side)), None)
        await self.backend.release(session)

    async def _play(self, args: Message) -> None:
        leg = LegRef(SessionId(str(args["session"])), _side(args["side"]))
        pcma, pcmu = Path(str(args["pcma"])), Path(str(args["pcmu"]))
        prompt = Prompt(id=PromptId(str(args["prompt"])), duration_s=0.0, wav=pcma, pcma=pcma, pcmu=pcmu)
        play_id = args.get("play_id")
        await self.backend.play(leg, prompt, loop=bool(args.get("loop", False)))
        self._plays[leg] = play_id  # after the await: a failed play keeps the previous one's id

    async def _amd_start(self, args: Message) -> None:
        leg = LegRef(SessionId(str(args["session"])), _side(args["side"]))
        params = AmdParams(
            analysis_s=float(args["analysis_s"]),
            initial_silence_s=float(args["initial_silence_s"]),
            greeting_s=float(args["greeting_s"]),
            after_greeting_silence_s=float(args["after_greeting_silence_s"]),
            until_greeting_end=bool(args.get("until_greeting_end", False)),
        )
        await self.backend.amd_start(leg, params)

    async def _amd_stop(self, args: Message) -> None:
        await self.backend.amd_stop(LegRef(SessionId(str(args["session"])), _side(args["side"])))

    def _amd(self, leg: LegRef, result: str) -> None:
        self.send({"event": "amd", "session": leg.session, "side": leg.side, "result": result})

    async def _stop_play(self, args: Message) -> Message:
        leg = LegRef(SessionId(str(args["session"])), _side(args["side"]))
        self._plays.pop(leg, None)
        return {"stopped": await self.backend.stop_play(leg)}

    async def _record_start(self, args: Message) -> None:
        channels = args.get("channels", "stereo")
        if channels not in ("stereo", "a"):
            raise ValueError(f"channels must be 'stereo' or 'a', not {channels!r}")
        path = Path(str(args["path"]))
        if not path.is_absolute():
            raise ValueError(f"recording path must be absolute: {path}")
        await self.backend.record_start(
            SessionId(str(args["session"])), path, channels="a" if channels == "a" else "stereo"
        )

    async def _record_stop(self, args: Message) -> Message:
        result = await self.backend.record_stop(SessionId(str(args["session"])))
        if result is None:
            return {}
        return {
            "path": str(result.path),
            "duration_s": result.duration_s,
            "frames": result.frames,
            "channels": result.channels,
        }

    async def _stream(self, args: Message) -> Message:
        leg = LegRef(SessionId(str(args["session"])), _side(args["side"]))
        return dict((await self.backend.stream(leg))._asdict())

    async def _adopt_stream(self, args: Message) -> None:
        leg = LegRef(SessionId(str(args["session"])), _side(args["side"]))
        state = StreamState(int(args["ssrc"]), int(args["seq"]), int(args["timestamp"]), float(args["age_s"]))
        await self.backend.adopt_stream(leg, state)

    async def _stats(self, args: Message) -> Message:
        stats = await self.backend.stats(SessionId(str(args["session"])))
        return {"a": dataclasses.asdict(stats.a), "b": dataclasses.asdict(stats.b)}

    def _info(self, _args: Message) -> Message:
        return {
            "pid": os.getpid(),
            "sessions": self.backend.sessions,
            "capacity": self.backend.allocator.capacity,
            "ports_in_use": self.backend.allocator.in_use,
        }

    def _shutdown(self, _args: Message) -> None:
        self.stopping.set()

    # --- events -----------------------------------------------------------------------------------------
    def _media_timeout(self, leg: LegRef, idle_s: float) -> None:
        self.send({"event": "media_timeout", "session": leg.session, "side": leg.side, "idle_s": idle_s})

    def _play_done(self, leg: LegRef) -> None:
        play_id = self._plays.pop(leg, None)
        self.send({"event": "play_done", "session": leg.session, "side": leg.side, "play_id": play_id})

    def _dtmf(self, leg: LegRef, digit: Digit) -> None:
        self.send({"event": "dtmf", "session": leg.session, "side": leg.side, **dataclasses.asdict(digit)})


def _side(value: object) -> Side:
    if value == "a":
        return "a"
    if value == "b":
        return "b"
    raise ValueError(f"side must be 'a' or 'b', not {value!r}")


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=args.control_fd)
    sock.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    backend = InlineMediaBackend(
        ports=args.ports,
        bind_host=args.bind,
        media_timeout_s=args.media_timeout,
        check_interval_s=args.check_interval,
        on_dtmf=(lambda _leg, _digit: None) if args.dtmf else None,
    )
    worker = Worker(backend, writer)
    _ = backend.relay  # create the relay and its watchdog on this loop now
    serving = asyncio.create_task(worker.serve(reader), name="media-worker-serve")
    stopping = asyncio.create_task(worker.stopping.wait(), name="media-worker-stopping")
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, worker.stopping.set)
    worker.send(
        {
            "event": "ready",
            "pid": os.getpid(),
            "capacity": backend.allocator.capacity,
            "loop": type(loop).__module__,
        }
    )
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done() and (e := serving.exception()) is not None and not isinstance(e, ConnectionError):
            if isinstance(e, ControlProtocolError):
                log.error("media.worker_control_broken", error=str(e))
            else:
                raise e
    finally:
        for task in (serving, stopping):
            task.cancel()
        await asyncio.gather(serving, stopping, return_exceptions=True)
        await backend.aclose()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _ports(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) >= int(hi):
        raise argparse.ArgumentTypeError("expected A-B, e.g. 10000-14999")
    return int(lo), int(hi)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vpbx.media.worker", description="vpbx media worker")
    p.add_argument("--control-fd", type=int, required=True, help="inherited unix socket to the supervisor")
    p.add_argument("--ports", type=_ports, required=True, help="this worker's RTP port range, A-B")
    p.add_argument("--bind", default="0.0.0.0", help="address the RTP sockets bind on")
    p.add_argument("--media-timeout", type=float, default=MEDIA_TIMEOUT_S)
    p.add_argument("--check-interval", type=float, default=CHECK_INTERVAL_S)
    p.add_argument("--dtmf", action="store_true", help="peek telephone-events and report digits")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-json", action="store_true")
    return p.parse_args(argv)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    configure_logging(json=args.log_json, level=args.log_level)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
