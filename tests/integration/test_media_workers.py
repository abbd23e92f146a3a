"""``WorkerMediaBackend`` with real worker processes (telephony.md §2, §3.9): RTP through a worker, events
back over the control socket, sessions spread over workers, a killed worker's calls reported and the worker
restarted, and nothing left behind after ``aclose``.

The phones are UDP sockets of this process on loopback; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.process import descendants
from tests.integration.peers.vpbx import Vpbx
from vpbx.errors import NoMediaPorts, NoMediaSession, WorkerUnavailable
from vpbx.media.backend import WorkerMediaBackend
from vpbx.media.dtmf import Digit, digit_payloads
from vpbx.media.g711 import ALAW_TO_ULAW
from vpbx.media.relay import Address, LegRef
from vpbx.media.supervisor import STUCK_AFTER_TIMEOUTS, WorkerConfig, WorkerProcess
from vpbx.pbx.bus import SessionId

WAIT_S = 10.0
RECV_TIMEOUT_S = 2.0
PAYLOAD = 160
_HDR = struct.Struct("!BBHII")


def rtp(
    seq: int, *, pt: int = 0, payload: bytes = b"\xff" * PAYLOAD, ssrc: int = 0x1234, ts: int = 0
) -> bytes:
    return _HDR.pack(0x80, pt, seq, ts or seq * PAYLOAD, ssrc) + payload


class Phone:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()
        return Address(host, port)

    def send(self, data: bytes, to: Address) -> None:
        self.sock.sendto(data, (to.host, to.port))

    async def recv(self) -> bytes:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RECV_TIMEOUT_S):
            return await loop.sock_recv(self.sock, 2048)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def phones() -> Iterator[tuple[Phone, Phone]]:
    a, b = Phone(), Phone()
    yield a, b
    a.close()
    b.close()


class Recorder:
    def __init__(self) -> None:
        self.timeouts: list[LegRef] = []
        self.digits: list[tuple[LegRef, Digit]] = []
        self.changed = asyncio.Event()

    def on_media_timeout(self, leg: LegRef, _idle_s: float) -> None:
        self.timeouts.append(leg)
        self.changed.set()

    def on_dtmf(self, leg: LegRef, digit: Digit) -> None:
        self.digits.append((leg, digit))
        self.changed.set()


@contextlib.asynccontextmanager
async def backend(
    recorder: Recorder, *, workers: int = 1, pairs_per_worker: int = 8, media_timeout_s: float = 3600.0
) -> AsyncIterator[WorkerMediaBackend]:
    first = free_port_block(2 * pairs_per_worker * workers + 1)
    first += first & 1
    media = WorkerMediaBackend(
        ports=(first, first + 2 * pairs_per_worker * workers - 1),
        workers=workers,
        bind_host="127.0.0.1",
        advertise_host="127.0.0.1",
        media_timeout_s=media_timeout_s,
        check_interval_s=0.1,
        on_media_timeout=recorder.on_media_timeout,
        on_dtmf=recorder.on_dtmf,
        log_level="warning",
    )
    await media.start()
    try:
        yield media
    finally:
        await media.aclose()


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def connect(media: WorkerMediaBackend, sid: str, a: Phone, b: Phone, *, codec_b: int = 0) -> Address:
    session = SessionId(sid)
    ports = await media.allocate(session)
    await media.update(LegRef(session, "a"), a.address, 0, 101)
    await media.update(LegRef(session, "b"), b.address, codec_b, 101)
    return ports.a


async def test_rtp_is_relayed_through_a_worker_both_ways(phones: tuple[Phone, Phone]) -> None:
    a, b = phones
    async with backend(Recorder()) as media:
        session = SessionId("call-1")
        ports = await media.allocate(session)
        assert ports.a.host == ports.b.host == "127.0.0.1" and ports.a.port != ports.b.port
        await media.update(LegRef(session, "a"), a.address, 0, 101)
        await media.update(LegRef(session, "b"), b.address, 8, 101)  # PCMA on b: translated

        a.send(rtp(1, payload=b"\xff" * PAYLOAD), ports.a)
        got = await b.recv()
        assert got[1] & 0x7F == 8 and got[12:] == b"\xd5" * PAYLOAD  # µ-law silence → A-law silence
        b.send(rtp(7, pt=8, payload=b"\xd5" * PAYLOAD), ports.b)
        got = await a.recv()
        assert got[1] & 0x7F == 0 and got[12:] == (b"\xd5" * PAYLOAD).translate(ALAW_TO_ULAW)

        stats = await media.stats(session)
        assert (stats.a.rx_packets, stats.a.tx_packets) == (1, 1)
        assert (stats.b.rx_packets, stats.b.tx_packets) == (1, 1)
        assert stats.a.local == ports.a and stats.b.remote == b.address and stats.a.latched == a.address


async def test_commands_fail_as_they_do_inline(phones: tuple[Phone, Phone]) -> None:
    a, _b = phones
    async with backend(Recorder(), pairs_per_worker=2) as media:
        with pytest.raises(NoMediaSession):
            await media.update(LegRef(SessionId("nope"), "a"), a.address, 0, None)
        with pytest.raises(NoMediaSession):
            await media.stats(SessionId("nope"))
        session = SessionId("call-1")
        await media.allocate(session)
        with pytest.raises(ValueError):
            await media.update(LegRef(session, "a"), Address("phone.example", 4000), 0, None)
        with pytest.raises(NoMediaPorts):
            await media.allocate(SessionId("call-2"))  # two pairs: one call's worth
        await media.release(session)
        await media.release(session)  # harmless
        await media.allocate(SessionId("call-2"))


async def test_silent_leg_and_digits_come_back_as_events(phones: tuple[Phone, Phone]) -> None:
    a, b = phones
    recorder = Recorder()
    async with backend(recorder, media_timeout_s=0.5) as media:
        port_a = await connect(media, "call-1", a, b)
        for i, payload in enumerate(digit_payloads("5")):
            a.send(rtp(100 + i, pt=101, payload=payload, ts=8000), port_a)
        await wait_until(lambda: bool(recorder.digits), timeout_s=WAIT_S, what="the digit event")
        leg, digit = recorder.digits[0]
        assert leg == LegRef(SessionId("call-1"), "a") and digit.digit == "5" and digit.ended
        await wait_until(
            lambda: {leg.side for leg in recorder.timeouts} == {"a", "b"},
            timeout_s=WAIT_S,
            what="media timeouts on both legs",
        )
        assert {leg.session for leg in recorder.timeouts} == {"call-1"}


async def test_sessions_go_to_the_least_loaded_worker() -> None:
    async with backend(Recorder(), workers=2) as media:
        for i in range(4):
            await media.allocate(SessionId(f"call-{i}"))
        assert [w.sessions for w in media.workers] == [2, 2]
        await media.release(SessionId("call-0"))
        await media.release(SessionId("call-2"))
        loads = [w.sessions for w in media.workers]
        await media.allocate(SessionId("call-4"))
        assert min(loads) + 1 == min(w.sessions for w in media.workers) or loads[0] == loads[1]
        assert sum(w.sessions for w in media.workers) == 3


async def test_a_killed_worker_ends_its_calls_and_is_restarted(phones: tuple[Phone, Phone]) -> None:
    a, b = phones
    recorder = Recorder()
    async with backend(recorder, workers=2) as media:
        await media.allocate(SessionId("call-0"))
        await media.allocate(SessionId("call-1"))
        victim = media._where["call-1"]
        survivor = media._where["call-0"]
        assert victim is not survivor
        old_pid = victim.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)

        await wait_until(lambda: bool(recorder.timeouts), timeout_s=WAIT_S, what="the dead worker's call")
        assert recorder.timeouts == [LegRef(SessionId("call-1"), "a")]
        with pytest.raises(NoMediaSession):
            await media.stats(SessionId("call-1"))
        await wait_until(lambda: victim.alive, timeout_s=WAIT_S, what="the worker's restart")
        assert victim.pid != old_pid and victim.restarts == 1 and not process_exists(old_pid)

        # the restarted worker carries calls again, and the other one never noticed
        await media.release(SessionId("call-0"))
        port_a = await connect(media, "call-2", a, b)
        assert media._where["call-2"] in (victim, survivor)
        a.send(rtp(1), port_a)
        assert len(await b.recv()) == 12 + PAYLOAD


async def test_a_stuck_worker_is_killed_and_restarted() -> None:
    """SIGSTOP: the process lives but answers nothing; after three timed-out commands it is replaced."""
    recorder = Recorder()
    async with backend(recorder) as media:
        await media.allocate(SessionId("call-1"))
        worker = media.workers[0]
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(STUCK_AFTER_TIMEOUTS):
                with pytest.raises(WorkerUnavailable):
                    await media.stats(SessionId("call-1"))
            await wait_until(
                lambda: bool(recorder.timeouts), timeout_s=WAIT_S, what="the stuck worker's call"
            )
            await wait_until(lambda: worker.alive, timeout_s=WAIT_S, what="the worker's restart")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert worker.pid != pid and not process_exists(pid)
        assert recorder.timeouts == [LegRef(SessionId("call-1"), "a")]
        await media.allocate(SessionId("call-2"))


async def test_a_lost_session_goes_to_its_own_hook_when_one_is_set() -> None:
    recorder = Recorder()
    lost: list[str] = []
    async with backend(recorder) as media:
        media.on_session_lost = lost.append
        await media.allocate(SessionId("call-1"))
        pid = media.workers[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: bool(lost), timeout_s=WAIT_S, what="the lost session")
        assert lost == ["call-1"] and recorder.timeouts == []


async def test_aclose_stops_every_worker() -> None:
    async with backend(Recorder(), workers=2) as media:
        await media.allocate(SessionId("call-1"))
        pids = [w.pid for w in media.workers]
    assert all(pid is not None and not process_exists(pid) for pid in pids)
    assert not any(w.alive for w in media.workers)


async def test_a_worker_exits_when_its_supervisor_goes_away(tmp_path: Path) -> None:
    """EOF on the control socket (the signalling process died) ends the worker: no orphans."""
    first = free_port_block(4)
    first += first & 1
    config = WorkerConfig(ports=(first, first + 3), bind_host="127.0.0.1")
    worker = WorkerProcess(0, config, lambda _worker, _event: None)
    await worker.start()
    pid = worker.pid
    assert pid is not None
    channel = worker._channel
    assert channel is not None
    await channel.aclose()  # as if our process had vanished: no shutdown command, just EOF
    rc = await worker.wait_dead()
    assert rc == 0 and not process_exists(pid)


# --- vpbx serve ---------------------------------------------------------------------------------------------


async def test_serve_runs_media_workers_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    """``vpbx serve`` (media_mode "workers" by default) starts its workers; SIGTERM leaves none behind."""
    # an events file gives the bus a subscriber: InProcessBus.stop() fails with none (asyncio.wait of nothing)
    env = {"VPBX_MEDIA_WORKERS": "2", "VPBX_DEBUG_CALL_EVENTS_FILE": str(tmp_path / "events.jsonl")}
    async with Vpbx.running(tmp_path, users={"101": "secret-101"}, env=env) as vpbx:
        workers = [pid for pid in descendants(vpbx.proc.pid) if pid != vpbx.proc.pid]
        assert len(workers) == 2
        assert all("vpbx.media.worker" in cmdline(pid) for pid in workers)
        vpbx.proc.send_signal(signal.SIGTERM)
        assert await vpbx.proc.wait(WAIT_S) == 0
        # before stop() would SIGKILL the process group: the workers must already be gone
        assert not [pid for pid in workers if process_exists(pid)]
