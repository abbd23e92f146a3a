"""Voice menu pages: a spoken greeting, an uploaded WAV (made by sox) and a corrupt one, the preview player
served only to its domain, the key table and the timeout action, errors on the right rows."""

from __future__ import annotations

import io
import re
import subprocess
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import groups
from vpbx.pbx.ivr_plan import MenuAction, MenuPlans
from vpbx.store.models import DomainPrompt, User, VoiceMenu

AUDIO_RE = re.compile(r'src="/menus/prompts/([0-9a-f]{64})"')


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1 s 440 Hz stereo 44.1 kHz WAV, the kind of file an admin records on a computer."""
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(path), "synth", "1", "sine", "440"],
        check=True,
        timeout=30,
    )
    return path.read_bytes()


async def _post_multipart(
    cab: Cabinet, path: str, data: dict[str, Any], files: dict[str, tuple[str, bytes, str]]
) -> httpx.Response:
    body = {"csrf_token": cab.csrf, **data}
    return await cab.client.post(path, data=body, files=files)


async def _count(core: Core, model: type[Any]) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _menu(core: Core, t: Tenant, name: str) -> VoiceMenu:
    async with core.sessions() as s:
        m = await s.scalar(select(VoiceMenu).where(VoiceMenu.domain_id == t.id, VoiceMenu.name == name))
        assert m is not None
        return m


def _stored_wavs(root: Path) -> list[Path]:
    return sorted(root.glob("*.wav")) if root.exists() else []


def _wav_format(data: bytes) -> tuple[int, int, int, float]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes() / w.getframerate()


async def test_spoken_greeting_is_saved_and_played(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant
) -> None:
    resp = await admin1.post(
        "/menus",
        {
            "name": "Главное меню",
            "greeting_source": "text",
            "prompt_text": "Здравствуйте! Нажмите 1.",
            "greeting_voice": "ru",
            "repeat_count": "3",
            "digit_timeout_s": "4",
            "timeout_action": "hangup",
        },
    )
    assert resp.status_code == 303, resp.text
    m = await _menu(core, t1, "Главное меню")
    assert (m.greeting_source, m.repeat_count, m.digit_timeout_s) == ("text", 3, 4)
    page = await admin1.get(f"/menus/{m.id}")
    assert AUDIO_RE.findall(page.text) == [m.greeting_prompt_id]
    audio = await admin1.get(f"/menus/prompts/{m.greeting_prompt_id}")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    channels, width, rate, seconds = _wav_format(audio.content)
    assert (channels, width, rate) == (1, 2, 8000) and seconds > 0.5
    assert (await admin2.get(f"/menus/prompts/{m.greeting_prompt_id}")).status_code == 404


async def test_uploaded_wav_is_converted_and_served(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, tone_wav: bytes
) -> None:
    await admin1.get("/menus/new")
    resp = await _post_multipart(
        admin1,
        "/menus",
        {"name": "Tone", "greeting_source": "upload", "greeting_voice": "en", "timeout_action": "hangup"},
        {"greeting_file": ("tone.wav", tone_wav, "audio/wav")},
    )
    assert resp.status_code == 303, resp.text
    m = await _menu(core, t1, "Tone")
    assert (m.greeting_source, m.greeting_file_name) == ("upload", "tone.wav")
    assert m.greeting_prompt_id is not None
    audio = await admin1.get(f"/menus/prompts/{m.greeting_prompt_id}")
    assert audio.status_code == 200
    channels, width, rate, seconds = _wav_format(audio.content)
    assert (channels, width, rate) == (1, 2, 8000) and seconds == pytest.approx(1.0, abs=0.03)
    assert (await admin2.get(f"/menus/prompts/{m.greeting_prompt_id}")).status_code == 404
    listing = await admin1.get("/menus")
    assert "tone.wav" in listing.text
    # saving again without a new file keeps the recording
    resp = await _post_multipart(
        admin1,
        f"/menus/{m.id}",
        {"name": "Tone 2", "greeting_source": "upload", "greeting_voice": "en", "timeout_action": "hangup"},
        {"greeting_file": ("", b"", "application/octet-stream")},
    )
    assert resp.status_code == 303, resp.text
    again = await _menu(core, t1, "Tone 2")
    assert again.greeting_prompt_id == m.greeting_prompt_id


async def test_the_same_recording_in_another_domain_is_its_own(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant, tone_wav: bytes
) -> None:
    for cab in (admin1, admin2):
        await cab.get("/menus/new")
        resp = await _post_multipart(
            cab,
            "/menus",
            {"name": "Tone", "greeting_source": "upload", "timeout_action": "hangup"},
            {"greeting_file": ("tone.wav", tone_wav, "audio/wav")},
        )
        assert resp.status_code == 303, resp.text
    pid = (await _menu(core, t1, "Tone")).greeting_prompt_id
    assert pid == (await _menu(core, t2, "Tone")).greeting_prompt_id  # one file on disk
    assert (await admin1.get(f"/menus/prompts/{pid}")).status_code == 200
    assert (await admin2.get(f"/menus/prompts/{pid}")).status_code == 200


async def test_corrupt_upload_is_refused_and_nothing_is_stored(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    await admin1.get("/menus/new")
    broken = b"RIFF\x24\x00\x00\x00WAVE" + b"junk" * 20  # a WAV in name only: no format chunk
    cases = (
        ("broken.wav", broken, "Файл повреждён или не является файлом WAV"),
        ("notes.txt", b"just some text, not audio", "Неподдерживаемый файл: загрузите файл WAV или MP3"),
    )
    for name, content, message in cases:
        resp = await _post_multipart(
            admin1,
            "/menus",
            {"name": "Broken", "greeting_source": "upload", "timeout_action": "hangup"},
            {"greeting_file": (name, content, "audio/wav")},
        )
        assert resp.status_code == 422, name
        assert 'id="err-greeting_file"' in resp.text and message in resp.text, name
    assert await _count(core, VoiceMenu) == 0
    assert await _count(core, DomainPrompt) == 0
    assert not _stored_wavs(core.prompts.root)


async def test_preview_speaks_text_before_saving(admin1: Cabinet, admin2: Cabinet) -> None:
    await admin1.get("/menus/new")
    resp = await admin1.post("/menus/preview", {"prompt_text": "Good morning", "greeting_voice": "en"})
    assert resp.status_code == 200
    (pid,) = AUDIO_RE.findall(resp.text)
    audio = await admin1.get(f"/menus/prompts/{pid}")
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    assert (await admin2.get(f"/menus/prompts/{pid}")).status_code == 404
    empty = await admin1.post("/menus/preview", {"prompt_text": "  ", "greeting_voice": "ru"})
    assert empty.status_code == 422 and 'id="preview-error"' in empty.text
    assert "Введите текст для озвучивания" in empty.text


async def test_keys_and_timeout_from_the_form(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        admin = await s.scalar(select(User).where(User.domain_id == t1.id))
        assert admin is not None
        g = await groups.create_group(s, t1.id, groups.GroupInput(name="Sales", pin="500"))
        await s.commit()
    row = await admin1.get("/menus/key-row")
    assert row.status_code == 200 and 'name="key_action"' in row.text and "500 — Sales" in row.text
    base = {
        "name": "Main",
        "greeting_source": "text",
        "prompt_text": "Press 1 for the admin, 2 for sales",
        "greeting_voice": "en",
        "timeout_action": "group",
        "timeout_group_id": str(g.id),
    }
    rows = {
        "key": ["1", "2", "", "1", "9"],
        "key_action": ["user", "group", "hangup", "hangup", "external"],
        "key_user_id": [str(admin.id), "", "", "", ""],
        "key_group_id": ["", str(g.id), "", "", ""],
        "key_menu_id": ["", "", "", "", ""],
        "key_number": ["", "", "", "", "12"],
    }
    bad = await admin1.post("/menus", {**base, **rows})
    assert bad.status_code == 422
    assert "Клавиша 1 указана дважды" in bad.text and "Неверный номер телефона: 12" in bad.text
    assert await _count(core, VoiceMenu) == 0
    rows = {k: v[:3] for k, v in rows.items()}  # the blank third row is ignored
    resp = await admin1.post("/menus", {**base, **rows})
    assert resp.status_code == 303, resp.text
    m = await _menu(core, t1, "Main")
    plan = await MenuPlans(core.sessions, core.prompts).menu_plan(t1.id, m.id)
    assert dict(plan.keys) == {
        "1": MenuAction(action="user", user_id=admin.id, pin="100"),
        "2": MenuAction(action="group", group_id=g.id),
    }
    assert plan.timeout == MenuAction(action="group", group_id=g.id)
    page = await admin1.get(f"/menus/{m.id}")
    assert page.text.count('class="key-row"') == 2
    # clearing a row's key removes the key; a timeout back into the menu itself is a loop
    resp = await admin1.post(
        f"/menus/{m.id}",
        {
            **base,
            "timeout_action": "menu",
            "timeout_menu_id": str(m.id),
            **{k: v[:1] for k, v in rows.items()},
        },
    )
    assert resp.status_code == 422 and 'id="err-timeout_action"' in resp.text
    resp = await admin1.post(f"/menus/{m.id}", {**base, **{k: v[:1] for k, v in rows.items()}})
    assert resp.status_code == 303
    plan = await MenuPlans(core.sessions, core.prompts).menu_plan(t1.id, m.id)
    assert list(plan.keys) == ["1"]
