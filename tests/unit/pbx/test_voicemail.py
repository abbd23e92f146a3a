"""Voicemail boxes and messages: validation, greetings (speech, uploads, corrupt files), two tenants, the
saving of a recorded message and its e-mail with bounded retries."""

from __future__ import annotations

import datetime as dt
import uuid
import wave
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import groups, users
from vpbx.pbx import voicemail as vm
from vpbx.pbx.voicemail import BoxInput, Recorded, Voicemail, VoicemailTarget
from vpbx.settings import Settings
from vpbx.store.models import DomainId, DomainPrompt, VoicemailBox, VoicemailMessage

TONE = vm.beep_wav(hz=440, seconds=2.0)


async def _user(core: Core, t: Tenant, pin: str = "101") -> uuid.UUID:
    async with core.sessions() as s:
        u = await users.create_user(
            s, t.id, users.UserInput(name=f"u{pin}", display_name=f"User {pin}", pin=pin), box=core.box
        )
        await s.commit()
        return u.id


async def _save(core: Core, t: Tenant, data: BoxInput, **owner: uuid.UUID) -> VoicemailBox:
    async with core.sessions() as s:
        box = await vm.save_box(s, t.id, data, core.prompts, **owner)
        await s.commit()
        return box


def _fields(e: pytest.ExceptionInfo[ValidationFailed]) -> set[str]:
    return {x.field for x in e.value.errors}


async def _count(core: Core, model: type[object]) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)  # type: ignore[arg-type]


async def test_a_users_box_speaks_the_default_greeting(core: Core, t1: Tenant) -> None:
    uid = await _user(core, t1)
    box = await _save(core, t1, BoxInput(), user_id=uid)
    assert box.greeting_source == "text" and box.greeting_text == "" and box.max_message_s == 120
    assert box.greeting_prompt_id is not None
    assert core.prompts.get(box.greeting_prompt_id).duration_s > 3  # the whole default phrase, spoken
    async with core.sessions() as s:
        owned = await s.scalar(select(DomainPrompt).where(DomainPrompt.prompt_id == box.greeting_prompt_id))
    assert owned is not None and owned.domain_id == t1.id


async def test_saving_again_updates_the_same_box(core: Core, t1: Tenant) -> None:
    uid = await _user(core, t1)
    first = await _save(core, t1, BoxInput(), user_id=uid)
    again = await _save(
        core,
        t1,
        BoxInput(greeting_text="Hello", greeting_voice="en", notify_email="me@example.test", on_busy=True),
        user_id=uid,
    )
    assert again.id == first.id and again.notify_email == "me@example.test" and again.on_busy
    assert again.greeting_prompt_id != first.greeting_prompt_id
    assert await _count(core, VoicemailBox) == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (BoxInput(max_message_s=5), "max_message_s"),
        (BoxInput(max_message_s=601), "max_message_s"),
        (BoxInput(max_message_s="long"), "max_message_s"),
        (BoxInput(notify_email="not-an-address"), "notify_email"),
        (BoxInput(greeting_source="fax"), "greeting_source"),
        (BoxInput(greeting_voice="de"), "greeting_voice"),
        (BoxInput(greeting_text="x" * 1001), "greeting_text"),
        (BoxInput(greeting_source="upload"), "greeting_file"),  # an upload box needs a file first
    ],
)
async def test_bad_input_names_the_field(core: Core, t1: Tenant, data: BoxInput, field: str) -> None:
    uid = await _user(core, t1)
    with pytest.raises(ValidationFailed) as e:
        await _save(core, t1, data, user_id=uid)
    assert _fields(e) == {field}
    assert await _count(core, VoicemailBox) == 0


async def test_an_uploaded_greeting_is_converted(core: Core, t1: Tenant) -> None:
    uid = await _user(core, t1)
    box = await _save(
        core, t1, BoxInput(greeting_source="upload", upload=TONE, greeting_file_name="hello.wav"), user_id=uid
    )
    assert box.greeting_file_name == "hello.wav" and box.greeting_prompt_id
    assert core.prompts.get(box.greeting_prompt_id).duration_s == pytest.approx(2.0, abs=0.05)
    # saved again without a new file, the upload stays
    again = await _save(core, t1, BoxInput(greeting_source="upload", max_message_s=60), user_id=uid)
    assert again.greeting_prompt_id == box.greeting_prompt_id and again.max_message_s == 60


