"""Call recording in the engine (telephony.md §3.10): who is recorded, the Recording row's life
(recording → encoding → ready, or failed), ``end`` with is_record, the retention sweep on a fake clock and
the start-up recovery. The media backend is the kit's fake, extended to write a real WAV; the MP3 encoder
is the real process pool."""

from __future__ import annotations

import datetime as dt
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.unit.pbx.b2bua_kit import FakeMedia, Pbx, Phone
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.media.capture import Channels, RecordingResult
from vpbx.media.recorder import LocalRecordingStore, Mp3Encoder
from vpbx.pbx.bus import SessionId
from vpbx.pbx.recording import CallRecordings, RetentionSweep
from vpbx.store.models import Domain, Recording, User

A_HOST, B_HOST = "192.0.2.10", "192.0.2.20"
SECONDS = 2


class RecordingMedia(FakeMedia):
    """The kit's media, and a recorder that writes ``SECONDS`` of stereo silence at stop."""

    def __init__(self) -> None:
        super().__init__()
        self.recording: dict[str, tuple[Path, Channels]] = {}

    async def record_start(self, session: SessionId, path: Path, *, channels: Channels = "stereo") -> None:
        if session in self.recording:
            raise ValueError("already recording")
        self.recording[session] = (path, channels)

    async def record_stop(self, session: SessionId) -> RecordingResult | None:
        found = self.recording.pop(session, None)
        if found is None:
            return None
        path, _ = found
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(bytes(4 * 8000 * SECONDS))
        return RecordingResult(path=path, duration_s=float(SECONDS), frames=50 * SECONDS)


@pytest.fixture
async def encoder() -> AsyncIterator[Mp3Encoder]:
    enc = Mp3Encoder(workers=1, timeout_s=30.0)
    yield enc
    await enc.aclose()


@pytest.fixture
async def pbx(core: Core, encoder: Mp3Encoder) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    p.media = RecordingMedia()
    p.b2bua.media = p.media
    p.b2bua.recordings = CallRecordings(
        media=p.media, store=core.recordings, sessions=core.sessions, clock=core.clock, encoder=encoder
    )
    yield p
    await p.node.stop()


async def set_flags(core: Core, *, domain: bool = False, user_pin: str | None = None) -> None:
    async with core.sessions() as s, s.begin():
        await s.execute(update(Domain).values(record_calls=domain, recording_retention_days=30))
        if user_pin is not None:
            await s.execute(update(User).where(User.pin == user_pin).values(record_calls=True))


async def talk_and_hang_up(pbx: Pbx) -> SessionId:
    alice = pbx.phone("101", A_HOST)
    bob = pbx.phone("102", B_HOST)
    await pbx.register(bob)
    out = await alice.call("102")
    incoming = await bob.ringing()
    await incoming.answer()
    await out.answered()
    await out.send("BYE")
    await alice.expect(200)
    assert pbx.events() == ["new", "calling", "connected", "disconnected", "end"]
    return pbx.bus.events[0].session_id


async def rows(core: Core) -> list[Recording]:
    async with core.sessions() as s:
        return list((await s.execute(select(Recording))).scalars())


async def test_a_domain_that_records_every_call_gets_a_ready_mp3(pbx: Pbx, core: Core) -> None:
    await set_flags(core, domain=True)
    session = await talk_and_hang_up(pbx)
    assert pbx.bus.events[-1].is_record is True
    assert pbx.b2bua.recordings is not None
    await pbx.b2bua.recordings.drain(30.0)
    (row,) = await rows(core)
    assert row.session_id == session and row.status == "ready" and row.duration_s == pytest.approx(SECONDS)
    assert row.size_bytes > 0 and row.ready_at is not None
    assert row.expires_at is not None and row.expires_at - row.created_at == dt.timedelta(days=30)
    assert row.path.startswith(f"{pbx.domain_id}/") and row.path.endswith(f"{session}.mp3")
    assert core.recordings.path(row.path).stat().st_size == row.size_bytes
    assert not core.recordings.wav_path(row.path).exists(), "the WAV is deleted once the MP3 is ready"


async def test_a_user_who_records_their_calls_is_recorded_as_the_callee(pbx: Pbx, core: Core) -> None:
    await set_flags(core, user_pin="102")
    await talk_and_hang_up(pbx)
    assert pbx.bus.events[-1].is_record is True
    assert pbx.b2bua.recordings is not None
    await pbx.b2bua.recordings.drain(30.0)
    assert [r.status for r in await rows(core)] == ["ready"]


async def test_nobody_asked_so_nothing_is_recorded(pbx: Pbx, core: Core) -> None:
    await talk_and_hang_up(pbx)
    assert pbx.bus.events[-1].is_record is False
    assert await rows(core) == []
    assert isinstance(pbx.media, RecordingMedia) and pbx.media.recording == {}


