"""Voicemail pages: the admin sets up users' and groups' boxes, a user only their own; greeting speech with
a preview, an upload and a corrupt one; the mailbox's player, listened and delete; others' ids are 404."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import groups, users
from vpbx.pbx import voicemail as vm
from vpbx.store.models import VoicemailBox, VoicemailMessage

PASSWORD = "Clerk-Password-1"
PROMPT_RE = re.compile(r'src="/voicemail/prompts/([0-9a-f]{64})"')


async def _user(core: Core, t: Tenant, pin: str, name: str) -> uuid.UUID:
    async with core.sessions() as s:
        u = await users.create_user(
            s,
            t.id,
            users.UserInput(name=name, display_name=name.title(), pin=pin, web_password=PASSWORD),
            box=core.box,
        )
        await s.commit()
        return u.id


async def _login(app: FastAPI, login: str) -> AsyncIterator[Cabinet]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", follow_redirects=False
    ) as c:
        cab = Cabinet(c)
        assert (await cab.login(login, PASSWORD)).status_code == 303
        yield cab


@pytest.fixture
async def alice(app: FastAPI, core: Core, t1: Tenant) -> AsyncIterator[Cabinet]:
    await _user(core, t1, "101", "alice")
    async for cab in _login(app, f"alice@{t1.name}"):
        yield cab


async def _id_of(core: Core, t: Tenant, pin: str) -> uuid.UUID:
    async with core.sessions() as s:
        for u in await users.all_users(s, t.id):
            if u.pin == pin:
                return u.id
    raise AssertionError(pin)


async def _multipart(
    cab: Cabinet, path: str, data: dict[str, Any], files: dict[str, tuple[str, bytes, str]] | None = None
) -> httpx.Response:
    return await cab.client.post(path, data={"csrf_token": cab.csrf, **data}, files=files or {})


async def _count(core: Core, model: type[Any]) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _message(core: Core, t: Tenant, box_id: uuid.UUID, mp3: bytes) -> uuid.UUID:
    root = core.settings.data_dir / vm.VOICEMAIL_DIR / str(t.id)
    root.mkdir(parents=True, exist_ok=True)
    mid = uuid.uuid4()
    (root / f"{mid}.mp3").write_bytes(mp3)
    async with core.sessions() as s:
        s.add(
            VoicemailMessage(
                id=mid,
                domain_id=t.id,
                box_id=box_id,
                session_id="s",
                caller_number="+79161234567",
                caller_name="Ivan",
                duration_s=2.0,
                path=f"{t.id}/{mid}.mp3",
                status="ready",
            )
        )
        await s.commit()
    return mid


async def test_the_admin_sets_up_a_users_box(core: Core, t1: Tenant, admin1: Cabinet) -> None:
    uid = await _user(core, t1, "101", "alice")
    page = await admin1.get("/voicemail")
    assert page.status_code == 200 and f'href="/voicemail/users/{uid}"' in page.text
    form = await admin1.get(f"/voicemail/users/{uid}")
    assert form.status_code == 200 and "Голосовой ящик" in form.text
    resp = await _multipart(
        admin1,
        f"/voicemail/users/{uid}",
        {
            "greeting_source": "text",
            "greeting_text": "Алиса в отпуске",
            "greeting_voice": "ru",
            "max_message_s": "60",
            "notify_email": "alice@example.test",
            "attach_audio": "on",
            "on_no_answer": "on",
        },
    )
    assert resp.status_code == 200 and 'id="box-saved"' in resp.text
    [prompt_id] = PROMPT_RE.findall(resp.text)
    assert (await admin1.get(f"/voicemail/prompts/{prompt_id}")).headers["content-type"] == "audio/wav"
    async with core.sessions() as s:
        box = await vm.find_box(s, t1.id, user_id=uid)
    assert box is not None and box.on_no_answer and not box.on_busy and box.max_message_s == 60


async def test_bad_values_and_a_corrupt_upload_show_errors_and_store_nothing(
    core: Core, t1: Tenant, admin1: Cabinet
) -> None:
    uid = await _user(core, t1, "101", "alice")
    resp = await _multipart(
        admin1,
        f"/voicemail/users/{uid}",
        {"max_message_s": "5", "notify_email": "nobody", "greeting_voice": "ru"},
    )
    assert (
        resp.status_code == 422
        and 'id="err-max_message_s"' in resp.text
        and 'id="err-notify_email"' in resp.text
    )
    resp = await _multipart(
        admin1,
        f"/voicemail/users/{uid}",
        {"greeting_source": "upload", "greeting_voice": "ru", "max_message_s": "120"},
        {"greeting_file": ("hello.mp3", b"\xff\xfb\x90\x00" + bytes(300), "audio/mpeg")},
    )
    assert resp.status_code == 422 and 'id="err-greeting_file"' in resp.text
    assert "повреждён" in resp.text or "MP3" in resp.text
    assert await _count(core, VoicemailBox) == 0


async def test_the_tts_preview(core: Core, alice: Cabinet) -> None:
    resp = await alice.post("/voicemail/preview", {"greeting_text": "", "greeting_voice": "en"})
    [prompt_id] = PROMPT_RE.findall(resp.text)  # the default greeting, spoken
    assert (await alice.get(f"/voicemail/prompts/{prompt_id}")).status_code == 200
    bad = await alice.post("/voicemail/preview", {"greeting_text": "x" * 1200, "greeting_voice": "ru"})
    assert bad.status_code == 422 and 'id="preview-error"' in bad.text


async def test_a_user_sees_and_sets_up_only_their_own_box(
    core: Core, t1: Tenant, admin1: Cabinet, alice: Cabinet
) -> None:
    alice_id = await _id_of(core, t1, "101")
    bob_id = await _user(core, t1, "102", "bob")
    async with core.sessions() as s:
        g = await groups.create_group(s, t1.id, groups.GroupInput(name="Sales", pin="600", members=["101"]))
        await s.commit()
    page = await alice.get("/voicemail")
    assert (
        f"/voicemail/users/{alice_id}" in page.text
        and str(bob_id) not in page.text
        and str(g.id) not in page.text
    )
    assert (await alice.get(f"/voicemail/users/{alice_id}")).status_code == 200
    assert (await alice.get(f"/voicemail/users/{bob_id}")).status_code == 404
    assert (await _multipart(alice, f"/voicemail/users/{bob_id}", {"max_message_s": "60"})).status_code == 404
    assert (await alice.get(f"/voicemail/groups/{g.id}")).status_code == 403  # groups' boxes: the admin's
    assert (await admin1.get(f"/voicemail/groups/{g.id}")).status_code == 200
    assert await _count(core, VoicemailBox) == 0


async def test_the_mailbox_plays_marks_and_deletes(
    core: Core, t1: Tenant, admin1: Cabinet, alice: Cabinet
) -> None:
    alice_id = await _id_of(core, t1, "101")
    bob_id = await _user(core, t1, "102", "bob")
    async with core.sessions() as s:
        box = await vm.save_box(s, t1.id, vm.BoxInput(), None, user_id=alice_id)
        bob_box = await vm.save_box(s, t1.id, vm.BoxInput(), None, user_id=bob_id)
        await s.commit()
    mp3 = vm.beep_wav()  # any bytes: the route serves the file as it is
    mid = await _message(core, t1, box.id, mp3)
    bob_mid = await _message(core, t1, bob_box.id, mp3)
    page = await alice.get(f"/voicemail/boxes/{box.id}")
    assert (
        page.status_code == 200
        and "+79161234567" in page.text
        and f"/voicemail/messages/{mid}/audio" in page.text
    )
    audio = await alice.get(f"/voicemail/messages/{mid}/audio")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/mpeg" and audio.content == mp3
    # a colleague's box and message are not hers; the admin sees both
    assert (await alice.get(f"/voicemail/boxes/{bob_box.id}")).status_code == 404
    assert (await alice.get(f"/voicemail/messages/{bob_mid}/audio")).status_code == 404
    assert (await alice.post(f"/voicemail/messages/{bob_mid}/delete")).status_code == 404
    assert (await admin1.get(f"/voicemail/messages/{bob_mid}/audio")).status_code == 200
    assert (await alice.post(f"/voicemail/messages/{mid}/listened")).status_code == 303
    async with core.sessions() as s:
        got = await s.get(VoicemailMessage, mid)
        assert got is not None and got.listened
    assert (await alice.post(f"/voicemail/messages/{mid}/delete")).status_code == 303
    assert not (core.settings.data_dir / vm.VOICEMAIL_DIR / str(t1.id) / f"{mid}.mp3").exists()
    assert await _count(core, VoicemailMessage) == 1


async def test_another_domains_admin_gets_404(core: Core, t1: Tenant, t2: Tenant, admin2: Cabinet) -> None:
    uid = await _user(core, t1, "101", "alice")
    async with core.sessions() as s:
        box = await vm.save_box(s, t1.id, vm.BoxInput(), None, user_id=uid)
        await s.commit()
    mid = await _message(core, t1, box.id, b"\xff\xf3" + bytes(64))
    for url in (f"/voicemail/users/{uid}", f"/voicemail/boxes/{box.id}", f"/voicemail/messages/{mid}/audio"):
        assert (await admin2.get(url)).status_code == 404, url
    for url in (f"/voicemail/messages/{mid}/listened", f"/voicemail/messages/{mid}/delete"):
        assert (await admin2.post(url)).status_code == 404, url
    assert await _count(core, VoicemailMessage) == 1
    assert str(uid) not in (await admin2.get("/voicemail")).text