@pytest.mark.parametrize(
    ("upload", "reason"),
    [
        (b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is no wave at all", "The file is damaged"),
        (b"\xff\xfb\x90\x00" + bytes(200), "The file"),  # an MP3 frame header and nothing playable
        (b"%PDF-1.7 not audio", "Unsupported file"),
    ],
)
async def test_a_corrupt_upload_is_refused_and_nothing_is_stored(
    core: Core, t1: Tenant, upload: bytes, reason: str
) -> None:
    uid = await _user(core, t1)
    prompts_before = sorted(core.prompts.root.glob("*")) if core.prompts.root.exists() else []
    with pytest.raises(ValidationFailed) as e:
        await _save(core, t1, BoxInput(greeting_source="upload", upload=upload), user_id=uid)
    assert _fields(e) == {"greeting_file"} and e.value.errors[0].msgid.startswith(reason)
    assert await _count(core, VoicemailBox) == 0
    assert await _count(core, DomainPrompt) == 0
    after = sorted(core.prompts.root.glob("*")) if core.prompts.root.exists() else []
    assert after == prompts_before


async def test_a_groups_box_never_takes_unanswered_calls(core: Core, t1: Tenant) -> None:
    await _user(core, t1)
    async with core.sessions() as s:
        g = await groups.create_group(s, t1.id, groups.GroupInput(name="Sales", pin="600", members=["101"]))
        await s.commit()
    box = await _save(core, t1, BoxInput(on_no_answer=True, on_busy=True), group_id=g.id)
    assert box.group_id == g.id and not box.on_no_answer and not box.on_busy


async def test_another_domains_user_or_group_is_not_found(core: Core, t1: Tenant, t2: Tenant) -> None:
    uid = await _user(core, t1)
    with pytest.raises(NotFound):
        await _save(core, t2, BoxInput(), user_id=uid)
    with pytest.raises(NotFound):
        await _save(core, t2, BoxInput(), group_id=uuid.uuid4())
    assert await _count(core, VoicemailBox) == 0


async def _message(core: Core, t: Tenant, box: VoicemailBox, name: str = "m.mp3") -> VoicemailMessage:
    root = core.settings.data_dir / vm.VOICEMAIL_DIR
    (root / str(t.id)).mkdir(parents=True, exist_ok=True)
    (root / str(t.id) / name).write_bytes(b"\xff\xf3" + bytes(64))
    async with core.sessions() as s:
        m = VoicemailMessage(
            domain_id=t.id, box_id=box.id, session_id="s1", path=f"{t.id}/{name}", status="ready"
        )
        s.add(m)
        await s.commit()
        return m


async def test_messages_are_seen_by_the_box_user_and_the_admin_only(
    core: Core, t1: Tenant, t2: Tenant
) -> None:
    alice, bob = await _user(core, t1, "101"), await _user(core, t1, "102")
    box = await _save(core, t1, BoxInput(), user_id=alice)
    m = await _message(core, t1, box)
    async with core.sessions() as s:
        assert (await vm.get_message(s, t1.id, m.id)).id == m.id  # the admin
        assert (await vm.get_message(s, t1.id, m.id, alice)).id == m.id  # the box's user
        with pytest.raises(NotFound):
            await vm.get_message(s, t1.id, m.id, bob)  # a colleague
        with pytest.raises(NotFound):
            await vm.get_message(s, t2.id, m.id)  # another domain's admin
        with pytest.raises(NotFound):
            await vm.list_messages(s, t2.id, box.id)
        assert [v.box.id for v in await vm.visible_boxes(s, t1.id, bob)] == []
        assert [v.box.id for v in await vm.visible_boxes(s, t1.id, None)] == [box.id]
        assert await vm.visible_boxes(s, t2.id, None) == []


async def test_listened_and_delete_with_the_file(core: Core, t1: Tenant) -> None:
    alice = await _user(core, t1)
    box = await _save(core, t1, BoxInput(), user_id=alice)
    m = await _message(core, t1, box)
    root = core.settings.data_dir / vm.VOICEMAIL_DIR
    async with core.sessions() as s:
        assert (await vm.mark_listened(s, t1.id, m.id, alice)).listened
        [v] = await vm.visible_boxes(s, t1.id, alice)
        assert (v.unheard, v.total) == (0, 1)
        await vm.delete_message(s, t1.id, m.id, alice, root=root)
        await s.commit()
    assert not (root / m.path).exists()
    assert await _count(core, VoicemailMessage) == 0


def test_a_stored_name_never_leaves_the_voicemail_folder(tmp_path: Path) -> None:
    m = VoicemailMessage(path="../../etc/passwd")
    assert vm.message_file(tmp_path, m) is None
    assert vm.message_file(tmp_path, VoicemailMessage(path="d/x.mp3")) == (tmp_path / "d/x.mp3").resolve()


# --- the engine's side: targets, saving, e-mail ----------------------------------------------------------
class FlakyMailer:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[EmailMessage] = []
        self.attempts = 0

    async def send(self, message: EmailMessage) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionRefusedError("smtp down")
        self.sent.append(message)


def _desk(core: Core, mailer: FlakyMailer | None = None) -> Voicemail:
    return Voicemail(
        core.sessions,
        core.prompts,
        core.settings.data_dir / vm.VOICEMAIL_DIR,
        mailer=mailer,
        mail_from="pbx@example.test",
        mail_attempts=3,
        mail_retry_s=0.0,
    )


async def test_target_makes_a_default_box_on_first_use(core: Core, t1: Tenant) -> None:
    uid = await _user(core, t1)
    target = await _desk(core).target(t1.id, user_id=uid)
    assert target is not None and target.max_message_s == 120 and not target.on_no_answer
    assert target.greeting_prompt_id and target.beep_prompt_id
    assert core.prompts.get(target.beep_prompt_id).duration_s == pytest.approx(0.4, abs=0.03)
    assert await _count(core, VoicemailBox) == 1
    assert await _desk(core).target(t1.id, user_id=uuid.uuid4()) is None


async def _recorded(core: Core, t: Tenant, box: VoicemailBox, seconds: float) -> Recorded:
    desk = _desk(core)
    path = desk.recording_path(t.id, "sess-1")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(int(seconds * 8000) * 2))
    target = VoicemailTarget(
        box_id=box.id,
        domain_id=DomainId(t.id),
        greeting_prompt_id=None,
        beep_prompt_id=None,
        max_message_s=120,
        on_no_answer=False,
        on_busy=False,
    )
    return Recorded(
        target=target,
        session_id="sess-1",
        caller_number="+79161234567",
        caller_name="Ivan",
        started_at=dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC),
        path=path,
        duration_s=seconds,
    )


