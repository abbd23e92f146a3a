"""``MediaBackend`` (telephony.md §9.3): what the call engine asks of media, and the inline implementation.

The B2BUA calls ``allocate`` when a call is accepted (our SDP on each leg points at the returned address),
``update`` once per leg whenever that leg's SDP is negotiated (answer, re-INVITE, transfer), ``stats`` for
diagnostics and the call record, and ``release`` when the call ends.

``InlineMediaBackend`` runs the relay on the current event loop (``media_mode = "inline"``: unit tests and the
smallest installs). ``WorkerMediaBackend`` is the production shape: relays in worker processes
(``vpbx.media.worker``, started and restarted by ``vpbx.media.supervisor``) driven over a unix socket with
length-prefixed JSON (``vpbx.media.control``; telephony.md §2, §3.9). ``play``/``stop_play`` send a
stored prompt (``vpbx.media.prompts``) to one leg's phone and ``on_play_done`` reports when it has played
out; ``record_start``/``record_stop`` write what the legs send to a WAV (``vpbx.media.capture``; the file is
written by the relay's own thread, in the worker for workers); DTMF sending joins the Protocol later.
Nothing here keeps module-level state.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vpbx.clock import Clock, SystemClock
from vpbx.errors import NoMediaPorts, NoMediaSession, RecordingFailed, WorkerUnavailable
from vpbx.logs import get_logger
from vpbx.media.amd import AmdDetector
from vpbx.media.capture import Channels, RecordingResult
from vpbx.media.dtmf import Digit
from vpbx.media.player import AudioCache
from vpbx.media.relay import (
    MEDIA_TIMEOUT_S,
    Address,
    AmdHook,
    DigitHook,
    LegRef,
    PlayDoneHook,
    PortAllocator,
    Relay,
    RelayLeg,
)
from vpbx.media.rtp import StreamState
from vpbx.pbx.bus import SessionId

if TYPE_CHECKING:
    from vpbx.media.prompts import Prompt
    from vpbx.media.supervisor import WorkerProcess

log = get_logger("vpbx.media.backend")

CHECK_INTERVAL_S = 0.5  # how often the inline backend looks for idle legs and unfinished digits
RECORD_STOP_TIMEOUT_S = 1.5  # the writer finalises a WAV within this (below the 2 s worker command limit)

MediaTimeoutHook = Callable[[LegRef, float], None]
"""Called with the silent leg and for how long; the owner BYEs the call unless the leg is on hold."""
SessionLostHook = Callable[[SessionId], None]
"""Called for each session whose media worker died: its RTP is gone, whatever the call's state."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AmdParams:
    """The thresholds of answering-machine detection (``vpbx.media.amd.AmdDetector``), in seconds."""

    analysis_s: float
    initial_silence_s: float
    greeting_s: float
    after_greeting_silence_s: float
    until_greeting_end: bool = False

    def detector(self) -> AmdDetector:
        return AmdDetector(
            analysis_s=self.analysis_s,
            initial_silence_s=self.initial_silence_s,
            greeting_s=self.greeting_s,
            after_greeting_silence_s=self.after_greeting_silence_s,
            until_greeting_end=self.until_greeting_end,
        )


@dataclass(frozen=True, slots=True)
class MediaPorts:
    """Where each leg's phone must send RTP (our SDP's ``c=``/``m=``); RTCP goes to ``port + 1``."""

    a: Address
    b: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class LegStats:
    local: Address
    remote: Address | None  # from SDP
    latched: Address | None  # where its packets actually come from
    codec_pt: int | None
    telephone_event_pt: int | None
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    lost: int  # inbound, from sequence numbers
    invalid: int  # not RTP v2 / too short or too long / malformed header
    unknown_pt: int  # a payload type this leg did not negotiate (RTCP on the RTP port, comfort noise, …)
    unexpected_source: int  # valid packets from an address other than the latched one
    relatches: int
    dropped: int  # valid packets with nowhere to go
    send_errors: int
    rtcp_packets: int
    rtcp_fraction_lost: int | None  # the phone's own report about what we send it (RFC 3550 §6.4)
    rtcp_cumulative_lost: int | None
    rtcp_jitter: int | None
    idle_s: float


