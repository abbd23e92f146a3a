"""The autoinformer's audio with the real converters (autoinformer.md §3.1): library uploads through sox
with exactly one rejection reason each, and contacts' messages rendered by espeak-ng into ONE prompt that
holds the file's tone and then speech, cached by its inputs; three failures end a contact as tts_failed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.integration.peers.audio import is_tone, read_wav, rms
from vpbx import store
from vpbx.autoinformer import audio, render
from vpbx.autoinformer.schemas import VOICES, CampaignSpec
from vpbx.errors import NotFound
from vpbx.media.prompts import ESPEAK_VOICES, PromptStore
from vpbx.pbx import domains
from vpbx.settings import Settings
from vpbx.store.models import AiCampaign, AiContact

SOX_TIMEOUT_S = 30.0


async def sox(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sox", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(SOX_TIMEOUT_S):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")


async def sound(tmp_path: Path, name: str, *fmt: str, seconds: float = 1.0, hz: float = 1000) -> bytes:
    path = tmp_path / name
    await sox("-n", *fmt, str(path), "synth", str(seconds), "sine", str(hz))
    return await asyncio.to_thread(path.read_bytes)


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = store.create_engine(settings.database_url)
    yield store.session_factory(engine)
    await engine.dispose()


@pytest.fixture
def prompts(tmp_path: Path) -> PromptStore:
    return PromptStore(tmp_path / "prompts")


async def two_domains(sessions: async_sessionmaker[AsyncSession]) -> tuple[uuid.UUID, uuid.UUID]:
    async with sessions() as s:
        a = await domains.create_domain(s, domains.DomainInput(name="a.vpbx.test"))
        b = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.test"))
        await s.commit()
        return a.id, b.id


def test_every_platform_voice_is_an_espeak_voice_the_store_takes() -> None:
    assert set(VOICES.values()) <= ESPEAK_VOICES


# --- the library ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "kind"),
    [
        ("pcm16-stereo-44k.wav", ("-r", "44100", "-c", "2", "-b", "16", "-e", "signed-integer"), "wav"),
        ("pcm8.wav", ("-r", "11025", "-c", "1", "-b", "8", "-e", "unsigned-integer"), "wav"),
        ("alaw.wav", ("-r", "8000", "-c", "1", "-b", "8", "-e", "a-law"), "wav"),
        ("ulaw.wav", ("-r", "8000", "-c", "2", "-b", "8", "-e", "u-law"), "wav"),
        ("tone.mp3", ("-r", "44100", "-c", "2"), "mp3"),
    ],
)
async def test_accepted_uploads_become_8_khz_prompts(
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
    prompts: PromptStore,
    name: str,
    fmt: tuple[str, ...],
    kind: str,
) -> None:
    a, _ = await two_domains(sessions)
    data = await sound(tmp_path, name, *fmt, seconds=2.0)
    async with sessions() as s:
        row = await audio.upload(s, prompts, a, f"  {name}  ", data)
        await s.commit()
    assert (row.name, row.original_format, row.size_bytes) == (name, kind, len(data))
    assert abs(row.duration_ms - 2000) <= 100
    wav = read_wav(prompts.get(row.prompt_id).wav)
    assert wav.rate == 8000 and is_tone(wav, 1000)


@pytest.mark.parametrize(
    ("name", "fmt", "reason"),
    [
        ("pcm24.wav", ("-r", "8000", "-c", "1", "-b", "24", "-e", "signed-integer"), "unsupported_format"),
        ("float.wav", ("-r", "8000", "-c", "1", "-b", "32", "-e", "floating-point"), "unsupported_format"),
        ("quad.wav", ("-r", "8000", "-c", "4", "-b", "16", "-e", "signed-integer"), "unsupported_format"),
        ("tone.flac", ("-r", "8000", "-c", "1"), "unsupported_format"),
    ],
)
async def test_unsupported_formats(
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
    prompts: PromptStore,
    name: str,
    fmt: tuple[str, ...],
    reason: str,
) -> None:
    a, _ = await two_domains(sessions)
    data = await sound(tmp_path, name, *fmt)
    async with sessions() as s:
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, name, data)
        assert e.value.reason == reason
        assert await audio.list_files(s, a) == []


async def test_size_length_and_damage_each_have_their_reason(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], prompts: PromptStore
) -> None:
    a, _ = await two_domains(sessions)
    good = await sound(tmp_path, "ok.wav", "-r", "8000", "-c", "1", "-b", "16")
    big = good + bytes(10 * 1024 * 1024)  # 10 MiB of silence after the data chunk
    long = await sound(tmp_path, "long.wav", "-r", "8000", "-c", "1", "-b", "8", "-e", "u-law", seconds=610)
    async with sessions() as s:
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, "big", big, channel="api")
        assert e.value.reason == "too_large"
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, "long", long)
        assert e.value.reason == "too_long"
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, "damaged", good[:44] + bytes(range(256)) * 4)
        assert e.value.reason == "decode_failed"
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, "notes.txt", b"just some text, not audio at all")
        assert e.value.reason == "unsupported_format"
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, "fake.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(2000))
        assert e.value.reason == "decode_failed"
        with pytest.raises(audio.AudioRejected) as e:
            await audio.upload(s, prompts, a, "riff.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")
        assert e.value.reason == "decode_failed"
        assert await audio.list_files(s, a) == []


async def test_library_is_per_domain_and_a_used_file_is_not_deleted(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], prompts: PromptStore
) -> None:
    a, b = await two_domains(sessions)
    data = await sound(tmp_path, "t.wav", "-r", "8000", "-c", "1", "-b", "16")
    async with sessions() as s:
        f = await audio.upload(s, prompts, a, "Приветствие", data)
        campaign = await new_campaign(s, a, [{"type": "file", "file_id": f.id.hex}])
        await s.commit()
        assert [x.id for x in await audio.list_files(s, a)] == [f.id]
        assert await audio.list_files(s, b) == []
        assert (await audio.get_file(s, a, f.id.hex)).id == f.id
        for domain, fid in ((b, f.id.hex), (a, "not-hex"), (a, uuid.uuid4().hex)):
            with pytest.raises(NotFound):
                await audio.get_file(s, domain, fid)
        with pytest.raises(NotFound):
            await audio.delete_file(s, b, f.id.hex)
        with pytest.raises(audio.AudioInUse) as e:
            await audio.delete_file(s, a, f.id.hex)
        assert e.value.campaigns == ["Напоминание"]
        campaign.status = "completed"
        await s.commit()
        await audio.delete_file(s, a, f.id.hex)
        await s.commit()
        assert await audio.list_files(s, a) == []


# --- rendering ------------------------------------------------------------------------------------------


async def new_campaign(
    s: AsyncSession,
    domain_id: uuid.UUID,
    segments: list[dict[str, object]],
    actions: dict[str, object] | None = None,
) -> AiCampaign:
    spec = CampaignSpec.model_validate(
        {
            "name": "Напоминание",
            "caller_id": "74951234567",
            "message": {"segments": segments},
            "schedule": {"start_at": "2025-06-16 09:00:00"},
            "dtmf": {"actions": actions or {}},
        }
    )
    c = AiCampaign(
        domain_id=domain_id, name=spec.name, caller_id=spec.caller_id, settings=spec.settings_json()
    )
    s.add(c)
    await s.flush()
    return c


async def new_contact(s: AsyncSession, campaign: AiCampaign, phone: str, **variables: str) -> AiContact:
    c = AiContact(campaign_id=campaign.id, domain_id=campaign.domain_id, phones=[phone], variables=variables)
    s.add(c)
    await s.flush()
    return c


TEXT = "{name}, ваша задолженность составляет {sum:money}. Оплатите до {due:date}."


async def test_a_contacts_message_is_one_prompt_with_the_file_then_speech_and_is_cached(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], prompts: PromptStore
) -> None:
    a, _ = await two_domains(sessions)
    tone = await sound(tmp_path, "t.wav", "-r", "16000", "-c", "1", "-b", "16", seconds=1.0)
    async with sessions() as s:
        f = await audio.upload(s, prompts, a, "tone", tone)
        campaign = await new_campaign(
            s, a, [{"type": "file", "file_id": f.id.hex}, {"type": "tts", "text": TEXT, "voice": "female_1"}]
        )
        ivan = await new_contact(s, campaign, "79161234567", name="Иван", sum="1 234,50", due="20.06.2025")
        prompt_id = await render.render_contact(s, prompts, campaign, ivan)
        await s.commit()
        assert prompt_id is not None and ivan.render_hash and ivan.render_failures == 0
        prompt = prompts.get(prompt_id)
        wav = read_wav(prompt.wav)
        assert wav.rate == 8000
        assert is_tone(wav.window(0.1, 0.8), 1000)  # the file first
        speech = wav.window(1.0, wav.seconds - 1.0)
        assert speech.seconds > 3.0 and rms(speech.samples) > 0.05  # then the spoken text
        assert not is_tone(speech, 1000)

        # the same values again, with espeak-ng gone: the cache answers
        offline = PromptStore(prompts.root, espeak="/nonexistent/espeak-ng")
        twin = await new_contact(s, campaign, "79161234567", name="Иван", sum="1 234,50", due="20.06.2025")
        assert await render.render_contact(s, offline, campaign, twin) == prompt_id
        assert twin.render_hash == ivan.render_hash
        # other values are another message: it needs espeak-ng, fails thrice, and the contact ends tts_failed
        anna = await new_contact(s, campaign, "79161234568", name="Анна", sum="10", due="01.07.2025")
        for failures in (1, 2, 3):
            assert await render.render_contact(s, offline, campaign, anna) is None
            assert anna.render_failures == failures
            assert (anna.status, anna.detail) == (
                ("error", "tts_failed") if failures == 3 else ("pending", None)
            )
        # back online, Анна's message differs from Иван's
        other = await new_contact(s, campaign, "79161234568", name="Анна", sum="10", due="01.07.2025")
        other_id = await render.render_contact(s, prompts, campaign, other)
        assert other_id is not None and other_id != prompt_id


async def test_a_missing_value_is_a_failed_render_and_a_lost_file_is_the_campaigns_problem(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], prompts: PromptStore
) -> None:
    a, b = await two_domains(sessions)
    tone = await sound(tmp_path, "t.wav", "-r", "8000", "-c", "1", "-b", "16")
    async with sessions() as s:
        foreign = await audio.upload(s, prompts, b, "tone of b", tone)
        campaign = await new_campaign(s, a, [{"type": "tts", "text": TEXT}])
        nobody = await new_contact(s, campaign, "79161234567", name="Иван")
        assert await render.render_contact(s, prompts, campaign, nobody) is None
        assert nobody.render_failures == 1 and nobody.status == "pending"
        uses_b = await new_campaign(s, a, [{"type": "file", "file_id": foreign.id.hex}])
        contact = await new_contact(s, uses_b, "79161234567")
        with pytest.raises(render.AudioUnavailable):  # another domain's file is not this domain's audio
            await render.render_contact(s, prompts, uses_b, contact)
        assert contact.render_failures == 0


async def test_key_segments_are_spoken_once_per_text_and_a_failure_counts_like_the_messages(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession], prompts: PromptStore
) -> None:
    """§3.5: confirm's and opt_out's TTS confirmation is rendered per contact through the message cache, so
    a text without variables is spoken once for the whole campaign; a library file segment is not rendered
    (the dispatcher plays the file's own prompt)."""
    a, _ = await two_domains(sessions)
    tone = await sound(tmp_path, "t.wav", "-r", "8000", "-c", "1", "-b", "16")
    async with sessions() as s:
        f = await audio.upload(s, prompts, a, "tone", tone)
        actions = {
            "1": {
                "action": "confirm",
                "segment": {"type": "tts", "text": "Спасибо, {name}. Ваш ответ принят."},
            },
            "9": {"action": "opt_out", "segment": {"type": "tts", "text": "Ваш номер исключён из рассылки."}},
            "0": {"action": "opt_out", "segment": {"type": "file", "file_id": f.id.hex}},
            "2": {"action": "repeat"},
        }
        campaign = await new_campaign(s, a, [{"type": "tts", "text": "Здравствуйте"}], actions)
        ivan = await new_contact(s, campaign, "79161234567", name="Иван")
        anna = await new_contact(s, campaign, "79161234568", name="Анна")
        for_ivan = await render.render_keys(s, prompts, campaign, ivan)
        assert for_ivan is not None and set(for_ivan) == {"1", "9"}
        for digit in ("1", "9"):
            wav = read_wav(prompts.get(for_ivan[digit]).wav)
            assert wav.rate == 8000 and wav.seconds > 1.0 and rms(wav.samples) > 0.05
        # Анна: the same opt-out text comes from the cache (espeak-ng is gone), her own name does not
        offline = PromptStore(prompts.root, espeak="/nonexistent/espeak-ng")
        assert await render.render_keys(s, offline, campaign, anna) is None
        assert anna.render_failures == 1 and anna.status == "pending"
        for_anna = await render.render_keys(s, prompts, campaign, anna)
        assert for_anna is not None
        assert for_anna["9"] == for_ivan["9"] and for_anna["1"] != for_ivan["1"]
        twin = await new_contact(s, campaign, "79161234569", name="Иван")
        assert await render.render_keys(s, offline, campaign, twin) == for_ivan
        # a missing value in a confirmation is a failed render of the contact
        nameless = await new_contact(s, campaign, "79161234560")
        assert await render.render_keys(s, prompts, campaign, nameless) is None
        assert nameless.render_failures == 1


async def test_preview_speaks_sample_values_in_the_voice_and_rate(
    sessions: async_sessionmaker[AsyncSession], prompts: PromptStore
) -> None:
    a, _ = await two_domains(sessions)
    async with sessions() as s:
        slow = await render.preview(s, prompts, a, TEXT, voice="male_1", rate=0.5)
        fast = await render.preview(s, prompts, a, TEXT, voice="male_1", rate=2.0)
        female = await render.preview(s, prompts, a, TEXT, voice="female_1", rate=2.0)
        named = await render.preview(s, prompts, a, "Здравствуйте, {name}", values={"name": "Иван"})
    assert len({slow, fast, female, named}) == 4
    slow_wav, fast_wav = read_wav(prompts.get(slow).wav), read_wav(prompts.get(fast).wav)
    assert slow_wav.seconds > 1.5 * fast_wav.seconds
    for p in (slow, fast, female, named):
        assert rms(read_wav(prompts.get(p).wav).samples) > 0.05