async def test_a_saved_message_is_mailed_after_retries(core: Core, t1: Tenant) -> None:
    uid = await _user(core, t1)
    box = await _save(core, t1, BoxInput(notify_email="alice@example.test"), user_id=uid)
    mailer = FlakyMailer(failures=2)
    desk = _desk(core, mailer)
    rec = await _recorded(core, t1, box, 2.5)
    desk.save(rec)
    await desk.drain()
    assert not rec.path.exists()  # the WAV is gone once encoded
    async with core.sessions() as s:
        [m] = (await s.scalars(select(VoicemailMessage))).all()
    assert m.duration_s == pytest.approx(2.5) and m.emailed_at is not None and m.caller_name == "Ivan"
    assert (desk.root / m.path).read_bytes()[:1] in (b"\xff", b"I")
    [mail] = mailer.sent
    assert mailer.attempts == 3
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Ivan <+79161234567>" in text and "2026-03-01 12:30:00 MSK" in text and "2.5 с" in text
    [att] = mail.iter_attachments()
    assert att.get_content_type() == "audio/mpeg" and len(att.get_content()) > 1000


async def test_mail_gives_up_after_its_attempts_and_the_message_stays(core: Core, t1: Tenant) -> None:
    uid = await _user(core, t1)
    box = await _save(core, t1, BoxInput(notify_email="alice@example.test", attach_audio=False), user_id=uid)
    mailer = FlakyMailer(failures=10)
    desk = _desk(core, mailer)
    desk.save(await _recorded(core, t1, box, 1.5))
    await desk.drain()
    assert mailer.attempts == 3 and mailer.sent == []
    async with core.sessions() as s:
        [m] = (await s.scalars(select(VoicemailMessage))).all()
    assert m.status == "ready" and m.emailed_at is None


def test_the_smtp_password_is_never_shown(tmp_path: Path) -> None:
    settings = Settings(env="test", smtp_host="127.0.0.1", smtp_password="s3cr3t-pass", data_dir=tmp_path)  # type: ignore[arg-type]
    mailer = vm.smtp_mailer(settings)
    assert mailer is not None and mailer.config.password == "s3cr3t-pass"
    assert "s3cr3t" not in repr(mailer.config) and "s3cr3t" not in repr(settings)
    assert vm.smtp_mailer(Settings(env="test", data_dir=tmp_path)) is None  # type: ignore[arg-type]