@dataclass(frozen=True, slots=True)
class SessionStats:
    session: SessionId
    a: LegStats
    b: LegStats


class MediaBackend(Protocol):
    async def allocate(self, session: SessionId) -> MediaPorts:
        """Reserve an RTP/RTCP port pair per leg; raises ``NoMediaPorts`` when the range is full."""
        ...

    async def update(
        self, leg: LegRef, remote: Address | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        """Apply a leg's negotiated SDP: the phone's RTP address (an IP), codec PT, telephone-event PT."""
        ...

    async def release(self, session: SessionId) -> None:
        """Free the session's ports; releasing twice is harmless."""
        ...

    async def stats(self, session: SessionId) -> SessionStats:
        """Counters per leg; raises ``NoMediaSession`` for an unknown session."""
        ...

    async def play(self, leg: LegRef, prompt: Prompt, *, loop: bool = False) -> None:
        """Play a stored prompt to the leg's phone (replacing one that plays there); ``on_play_done(leg)``
        fires when it has played out (never when looping). Media from the other leg is held back meanwhile;
        the leg's digits are still reported. ``ValueError`` when the leg has not negotiated G.711 yet."""
        ...

    async def stop_play(self, leg: LegRef) -> bool:
        """Stop the leg's prompt without ``on_play_done``; False when none was playing."""
        ...

    async def record_start(self, session: SessionId, path: Path, *, channels: Channels = "stereo") -> None:
        """Record the session to the WAV ``path`` (absolute; parent directories are made): ``"stereo"`` =
        A-leg left, B-leg right; ``"a"`` = mono of what the A-leg sends. ``ValueError`` if it already
        records."""
        ...

    async def record_stop(self, session: SessionId) -> RecordingResult | None:
        """Stop and finalise the session's recording; None when it was not recording (or is gone).
        ``RecordingFailed`` when the file could not be written. ``release`` also stops and finalises it."""

    async def stream(self, leg: LegRef) -> StreamState:
        """Where the RTP stream this leg sends to its phone stands (SSRC, seq, timestamp, age)."""
        ...

    async def amd_start(self, leg: LegRef, params: AmdParams) -> None:
        """Answering-machine detection on what the leg's phone sends, from now (``vpbx.media.amd``):
        ``on_amd(leg, event)`` gets the verdict and, when asked, the end of a machine's greeting."""
        ...

    async def amd_stop(self, leg: LegRef) -> None: ...

    async def adopt_stream(self, leg: LegRef, state: StreamState) -> None:
        """Continue another leg's stream on this one (an attended transfer moved its phone here)."""
        ...


def _addr(a: tuple[Any, ...] | None) -> Address | None:
    return None if a is None else Address(str(a[0]), int(a[1]))


def leg_stats(leg: RelayLeg, now: float, advertise_host: str) -> LegStats:
    report = leg.rtcp_report
    return LegStats(
        local=Address(advertise_host, leg.port),
        remote=leg.remote,
        latched=_addr(leg.latched),
        codec_pt=leg.codec_pt if leg.codec_pt >= 0 else None,
        telephone_event_pt=leg.te_pt if leg.te_pt >= 0 else None,
        rx_packets=leg.rx_packets,
        rx_bytes=leg.rx_bytes,
        tx_packets=leg.tx_packets,
        tx_bytes=leg.tx_bytes,
        lost=leg.lost,
        invalid=leg.invalid,
        unknown_pt=leg.unknown_pt,
        unexpected_source=leg.unexpected_source,
        relatches=leg.relatches,
        dropped=leg.dropped,
        send_errors=leg.send_errors,
        rtcp_packets=leg.rtcp_packets,
        rtcp_fraction_lost=report[0] if report else None,
        rtcp_cumulative_lost=report[1] if report else None,
        rtcp_jitter=report[2] if report else None,
        idle_s=leg.idle_for(now),
    )


class InlineMediaBackend:
    """The relay on the running loop; a watchdog reports silent legs and closes unfinished digits.

    ``ports`` is the configured ``--rtp-ports A-B`` range; sockets bind on ``bind_host`` and SDP advertises
    ``advertise_host``. ``on_media_timeout`` fires for each watched leg (one with a negotiated remote) silent
    for ``media_timeout_s``, then again after every further ``media_timeout_s`` of silence.
    """

    def __init__(
        self,
        *,
        ports: tuple[int, int],
        bind_host: str = "0.0.0.0",
        advertise_host: str = "127.0.0.1",
        clock: Clock | None = None,
        media_timeout_s: float = MEDIA_TIMEOUT_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        on_media_timeout: MediaTimeoutHook | None = None,
        on_dtmf: DigitHook | None = None,
        on_play_done: PlayDoneHook | None = None,
        on_amd: AmdHook | None = None,
    ) -> None:
        self.allocator = PortAllocator(ports[0], ports[1], host=bind_host)
        self.on_amd = on_amd
        self.advertise_host = advertise_host
        self.clock: Clock = clock or SystemClock()
        self.media_timeout_s = media_timeout_s
        self.check_interval_s = check_interval_s
        self.on_media_timeout = on_media_timeout
        self.on_dtmf = on_dtmf
        self.on_play_done = on_play_done
        self.audio = AudioCache()
        self._relay: Relay | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def relay(self) -> Relay:
        """The relay, created on the running loop at first use (and its watchdog started)."""
        if self._relay is None:
            loop = asyncio.get_running_loop()
            hook = self._dtmf if self.on_dtmf is not None else None
            self._relay = Relay(
                self.allocator,
                clock=self.clock,
                loop=loop,
                on_dtmf=hook,
                on_play_done=self._play_done,
                on_amd=self._amd,
            )
            self._timer = loop.call_later(self.check_interval_s, self._tick)
        return self._relay

    @property
    def sessions(self) -> int:
        """Open media sessions."""
        return 0 if self._relay is None else len(self._relay)

    async def allocate(self, session: SessionId) -> MediaPorts:
        rs = self.relay.open(session)
        return MediaPorts(Address(self.advertise_host, rs.a.port), Address(self.advertise_host, rs.b.port))

    async def update(
        self, leg: LegRef, remote: Address | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        self.relay.update(leg, remote, codec_pt, telephone_event_pt)

    async def release(self, session: SessionId) -> None:
        if self._relay is not None:
            self._relay.close(session)

    async def stats(self, session: SessionId) -> SessionStats:
        rs = self.relay.get(session)
        now = self.clock.monotonic()
        return SessionStats(
            session, leg_stats(rs.a, now, self.advertise_host), leg_stats(rs.b, now, self.advertise_host)
        )

    async def play(self, leg: LegRef, prompt: Prompt, *, loop: bool = False) -> None:
        self.relay.get(leg.session)  # NoMediaSession before any disk work
        audio = await self.audio.load(prompt)
        self.relay.play(leg, audio, loop=loop)

    async def stop_play(self, leg: LegRef) -> bool:
        return self.relay.stop_play(leg)

    async def record_start(self, session: SessionId, path: Path, *, channels: Channels = "stereo") -> None:
        self.relay.record_start(session, path, channels=channels)

    async def record_stop(self, session: SessionId) -> RecordingResult | None:
        if self._relay is None:
            return None
        try:
            future = self._relay.record_stop(session)
        except NoMediaSession:
            return None
        if future is None:
            return None
        try:
            async with asyncio.timeout(RECORD_STOP_TIMEOUT_S):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise RecordingFailed(f"recording of {session} was not finalised in time") from None
        except RecordingFailed:
            raise
        except Exception as e:
            raise RecordingFailed(f"recording of {session} failed: {e}") from e

    async def stream(self, leg: LegRef) -> StreamState:
        return self.relay.stream(leg)

    async def adopt_stream(self, leg: LegRef, state: StreamState) -> None:
        self.relay.adopt_stream(leg, state)

    async def amd_start(self, leg: LegRef, params: AmdParams) -> None:
        self.relay.amd_start(leg, params.detector())

    async def amd_stop(self, leg: LegRef) -> None:
        if self._relay is not None:
            self._relay.amd_stop(leg)

    def _amd(self, leg: LegRef, event: str) -> None:
        if self.on_amd is not None:
            self.on_amd(leg, event)

    def _play_done(self, leg: LegRef) -> None:
        if self.on_play_done is not None:
            self.on_play_done(leg)  # the relay logs a failing hook

    def check(self) -> list[LegRef]:
        """One watchdog round: report legs silent for ``media_timeout_s`` (re-armed), close stale digits."""
        if self._relay is None:
            return []
        now = self.clock.monotonic()
        fired: list[LegRef] = []
        for leg in self._relay.idle_legs(now, self.media_timeout_s):
            idle = leg.idle_for(now)
            leg.armed_at = now  # next report after another full period of silence
            fired.append(leg.ref)
            if self.on_media_timeout is not None:
                try:
                    self.on_media_timeout(leg.ref, idle)
                except Exception:
                    log.exception("media.timeout_hook_failed", session_id=leg.ref.session, leg=leg.ref.side)
        self._relay.poll_dtmf()
        self._relay.poll_amd(now)
        self._relay.tick_recordings()
        return fired

    def _dtmf(self, leg: LegRef, digit: Digit) -> None:
        if self.on_dtmf is None:
            return
        try:
            self.on_dtmf(leg, digit)
        except Exception:  # a failing subscriber must not stall the drain loop
            log.exception("media.dtmf_hook_failed", session_id=leg.session, leg=leg.side)

    async def aclose(self) -> None:
        """Stop the watchdog and close every session."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._relay is not None:
            self._relay.close_all()
            self._relay = None

    def _tick(self) -> None:
        try:
            self.check()
        finally:
            if self._relay is not None:
                self._timer = asyncio.get_running_loop().call_later(self.check_interval_s, self._tick)


def _address(value: object) -> Address | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"not an address: {value!r}")
    return Address(str(value[0]), int(value[1]))


def leg_stats_from(data: dict[str, Any], advertise_host: str) -> LegStats:
    """A worker's ``stats`` reply for one leg (``dataclasses.asdict`` of ``LegStats``), our host as local."""
    fields = dict(data)
    local = _address(fields.pop("local"))
    return LegStats(
        local=Address(advertise_host, local.port if local is not None else 0),
        remote=_address(fields.pop("remote")),
        latched=_address(fields.pop("latched")),
        **fields,
    )


def recording_result_from(data: dict[str, Any]) -> RecordingResult | None:
    """A worker's ``record_stop`` reply (empty: the session was not recording)."""
    if not data.get("path"):
        return None
    return RecordingResult(
        path=Path(str(data["path"])),
        duration_s=float(data["duration_s"]),
        frames=int(data["frames"]),
        channels=int(data.get("channels", 2)),
    )


class WorkerMediaBackend:
    """The relay in ``workers`` processes (``media.mode = "workers"``, telephony.md §2, §3.9).

    The port range is split between the workers; each session goes to the least loaded live worker (the next
    one if that worker's range is full) and stays there. Events come back over the control socket:
    ``on_media_timeout``, ``on_dtmf`` and ``on_play_done`` fire as with ``InlineMediaBackend`` (a play_done
    that crossed a newer ``play`` or a ``stop_play`` of its leg is dropped). When a worker dies, each of its
    sessions is forgotten and reported: to ``on_session_lost`` when set, else as ``on_media_timeout`` for leg
    ``a`` (so the B2BUA BYEs the call if it is connected and not held); the supervisor restarts the worker.
    ``start`` before use, ``aclose`` at the end.
    """

    def __init__(
        self,
        *,
        ports: tuple[int, int],
        workers: int = 1,
        bind_host: str = "0.0.0.0",
        advertise_host: str = "127.0.0.1",
        media_timeout_s: float = MEDIA_TIMEOUT_S,
        check_interval_s: float = CHECK_INTERVAL_S,
        on_media_timeout: MediaTimeoutHook | None = None,
        on_dtmf: DigitHook | None = None,
        on_play_done: PlayDoneHook | None = None,
        on_session_lost: SessionLostHook | None = None,
        on_amd: AmdHook | None = None,
        loop: str = "auto",
        log_level: str = "info",
        log_json: bool = False,
    ) -> None:
        from vpbx.media.supervisor import MediaSupervisor, WorkerConfig, split_ports

        self.advertise_host = advertise_host
        self.on_media_timeout = on_media_timeout
        self.on_dtmf = on_dtmf
        self.on_play_done = on_play_done
        self.on_session_lost = on_session_lost
        self.on_amd = on_amd
        configs = [
            WorkerConfig(
                ports=slice_,
                bind_host=bind_host,
                media_timeout_s=media_timeout_s,
                check_interval_s=check_interval_s,
                dtmf=on_dtmf is not None,
                loop=loop,
                log_level=log_level,
                log_json=log_json,
            )
            for slice_ in split_ports(ports, workers)
        ]
        self.supervisor = MediaSupervisor(configs, on_event=self._event, on_dead=self._dead)
        self._where: dict[str, WorkerProcess] = {}
        self._ports: dict[str, MediaPorts] = {}
        self._plays: dict[LegRef, int] = {}  # the play id each playing leg's play_done must carry
        self._play_seq = 0

    @property
    def workers(self) -> list[WorkerProcess]:
        return self.supervisor.workers

    async def start(self) -> None:
        await self.supervisor.start()

    async def aclose(self) -> None:
        """Stop every worker (their sessions end with them)."""
        await self.supervisor.aclose()
        self._where.clear()
        self._ports.clear()
        self._plays.clear()

    async def allocate(self, session: SessionId) -> MediaPorts:
        if session in self._ports:
            return self._ports[session]
        candidates = sorted((w for w in self.workers if w.alive), key=lambda w: w.sessions)
        for worker in candidates:
            worker.sessions += 1  # counted before the await, so concurrent calls spread
            try:
                result = await worker.request("allocate", session=session)
            except (NoMediaPorts, WorkerUnavailable) as e:
                worker.sessions -= 1
                log.warning("media.allocate_failed", session_id=session, worker=worker.name, error=str(e))
                continue
            ports = MediaPorts(
                Address(self.advertise_host, int(result["a"])), Address(self.advertise_host, int(result["b"]))
            )
            self._where[session] = worker
            self._ports[session] = ports
            return ports
        raise NoMediaPorts(f"no media worker could allocate ports ({len(candidates)} live)")

    async def update(
        self, leg: LegRef, remote: Address | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        worker = self._worker(leg.session)
        await worker.request(
            "update",
            session=leg.session,
            side=leg.side,
            remote=None if remote is None else [remote.host, remote.port],
            codec_pt=codec_pt,
            telephone_event_pt=telephone_event_pt,
        )

    async def play(self, leg: LegRef, prompt: Prompt, *, loop: bool = False) -> None:
        worker = self._worker(leg.session)
        self._play_seq += 1
        play_id = self._play_seq
        self._plays[leg] = play_id
        try:
            await worker.request(
                "play",
                session=leg.session,
                side=leg.side,
                prompt=prompt.id,
                pcma=str(prompt.pcma),
                pcmu=str(prompt.pcmu),
                loop=loop,
                play_id=play_id,
            )
        except BaseException:
            if self._plays.get(leg) == play_id:
                del self._plays[leg]
            raise

    async def stop_play(self, leg: LegRef) -> bool:
        worker = self._worker(leg.session)
        self._plays.pop(leg, None)
        result = await worker.request("stop_play", session=leg.session, side=leg.side)
        return bool(result.get("stopped"))

    async def record_start(self, session: SessionId, path: Path, *, channels: Channels = "stereo") -> None:
        await self._worker(session).request(
            "record_start", session=session, path=str(path), channels=channels
        )

    async def record_stop(self, session: SessionId) -> RecordingResult | None:
        worker = self._where.get(session)
        if worker is None:
            return None
        result = await worker.request("record_stop", session=session)
        return recording_result_from(result)

    async def stream(self, leg: LegRef) -> StreamState:
        result = await self._worker(leg.session).request("stream", session=leg.session, side=leg.side)
        return StreamState(
            int(result["ssrc"]), int(result["seq"]), int(result["timestamp"]), float(result["age_s"])
        )

    async def adopt_stream(self, leg: LegRef, state: StreamState) -> None:
        await self._worker(leg.session).request(
            "adopt_stream", session=leg.session, side=leg.side, **state._asdict()
        )

    async def amd_start(self, leg: LegRef, params: AmdParams) -> None:
        await self._worker(leg.session).request(
            "amd_start", session=leg.session, side=leg.side, **dataclasses.asdict(params)
        )

    async def amd_stop(self, leg: LegRef) -> None:
        worker = self._where.get(leg.session)
        if worker is not None:
            await worker.request("amd_stop", session=leg.session, side=leg.side)

    async def release(self, session: SessionId) -> None:
        self._forget_plays({session})
        worker = self._where.pop(session, None)
        self._ports.pop(session, None)
        if worker is None:
            return
        worker.sessions -= 1
        if worker.alive:
            try:
                await worker.request("release", session=session)
            except WorkerUnavailable as e:
                log.warning("media.release_failed", session_id=session, worker=worker.name, error=str(e))

    async def stats(self, session: SessionId) -> SessionStats:
        result = await self._worker(session).request("stats", session=session)
        return SessionStats(
            session,
            leg_stats_from(result["a"], self.advertise_host),
            leg_stats_from(result["b"], self.advertise_host),
        )

    def _worker(self, session: SessionId) -> WorkerProcess:
        worker = self._where.get(session)
        if worker is None:
            raise NoMediaSession(session)
        return worker

    def _event(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        session = str(message.get("session", ""))
        if self._where.get(session) is not worker:
            return  # released meanwhile
        side = message.get("side")
        if side not in ("a", "b"):
            return
        leg = LegRef(SessionId(session), "a" if side == "a" else "b")
        kind = message.get("event")
        if kind == "media_timeout" and self.on_media_timeout is not None:
            self.on_media_timeout(leg, float(message.get("idle_s", 0.0)))
        elif kind == "dtmf" and self.on_dtmf is not None:
            digit = Digit(
                digit=str(message["digit"]),
                timestamp=int(message["timestamp"]),
                duration=int(message["duration"]),
                ended=bool(message["ended"]),
            )
            self.on_dtmf(leg, digit)
        elif kind == "amd" and self.on_amd is not None:
            self.on_amd(leg, str(message.get("result", "")))
        elif kind == "play_done":
            if self._plays.get(leg) != message.get("play_id"):
                return  # a newer play or a stop_play of this leg crossed it
            del self._plays[leg]
            if self.on_play_done is not None:
                self.on_play_done(leg)

    def _forget_plays(self, sessions: set[str]) -> None:
        for leg in [leg for leg in self._plays if leg.session in sessions]:
            del self._plays[leg]

    def _dead(self, worker: WorkerProcess) -> None:
        lost = [s for s, w in self._where.items() if w is worker]
        for session in lost:
            del self._where[session]
            self._ports.pop(session, None)
        worker.sessions = 0
        self._forget_plays(set(lost))
        log.error("media.worker_lost_sessions", worker=worker.name, sessions=len(lost))
        for session in lost:
            try:
                if self.on_session_lost is not None:
                    self.on_session_lost(SessionId(session))
                elif self.on_media_timeout is not None:
                    self.on_media_timeout(LegRef(SessionId(session), "a"), 0.0)
            except Exception:
                log.exception("media.session_lost_hook_failed", session_id=session)
