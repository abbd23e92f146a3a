"""Voicemail («Голосовая почта»): boxes of users and groups, their messages, and what the call engine needs.

A box belongs to one user or one group of a domain. Its greeting is text spoken by espeak-ng (Russian or
English; a default text when empty) or an uploaded WAV/MP3; both become prompts of ``vpbx.media.prompts`` and
the box keeps the prompt id (a ``DomainPrompt`` row lets the cabinet play it to that domain only). A user's
box may also take the calls the user did not answer in the ring time (``on_no_answer``) or refused as busy
(``on_busy``); routing rules and groups' fall-throughs send calls to any box.

The call engine reads ``VoicemailTarget`` (the box, its greeting prompt, the longest message) through
``Voicemail.target``, records the caller into ``Voicemail.recording_path`` and hands the file to
``Voicemail.save``: the MP3 encoding, the ``VoicemailMessage`` row and the e-mail to ``notify_email`` run in
background tasks, never on the call path. A message shorter than ``MIN_MESSAGE_S`` is dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import math
import smtplib
import ssl
import struct
import uuid
import wave
import zoneinfo
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select

from vpbx.errors import MediaError, NotFound
from vpbx.logs import get_logger
from vpbx.media.prompts import PromptError, Voice
from vpbx.media.recorder import encode_mp3
from vpbx.pbx.menus import record_prompt, speak, store_upload
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import CallGroup, Domain, DomainId, User, VoicemailBox, VoicemailMessage

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.media.prompts import PromptStore
    from vpbx.media.recorder import Mp3Encoder
    from vpbx.settings import Settings

log = get_logger("vpbx.pbx.voicemail")

GREETING_SOURCES = ("text", "upload")
VOICES: tuple[Voice, ...] = ("ru", "en")
MAX_GREETING_TEXT = 1000
MAX_FILE_NAME = 255
MAX_MESSAGE_RANGE = (10, 600)  # seconds; the schema's check constraint
DEFAULT_MAX_MESSAGE_S = 120
MIN_MESSAGE_S = 1.0  # shorter: the caller hung up at the beep, nothing worth keeping
SAMPLE_RATE = 8000  # the recorder's PCM: 8 kHz mono s16
BEEP_HZ, BEEP_S = 1000, 0.4
VOICEMAIL_DIR = "voicemail"
STOP_GRACE_S = 10.0  # shutdown waits this long for messages being saved
DEFAULT_GREETING: dict[Voice, str] = {
    "ru": "Здравствуйте. Сейчас никто не может ответить. Оставьте сообщение после сигнала. "
    "Чтобы закончить, нажмите решётку или положите трубку.",
    "en": "Hello. Nobody can answer right now. Please leave a message after the tone. "
    "To finish, press the hash key or hang up.",
}


# --- the cabinet's side: boxes -------------------------------------------------------------------------
@dataclass(kw_only=True)
class BoxInput:
    greeting_source: str = "text"
    greeting_text: str = ""  # empty: DEFAULT_GREETING in the voice
    greeting_voice: str = "ru"
    upload: bytes | None = None  # a new recording; without one an upload box keeps its own
    greeting_file_name: str = ""
    max_message_s: str | int = DEFAULT_MAX_MESSAGE_S
    notify_email: str = ""
    attach_audio: bool = True
    on_no_answer: bool = False
    on_busy: bool = False


def box_input(box: VoicemailBox | None) -> BoxInput:
    """A form's values for ``box`` (the defaults for a box not made yet)."""
    if box is None:
        return BoxInput()
    return BoxInput(
        greeting_source=box.greeting_source,
        greeting_text=box.greeting_text,
        greeting_voice=box.greeting_voice,
        greeting_file_name=box.greeting_file_name or "",
        max_message_s=box.max_message_s,
        notify_email=box.notify_email or "",
        attach_audio=box.attach_audio,
        on_no_answer=box.on_no_answer,
        on_busy=box.on_busy,
    )