async def test_an_unanswered_call_is_not_recorded(pbx: Pbx, core: Core) -> None:
    await set_flags(core, domain=True)
    alice: Phone = pbx.phone("101", A_HOST)
    bob = pbx.phone("102", B_HOST)
    await pbx.register(bob)
    out = await alice.call("102")
    await bob.ringing()
    await out.cancel()
    assert pbx.events()[-1] == "end" and pbx.bus.events[-1].is_record is False
    assert await rows(core) == []


async def test_a_recording_whose_file_is_lost_is_marked_failed(pbx: Pbx, core: Core) -> None:
    await set_flags(core, domain=True)
    media = pbx.media
    assert isinstance(media, RecordingMedia)

    async def lost(session: SessionId) -> RecordingResult | None:
        media.recording.pop(session, None)
        return None

    media.record_stop = lost  # type: ignore[method-assign]
    await talk_and_hang_up(pbx)
    assert pbx.bus.events[-1].is_record is False
    assert [r.status for r in await rows(core)] == ["failed"]


async def test_what_reached_the_wav_is_kept_when_the_media_side_lost_the_recording(
    pbx: Pbx, core: Core
) -> None:
    await set_flags(core, domain=True)
    media = pbx.media
    assert isinstance(media, RecordingMedia)
    real_stop = media.record_stop

    async def worker_died(session: SessionId) -> RecordingResult | None:
        result = await real_stop(session)  # the file is there (2 s), but nobody answers for it
        assert result is not None
        data = bytearray(result.path.read_bytes())
        data[40:44] = bytes(4)  # its header never patched
        result.path.write_bytes(bytes(data))
        return None

    media.record_stop = worker_died  # type: ignore[method-assign]
    await talk_and_hang_up(pbx)
    assert pbx.bus.events[-1].is_record is True
    assert pbx.b2bua.recordings is not None
    await pbx.b2bua.recordings.drain(30.0)
    (row,) = await rows(core)
    assert row.status == "ready" and row.duration_s == pytest.approx(SECONDS)


async def add_row(core: Core, store: LocalRecordingStore, domain_id: uuid.UUID, expires: dt.datetime) -> str:
    name = store.new_name(domain_id, uuid.uuid4().hex, expires)
    store.path(name).parent.mkdir(parents=True, exist_ok=True)
    store.path(name).write_bytes(b"mp3")
    async with core.sessions() as s, s.begin():
        s.add(
            Recording(
                domain_id=domain_id, session_id=name[-20:], status="ready", path=name, expires_at=expires
            )
        )
    return name


async def test_the_retention_sweep_deletes_expired_files_and_rows(pbx: Pbx, core: Core) -> None:
    clock = FakeClock(dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC))
    store = core.recordings
    old = await add_row(core, store, pbx.domain_id, clock.now() + dt.timedelta(hours=1))
    new = await add_row(core, store, pbx.domain_id, clock.now() + dt.timedelta(days=2))
    sweep = RetentionSweep(store=store, sessions=core.sessions, clock=clock)
    assert await sweep.sweep() == 0
    clock.advance(3600)
    assert await sweep.sweep() == 1
    assert not store.path(old).exists() and store.path(new).exists()
    assert [r.path for r in await rows(core)] == [new]
    clock.advance(2 * 86400)
    assert await sweep.sweep() == 1 and await rows(core) == []


async def test_recover_marks_what_a_crash_left_half_way_as_failed(pbx: Pbx, core: Core) -> None:
    store = core.recordings
    name = await add_row(core, store, pbx.domain_id, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    store.wav_path(name).write_bytes(b"RIFF")
    async with core.sessions() as s, s.begin():
        await s.execute(update(Recording).values(status="recording"))
    assert pbx.b2bua.recordings is not None
    assert await pbx.b2bua.recordings.recover() == (0, 1)
    assert [r.status for r in await rows(core)] == ["failed"]
    assert not store.wav_path(name).exists()
    assert await pbx.b2bua.recordings.recover() == (0, 0)


async def test_recover_finishes_a_wav_its_writer_never_finalised(pbx: Pbx, core: Core) -> None:
    store = core.recordings
    name = await add_row(core, store, pbx.domain_id, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    wav = store.wav_path(name)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(4 * 8000 * 3))
    data = bytearray(wav.read_bytes())
    data[4:8] = data[40:44] = bytes(4)  # what a killed writer leaves: sizes never patched
    wav.write_bytes(bytes(data) + b"\x01")  # and half a frame
    store.path(name).unlink()
    async with core.sessions() as s, s.begin():
        await s.execute(update(Recording).values(status="recording"))
    recordings = pbx.b2bua.recordings
    assert recordings is not None
    assert await recordings.recover() == (1, 0)
    await recordings.drain(30.0)
    (row,) = await rows(core)
    assert row.status == "ready" and row.duration_s == pytest.approx(3.0)
    assert store.path(name).stat().st_size == row.size_bytes and not wav.exists()
