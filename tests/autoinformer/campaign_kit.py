"""What the autoinformer's tests build their campaigns from: §9's campaign object (the service's, the
Integration API's and the cabinet's tests start from the same one), Moscow wall-clock times, a real WAV."""

from __future__ import annotations

import datetime as dt
import io
import math
import struct
import wave
from typing import Any

MSK = dt.timezone(dt.timedelta(hours=3))


def msk(at: dt.datetime) -> str:
    """A moment as the campaign object writes it: Moscow time, to the second."""
    return at.astimezone(MSK).strftime("%Y-%m-%d %H:%M:%S")


def campaign_body(file_id: str, caller_id: str, now: dt.datetime, /, **over: Any) -> dict[str, Any]:
    """§9's campaign object: a library file then a TTS part, starting the day after ``now`` for five days,
    keys 1 (connect to group 600), 2 (repeat), 9 (opt out); ``over`` replaces top-level fields."""
    data: dict[str, Any] = {
        "external_id": "crm-campaign-42",
        "name": "Напоминание о задолженности, июнь",
        "caller_id": caller_id,
        "message": {
            "repeat": 2,
            "segments": [
                {"type": "file", "file_id": file_id},
                {
                    "type": "tts",
                    "text": "{name}, ваша задолженность составляет {sum:money}. Оплатите до {due:date}.",
                    "voice": "female_1",
                    "rate": 1.0,
                },
            ],
        },
        "schedule": {
            "start_at": msk(now + dt.timedelta(days=1)),
            "end_at": msk(now + dt.timedelta(days=5)),
            "days": [1, 2, 3, 4, 5],
            "windows": [{"from": "10:00", "to": "13:00"}, {"from": "14:00", "to": "19:00"}],
            "time_basis": "recipient",
        },
        "attempts": {"max": 3, "interval_min": 60, "retry_on": ["busy", "no_answer", "failed"]},
        "ring_timeout_s": 30,
        "concurrency": 5,
        "compliance_profile": "collections",
        "success": {"criterion": "listened_full"},
        "dtmf": {
            "wait_s": 5,
            "actions": {
                "1": {"action": "connect", "target": {"type": "group", "pin": "600"}},
                "2": {"action": "repeat"},
                "9": {"action": "opt_out"},
            },
        },
    }
    data.update(over)
    return data


def tone_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A real PCM WAV (mono, 16 bit, a 440 Hz tone), written by the standard library."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        n = int(seconds * rate)
        w.writeframes(
            b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(n))
        )
    return buf.getvalue()
