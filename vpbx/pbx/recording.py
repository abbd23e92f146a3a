"""Call recording as the engine runs it (telephony.md §3.10): whether, start, stop, encode, expire.

A call is recorded when its domain records every call or a user party of it asked for their calls to be
recorded (``wants_recording``). ``CallRecordings.start`` runs at the first ``connected``: the media backend
records the session to a WAV next to where its MP3 will be, and a ``Recording`` row says ``recording``.
``stop`` runs at the call's end, before its media is released: the WAV is finalised, the row goes to
``encoding`` and a background job encodes the MP3 in the process pool (``vpbx.media.recorder.Mp3Encoder``),
then marks the row ``ready`` (duration, size, ``ready_at``) and deletes the WAV, or ``failed``. ``stop``
answers whether a recording was made, which ``end`` carries as ``is_record``.

``RetentionSweep`` deletes recordings whose ``expires_at`` (set at start: now + the domain's
``recording_retention_days``) has passed, files first, hourly. At start-up, rows a crash left in
``recording`` or ``encoding`` are finished from their WAV when it is there (its header patched to the data it
holds: a killed signalling process leaves the workers to finalise theirs, an inline relay does not), else
marked ``failed`` (``recover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.background import BackgroundLoop
from vpbx.errors import MediaError, RecordingFailed
from vpbx.logs import get_logger
from vpbx.store.models import Recording

if TYPE_CHECKING:
    from vpbx.clock import Clock
    from vpbx.media.backend import MediaBackend
    from vpbx.media.recorder import Mp3Encoder, RecordingStore
    from vpbx.pbx.bus import SessionId
    from vpbx.pbx.calls import Call, Directory

log = get_logger("vpbx.pbx.recording")

SWEEP_INTERVAL_S = 3600.0  # retention sweep: hourly
SWEEP_BATCH = 500  # rows deleted per query
DRAIN_TIMEOUT_S = 55.0  # at shutdown, encodes still running get this long


async def wants_recording(call: Call, directory: Directory | None) -> bool:
    """The domain records every call, or a user on either end asked for theirs (from the directory)."""
    if call.domain.record_calls:
        return True
    for party in (call.caller, call.callee):
        if party.record_calls:
            return True
        if party.user_id is not None and party.pin and directory is not None:
            found = await directory.user_by_pin(call.domain, party.pin)
            if found is not None and found.user_id == party.user_id and found.record_calls:
                return True
    return False


@dataclass(slots=True)
class _Active:
    row_id: uuid.UUID
    name: str


class CallRecordings:
    """The engine's side of recording; one per node."""

    def __init__(
        self,
        *,
        media: MediaBackend,
        store: RecordingStore,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        encoder: Mp3Encoder,
    ) -> None:
        self.media = media
        self.store = store
        self.sessions = sessions
        self.clock = clock
        self.encoder = encoder
        self._active: dict[str, _Active] = {}
        self._jobs: set[asyncio.Task[None]] = set()

    def recording(self, session: SessionId) -> bool:
        return session in self._active

    async def start(self, call: Call) -> bool:
        """Record the call from now; False (logged) when it cannot be (never a reason to drop the call)."""
        session = call.session_id
        if session in self._active:
            return True
        now = self.clock.now()
        name = self.store.new_name(call.domain.id, session, now)
        row_id = uuid.uuid4()
        try:
            await self.media.record_start(session, self.store.wav_path(name))
        except (MediaError, ValueError, OSError) as e:
            log.error("recording.start_failed", session_id=session, error=str(e))
            return False
        self._active[session] = _Active(row_id, name)
        try:
            async with self.sessions() as s, s.begin():
                s.add(
                    Recording(
                        id=row_id,
                        domain_id=call.domain.id,
                        session_id=session,
                        status="recording",
                        path=name,
                        created_at=now,
                        expires_at=now + dt.timedelta(days=call.domain.recording_retention_days),
                    )
                )
        except Exception:
            log.exception("recording.row_failed", session_id=session)
            self._active.pop(session, None)
            with contextlib.suppress(Exception):
                await self.media.record_stop(session)
            self.store.delete(name)
            return False
        if call.ended_at is not None and self._active.get(session) is not None:
            await self.stop(session, salvage=False)  # the call ended while this one started
            return False
        log.info("recording.started", session_id=session, path=name)
        return True

    async def stop(self, session: SessionId, *, salvage: bool = True) -> bool:
        """Finalise the call's WAV and queue its MP3; True when a recording was made (``is_record``).

        When the media side lost the recording (its worker died, the writer failed), what reached the WAV is
        kept if ``salvage``: its header is patched to the data there and it is encoded as usual."""
        from vpbx.media.recorder import repair_wav

        active = self._active.pop(session, None)
        if active is None:
            return False
        try:
            result = await self.media.record_stop(session)
        except MediaError as e:
            log.error("recording.stop_failed", session_id=session, error=str(e))
            result = None
        duration = result.duration_s if result is not None else 0.0
        if result is None and salvage:
            try:
                duration = await asyncio.to_thread(repair_wav, self.store.wav_path(active.name)) / 8000
            except RecordingFailed:
                duration = 0.0
            if duration > 0:
                log.warning("recording.salvaged", session_id=session, duration_s=round(duration, 1))
        if result is None and duration <= 0:
            await self._set(active.row_id, status="failed")
            await asyncio.to_thread(self.store.delete, active.name)
            return False
        await self._set(active.row_id, status="encoding", duration_s=round(duration, 2))
        task = asyncio.create_task(self._encode(session, active), name=f"recording-encode-{session}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return True

    async def _encode(self, session: str, active: _Active) -> None:
        wav, mp3 = self.store.wav_path(active.name), self.store.path(active.name)
        try:
            duration = await self.encoder.encode(wav, mp3)
            size = await asyncio.to_thread(lambda: mp3.stat().st_size)
        except (RecordingFailed, OSError) as e:
            log.error("recording.encode_failed", session_id=session, error=str(e))
            await self._set(active.row_id, status="failed")
            await asyncio.to_thread(self.store.delete, active.name)
            return
        await asyncio.to_thread(wav.unlink, missing_ok=True)
        await self._set(
            active.row_id,
            status="ready",
            duration_s=round(duration, 2),
            size_bytes=size,
            ready_at=self.clock.now(),
        )
        log.info("recording.ready", session_id=session, duration_s=round(duration, 1), bytes=size)

    async def _set(self, row_id: uuid.UUID, **values: object) -> None:
        try:
            async with self.sessions() as s, s.begin():
                await s.execute(update(Recording).where(Recording.id == row_id).values(**values))
        except Exception:
            log.exception("recording.row_update_failed", recording_id=str(row_id))

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait for the encodes in flight (at shutdown), at most ``timeout_s``."""
        jobs = list(self._jobs)
        if jobs:
            await asyncio.wait(jobs, timeout=timeout_s)

    async def recover(self) -> tuple[int, int]:
        """Rows a crash (or a stop) left ``recording`` or ``encoding``: a WAV that is there is given its true
        length and encoded as usual; the others are marked ``failed``. Returns (encoding, failed)."""
        from vpbx.media.recorder import repair_wav

        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(Recording.id, Recording.path, Recording.session_id).where(
                        Recording.status.in_(("recording", "encoding"))
                    )
                )
            ).all()
        encoding = failed = 0
        for r in rows:
            try:
                frames = await asyncio.to_thread(repair_wav, self.store.wav_path(r.path))
            except (RecordingFailed, ValueError) as e:
                log.warning("recording.not_recovered", session_id=r.session_id, error=str(e))
                await self._set(r.id, status="failed")
                with contextlib.suppress(ValueError, OSError):
                    await asyncio.to_thread(self.store.delete, r.path)
                failed += 1
                continue
            await self._set(r.id, status="encoding", duration_s=round(frames / 8000, 2))
            task = asyncio.create_task(
                self._encode(r.session_id, _Active(r.id, r.path)), name=f"recording-recover-{r.session_id}"
            )
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
            encoding += 1
        if rows:
            log.warning("recording.recovered", encoding=encoding, failed=failed)
        return encoding, failed


class RetentionSweep(BackgroundLoop):
    """Deletes expired recordings (files, then rows) every ``interval_s``; ``sweep`` is one round."""

    name = "recording-retention"
    failure_event = "recording.sweep_failed"

    def __init__(
        self,
        *,
        store: RecordingStore,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.clock = clock
        self.interval_s = interval_s

    async def run_once(self) -> float | None:
        await self.sweep()
        return None

    async def sweep(self) -> int:
        """Delete every recording expired by now; how many went."""
        now = self.clock.now()
        total = 0
        while True:
            async with self.sessions() as s:
                rows = (
                    await s.execute(
                        select(Recording.id, Recording.path)
                        .where(Recording.expires_at <= now)
                        .limit(SWEEP_BATCH)
                    )
                ).all()
            if not rows:
                return total
            for r in rows:
                try:
                    await asyncio.to_thread(self.store.delete, r.path)
                except ValueError:
                    log.warning("recording.bad_path", recording_id=str(r.id))
                except OSError as e:  # keep the row: the next round tries again
                    log.error("recording.delete_failed", recording_id=str(r.id), error=str(e))
                    return total
            async with self.sessions() as s, s.begin():
                await s.execute(delete(Recording).where(Recording.id.in_([r.id for r in rows])))
            total += len(rows)
            log.info("recording.expired", count=len(rows))