async def _owner(
    s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID | None, group_id: uuid.UUID | None
) -> User | CallGroup:
    """The box's owner in this domain; another domain's user or group is ``NotFound`` like a missing one."""
    if (user_id is None) == (group_id is None):
        raise ValueError("a box belongs to a user or a group")
    if user_id is not None:
        user = await s.scalar(select(User).where(User.domain_id == domain_id, User.id == user_id))
        if user is None:
            raise NotFound("user", user_id)
        return user
    group = await s.scalar(
        select(CallGroup).where(CallGroup.domain_id == domain_id, CallGroup.id == group_id)
    )
    if group is None:
        raise NotFound("group", group_id)
    return group


async def find_box(
    s: AsyncSession,
    domain_id: uuid.UUID,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> VoicemailBox | None:
    """The box of this user or group of the domain, or None when it has none yet."""
    stmt = select(VoicemailBox).where(VoicemailBox.domain_id == domain_id)
    if user_id is not None:
        stmt = stmt.where(VoicemailBox.user_id == user_id)
    elif group_id is not None:
        stmt = stmt.where(VoicemailBox.group_id == group_id)
    else:
        return None
    box: VoicemailBox | None = await s.scalar(stmt)
    return box


async def get_box(s: AsyncSession, domain_id: uuid.UUID, box_id: uuid.UUID) -> VoicemailBox:
    box: VoicemailBox | None = await s.scalar(
        select(VoicemailBox).where(VoicemailBox.domain_id == domain_id, VoicemailBox.id == box_id)
    )
    if box is None:
        raise NotFound("voicemail box", box_id)
    return box


def _validate(d: BoxInput, current: VoicemailBox | None) -> Check:
    c = Check()
    source = c.choice("greeting_source", d.greeting_source, GREETING_SOURCES)
    c.choice("greeting_voice", d.greeting_voice, VOICES)
    d.greeting_text = c.text("greeting_text", d.greeting_text, max_len=MAX_GREETING_TEXT, required=False)
    if source == "upload" and not d.upload and (current is None or current.greeting_source != "upload"):
        c.add("greeting_file", N_("Choose a WAV or MP3 file"))
    d.greeting_file_name = d.greeting_file_name.strip()[-MAX_FILE_NAME:]
    d.max_message_s = c.integer(
        "max_message_s", d.max_message_s, lo=MAX_MESSAGE_RANGE[0], hi=MAX_MESSAGE_RANGE[1]
    )
    d.notify_email = c.email("notify_email", d.notify_email) or ""
    return c


def _voice(value: str) -> Voice:
    return "en" if value == "en" else "ru"


def greeting_text(box: VoicemailBox | BoxInput) -> str:
    """What a text greeting says: the box's text, or the default one in its voice."""
    return box.greeting_text.strip() or DEFAULT_GREETING[_voice(box.greeting_voice)]


async def speak_greeting(
    s: AsyncSession, domain_id: uuid.UUID, prompts: PromptStore, text: str, voice: str
) -> str:
    """``text`` (the default greeting when empty) as this domain's prompt; ``ValidationFailed`` if bad."""
    v = _voice(voice)
    return await speak(s, domain_id, prompts, text.strip() or DEFAULT_GREETING[v], v, field="greeting_text")


async def _store_greeting(
    s: AsyncSession, domain_id: uuid.UUID, box: VoicemailBox, d: BoxInput, prompts: PromptStore | None
) -> None:
    """Convert the upload or speak the text; a bad upload raises on ``greeting_file`` and stores nothing."""
    if d.greeting_source == "upload":
        if d.upload:
            box.greeting_prompt_id = await store_upload(s, domain_id, prompts, d.upload)
            box.greeting_file_name = d.greeting_file_name or None
        return
    box.greeting_file_name = None
    # without a prompt store the engine speaks the text on first use
    box.greeting_prompt_id = (
        await speak_greeting(s, domain_id, prompts, d.greeting_text, d.greeting_voice) if prompts else None
    )


async def save_box(
    s: AsyncSession,
    domain_id: uuid.UUID,
    data: BoxInput,
    prompts: PromptStore | None = None,
    *,
    user_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> VoicemailBox:
    """Create or update the box of a user or group of the domain. On ``ValidationFailed`` (a bad upload
    included) nothing is stored and the caller rolls back; another domain's owner is ``NotFound``."""
    await _owner(s, domain_id, user_id, group_id)
    box = await find_box(s, domain_id, user_id=user_id, group_id=group_id)
    _validate(data, box).done()
    fresh = box is None
    if box is None:
        box = VoicemailBox(domain_id=domain_id, user_id=user_id, group_id=group_id)
    await _store_greeting(s, domain_id, box, data, prompts)
    box.greeting_source = data.greeting_source
    box.greeting_text = data.greeting_text
    box.greeting_voice = data.greeting_voice
    box.max_message_s = int(data.max_message_s)
    box.notify_email = data.notify_email or None
    box.attach_audio = data.attach_audio
    # only a user's calls can be unanswered by that user: a group's box takes its fall-through
    box.on_no_answer = data.on_no_answer and user_id is not None
    box.on_busy = data.on_busy and user_id is not None
    if fresh:
        s.add(box)
    await s.flush()
    return box


@dataclass(frozen=True, slots=True, kw_only=True)
class BoxView:
    """A box as the mailbox page lists it: the box and its owner's name and extension."""

    box: VoicemailBox
    owner: str
    pin: str
    unheard: int
    total: int


async def visible_boxes(s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID | None) -> list[BoxView]:
    """The boxes a cabinet user sees: all of the domain's (``user_id`` None: the admin), else their own."""
    stmt = select(VoicemailBox).where(VoicemailBox.domain_id == domain_id)
    if user_id is not None:
        stmt = stmt.where(VoicemailBox.user_id == user_id)
    out = []
    for box in (await s.scalars(stmt)).all():
        owner = await _owner(s, domain_id, box.user_id, box.group_id)
        name = owner.display_name if isinstance(owner, User) else owner.name
        msgs = (
            await s.scalars(
                select(VoicemailMessage).where(
                    VoicemailMessage.domain_id == domain_id,
                    VoicemailMessage.box_id == box.id,
                    VoicemailMessage.status == "ready",
                )
            )
        ).all()
        out.append(
            BoxView(
                box=box, owner=name, pin=owner.pin, unheard=sum(not m.listened for m in msgs), total=len(msgs)
            )
        )
    out.sort(key=lambda v: v.pin)
    return out


# --- the cabinet's side: messages ----------------------------------------------------------------------
async def list_messages(s: AsyncSession, domain_id: uuid.UUID, box_id: uuid.UUID) -> list[VoicemailMessage]:
    """A box's saved messages, newest first."""
    await get_box(s, domain_id, box_id)
    stmt = (
        select(VoicemailMessage)
        .where(
            VoicemailMessage.domain_id == domain_id,
            VoicemailMessage.box_id == box_id,
            VoicemailMessage.status == "ready",
        )
        .order_by(VoicemailMessage.created_at.desc())
    )
    return list((await s.scalars(stmt)).all())


async def get_message(
    s: AsyncSession, domain_id: uuid.UUID, message_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> VoicemailMessage:
    """A message of the domain; with ``user_id`` (a user, not the admin) only one in that user's own box."""
    m: VoicemailMessage | None = await s.scalar(
        select(VoicemailMessage).where(
            VoicemailMessage.domain_id == domain_id, VoicemailMessage.id == message_id
        )
    )
    if m is None:
        raise NotFound("voicemail message", message_id)
    if user_id is not None:
        box = await get_box(s, domain_id, m.box_id)
        if box.user_id != user_id:
            raise NotFound("voicemail message", message_id)
    return m


async def mark_listened(
    s: AsyncSession, domain_id: uuid.UUID, message_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> VoicemailMessage:
    m = await get_message(s, domain_id, message_id, user_id)
    m.listened = True
    await s.flush()
    return m


async def delete_message(
    s: AsyncSession,
    domain_id: uuid.UUID,
    message_id: uuid.UUID,
    user_id: uuid.UUID | None = None,
    *,
    root: Path,
) -> None:
    """Delete the message and its MP3 (a file outside ``root`` is never touched)."""
    m = await get_message(s, domain_id, message_id, user_id)
    path = message_file(root, m)
    await s.delete(m)
    await s.flush()
    if path is not None:
        await asyncio.to_thread(path.unlink, missing_ok=True)


def message_file(root: Path, m: VoicemailMessage) -> Path | None:
    """The message's MP3: its stored name under ``root`` (``<data_dir>/voicemail``); None for a name that
    would leave it."""
    if not m.path:
        return None
    path = (root / m.path).resolve()
    return path if path.is_relative_to(root.resolve()) else None


# --- the engine's side ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class VoicemailTarget:
    """Where a call leaves its message: the box, what the caller hears first, how long they may speak."""

    box_id: uuid.UUID
    domain_id: DomainId
    greeting_prompt_id: str | None  # None: no greeting could be made, the beep comes at once
    beep_prompt_id: str | None
    max_message_s: int
    on_no_answer: bool
    on_busy: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """What the engine recorded for a box: the raw file and who called."""

    target: VoicemailTarget
    session_id: str
    caller_number: str
    caller_name: str
    started_at: dt.datetime
    path: Path  # the recorder's WAV (8 kHz mono s16)
    duration_s: float


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


def beep_wav(hz: int = BEEP_HZ, seconds: float = BEEP_S) -> bytes:
    """A short sine tone as an 8 kHz mono WAV: the signal to start speaking."""
    n = int(SAMPLE_RATE * seconds)
    fade = SAMPLE_RATE // 100  # 10 ms ramps: no clicks
    samples = []
    for i in range(n):
        gain = min(1.0, i / fade, (n - 1 - i) / fade)
        samples.append(int(12000 * gain * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(struct.pack(f"<{n}h", *samples))
    return buf.getvalue()


class Voicemail:
    """The engine's voicemail: box lookups, the recording files, saving messages and e-mail, in background
    tasks that ``stop`` cancels and awaits."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        prompts: PromptStore | None,
        root: Path,
        *,
        encoder: Mp3Encoder | None = None,
        mailer: Mailer | None = None,
        mail_from: str = "",
        mail_attempts: int = 3,
        mail_retry_s: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self.prompts = prompts
        self.root = root
        self.encoder = encoder
        self.mailer = mailer
        self.mail_from = mail_from
        self.mail_attempts = mail_attempts
        self.mail_retry_s = mail_retry_s
        self._beep: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lookups ---
    async def target(
        self, domain_id: uuid.UUID, *, user_id: uuid.UUID | None = None, group_id: uuid.UUID | None = None
    ) -> VoicemailTarget | None:
        """The box of this user or group (made with the defaults on first use); None when the owner is gone
        or another domain's."""
        async with self._sessions() as s:
            box = await find_box(s, domain_id, user_id=user_id, group_id=group_id)
            if box is None:
                try:
                    box = await save_box(s, domain_id, BoxInput(), None, user_id=user_id, group_id=group_id)
                except (NotFound, ValueError):
                    return None
                await s.commit()
            greeting = await self._greeting(s, box)
            await s.commit()
            return VoicemailTarget(
                box_id=box.id,
                domain_id=DomainId(box.domain_id),
                greeting_prompt_id=greeting,
                beep_prompt_id=await self._beep_prompt(),
                max_message_s=box.max_message_s,
                on_no_answer=box.on_no_answer,
                on_busy=box.on_busy,
            )

    async def _greeting(self, s: AsyncSession, box: VoicemailBox) -> str | None:
        prompts = self.prompts
        if prompts is None:
            return None
        if box.greeting_prompt_id:
            try:
                prompts.get(box.greeting_prompt_id)
                return box.greeting_prompt_id
            except (PromptError, ValueError):
                log.warning("voicemail.greeting_missing", box_id=str(box.id))
        try:  # a text greeting not spoken yet (a box made by the engine), or a lost upload: the text
            prompt = await prompts.tts(greeting_text(box), voice=_voice(box.greeting_voice))
        except MediaError as e:
            log.warning("voicemail.greeting_failed", box_id=str(box.id), error=type(e).__name__)
            return None
        if box.greeting_source == "text":
            box.greeting_prompt_id = prompt.id
            await record_prompt(s, box.domain_id, prompt.id, "tts")
        return prompt.id

    async def _beep_prompt(self) -> str | None:
        if self._beep is None and self.prompts is not None:
            try:
                self._beep = (await self.prompts.upload(beep_wav())).id
            except MediaError as e:
                log.warning("voicemail.beep_failed", error=type(e).__name__)
        return self._beep

    def recording_path(self, domain_id: uuid.UUID, session_id: str) -> Path:
        """Where the engine records a caller (the directory exists)."""
        folder = self.root / str(domain_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{session_id}.wav"

    # --- saving ---
    def save(self, rec: Recorded) -> None:
        """Keep a recorded message: encoded, stored and e-mailed in the background."""
        self._spawn(self._save(rec), "voicemail-save")

    def discard(self, path: Path) -> None:
        """A recording too short to keep."""
        self._spawn(asyncio.to_thread(path.unlink, missing_ok=True), "voicemail-discard")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the saves and e-mails under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let the saves under way finish for ``grace_s``, then cancel what is left (e-mail retries)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _save(self, rec: Recorded) -> None:
        message_id = uuid.uuid4()
        name = f"{rec.target.domain_id}/{message_id}.mp3"
        mp3 = self.root / name
        try:
            if self.encoder is not None:
                duration = await self.encoder.encode(rec.path, mp3)
            else:
                duration = await asyncio.to_thread(encode_mp3, rec.path, mp3)
        except MediaError as e:
            log.error("voicemail.encode_failed", session_id=rec.session_id, error=str(e))
            return
        finally:
            await asyncio.to_thread(rec.path.unlink, missing_ok=True)
        try:
            async with self._sessions() as s:
                box = await s.get(VoicemailBox, rec.target.box_id)
                if box is None:  # deleted meanwhile
                    await asyncio.to_thread(mp3.unlink, missing_ok=True)
                    return
                m = VoicemailMessage(
                    id=message_id,
                    domain_id=rec.target.domain_id,
                    box_id=box.id,
                    session_id=rec.session_id,
                    caller_number=rec.caller_number[:128],
                    caller_name=rec.caller_name[:128],
                    created_at=rec.started_at,
                    duration_s=round(duration or rec.duration_s, 1),
                    path=name,
                    status="ready",
                )
                s.add(m)
                email = box.notify_email
                attach = box.attach_audio
                domain = await s.get(Domain, box.domain_id)
                tz = domain.timezone if domain is not None else "UTC"
                await s.commit()
        except Exception:
            log.exception("voicemail.save_failed", session_id=rec.session_id)
            await asyncio.to_thread(mp3.unlink, missing_ok=True)
            return
        log.info(
            "voicemail.saved", session_id=rec.session_id, message_id=str(message_id), duration_s=duration
        )
        if email and self.mailer is not None:
            await self._notify(m, email, mp3 if attach else None, tz)

    async def _notify(self, m: VoicemailMessage, to: str, mp3: Path | None, tz: str) -> None:
        msg = await asyncio.to_thread(build_email, m, to, self.mail_from, mp3, tz)
        assert self.mailer is not None
        for attempt in range(1, self.mail_attempts + 1):
            try:
                await self.mailer.send(msg)
            except Exception as e:  # a refused or unreachable server: retried, then given up
                log.warning(
                    "voicemail.email_failed", message_id=str(m.id), attempt=attempt, error=type(e).__name__
                )
                if attempt < self.mail_attempts:
                    await asyncio.sleep(self.mail_retry_s * attempt)
                continue
            async with self._sessions() as s:
                row = await s.get(VoicemailMessage, m.id)
                if row is not None:
                    row.emailed_at = dt.datetime.now(dt.UTC)
                    await s.commit()
            log.info("voicemail.emailed", message_id=str(m.id))
            return


def build_email(m: VoicemailMessage, to: str, sender: str, mp3: Path | None, tz: str) -> EmailMessage:
    """The notification: who called, when (in the domain's time zone), how long; the MP3 attached."""
    try:
        local = m.created_at.astimezone(zoneinfo.ZoneInfo(tz))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        local = m.created_at
    caller = m.caller_number or "—"
    if m.caller_name:
        caller = f"{m.caller_name} <{caller}>"
    when = local.strftime("%Y-%m-%d %H:%M:%S %Z")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"Голосовое сообщение от {m.caller_number or 'скрытого номера'}"
    msg.set_content(
        f"Новое голосовое сообщение / New voicemail\n\n"
        f"От / From: {caller}\n"
        f"Время / Time: {when}\n"
        f"Длительность / Duration: {m.duration_s:.1f} с\n"
    )
    if mp3 is not None and mp3.is_file():
        msg.add_attachment(
            mp3.read_bytes(),
            maintype="audio",
            subtype="mpeg",
            filename=f"voicemail-{local:%Y%m%d-%H%M%S}.mp3",
        )
    return msg


# --- e-mail through the platform's SMTP server --------------------------------------------------------
SMTP_TIMEOUT_S = 30.0  # connect, each command, the whole send


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    host: str
    port: int = 25
    user: str = ""
    password: str = ""
    starttls: bool = False
    timeout_s: float = SMTP_TIMEOUT_S

    def __repr__(self) -> str:  # the password never reaches a log line
        return (
            f"SmtpConfig(host={self.host!r}, port={self.port}, user={self.user!r}, starttls={self.starttls})"
        )


def smtp_mailer(settings: Settings) -> SmtpMailer | None:
    """The platform's mailer from ``VPBX_SMTP_*``; None when no host is set."""
    if not settings.smtp_host:
        return None
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
    return SmtpMailer(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            user=settings.smtp_user,
            password=password,
            starttls=settings.smtp_starttls,
        )
    )


class SmtpMailer:
    """Sends through the platform's SMTP server: the standard library's client in a worker thread (socket
    timeouts inside, an overall deadline outside), so a slow server never holds the event loop."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, message: EmailMessage) -> None:
        async with asyncio.timeout(self.config.timeout_s * 2):
            await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        c = self.config
        with smtplib.SMTP(c.host, c.port, timeout=c.timeout_s) as smtp:
            if c.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if c.user:
                smtp.login(c.user, c.password)
            smtp.send_message(message)


__all__ = [
    "DEFAULT_GREETING",
    "MIN_MESSAGE_S",
    "VOICEMAIL_DIR",
    "BoxInput",
    "BoxView",
    "Mailer",
    "Recorded",
    "SmtpConfig",
    "SmtpMailer",
    "Voicemail",
    "VoicemailTarget",
    "box_input",
    "delete_message",
    "find_box",
    "get_box",
    "get_message",
    "list_messages",
    "mark_listened",
    "save_box",
    "smtp_mailer",
    "visible_boxes",
]
