"""The harness's pure parts: statistics parsing, WAV reading, tone analysis, generated configurations."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from tests.integration.peers.audio import Pcm, dominant_frequency, goertzel_power, is_tone, parse_wav, rms
from tests.integration.peers.baresip import Account, encode_netstring
from tests.integration.peers.kamailio import KamailioConfig, render_config
from tests.integration.peers.net import require_loopback
from tests.integration.peers.sipp import SippRun, parse_stats_csv, scenario_path

HEADER = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;TotalCallCreated;"
    "SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);Retransmissions(P);Retransmissions(C)"
)
START = "2026-11-25\t14:44:58.247286\t1795617898.247286"
FIRST = f"{START};x;2026-11-25\t14:44:58.25\t1795617898.250000;0;0;10;0;0;0;0;0;0;0"
LAST = f"{START};x;2026-11-25\t14:45:08.74\t1795617908.747286;0;10;10;25;1;23;0;2;0;7"


def test_sipp_statistics_come_from_the_last_row() -> None:
    stats = parse_stats_csv("\n".join([HEADER, FIRST, LAST]) + "\n")

    assert (stats.total_calls, stats.successful_calls, stats.failed_calls, stats.retransmissions) == (
        25,
        23,
        2,
        7,
    )
    assert stats.elapsed_s == pytest.approx(10.5)
    assert stats.call_rate == pytest.approx(23 / 10.5)


def test_sipp_statistics_without_a_data_row_are_an_error() -> None:
    with pytest.raises(ValueError, match="no data row"):
        parse_stats_csv(HEADER + "\n")


def test_a_sipp_run_is_bounded_and_stays_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        SippRun(scenario="options", calls=0, timeout_s=5)
    with pytest.raises(ValueError, match="loopback"):
        SippRun(scenario="options", calls=1, timeout_s=5, remote=("192.0.2.1", 5060))

    argv = SippRun(scenario="options", calls=3, rate=2.5, timeout_s=7, remote=("127.0.0.1", 5070)).argv(
        tmp_path, 5080
    )

    assert argv[:2] == ["sipp", "127.0.0.1:5070"]
    for flag, value in (("-m", "3"), ("-r", "2.5"), ("-timeout", "7s"), ("-i", "127.0.0.1"), ("-p", "5080")):
        assert argv[argv.index(flag) + 1] == value
    assert "-timeout_error" in argv and "-nostdin" in argv
    assert Path(argv[argv.index("-sf") + 1]) == scenario_path("options")
    assert scenario_path("options").is_file()


def test_require_loopback_refuses_other_addresses() -> None:
    assert require_loopback("127.0.0.5") == "127.0.0.5"
    with pytest.raises(ValueError):
        require_loopback("10.0.0.1")


def _wav(samples: list[int], *, rate: int = 8000, declared: int | None = None) -> bytes:
    data = struct.pack(f"<{len(samples)}h", *samples)
    size = len(data) if declared is None else declared
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", size) + data)
    )


def _sine(freq: float, seconds: float, *, rate: int = 8000, amplitude: float = 0.5) -> list[int]:
    return [
        round(32767 * amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(seconds * rate))
    ]


def test_a_wav_still_being_written_is_read_to_its_end() -> None:
    samples = [0, 1000, -1000, 32767, -32768]

    whole = parse_wav(_wav(samples))
    unfinished = parse_wav(_wav(samples, declared=0))  # sndfile's header until the call ends

    assert whole.samples == unfinished.samples
    assert whole.samples[3] == pytest.approx(32767 / 32768)
    assert whole.rate == 8000


def test_the_dominant_frequency_of_a_tone_is_found_within_a_hertz() -> None:
    for freq in (300.0, 440.0, 1000.0, 3100.0):
        pcm = parse_wav(_wav(_sine(freq, 1.2)))
        assert dominant_frequency(pcm) == pytest.approx(freq, abs=1.0)
        assert is_tone(pcm, freq)
    assert not is_tone(parse_wav(_wav(_sine(440.0, 1.0))), 1000.0)


def test_goertzel_sees_the_tone_that_is_there_and_not_another() -> None:
    pcm = Pcm(8000, tuple(s / 32768 for s in _sine(440.0, 0.5)))

    assert goertzel_power(pcm, 440.0) > 1000 * goertzel_power(pcm, 1000.0)
    assert rms(pcm.samples) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)


def test_kamailio_config_lists_users_domains_and_the_port() -> None:
    cfg = KamailioConfig(
        port=25060, domains=("t1.test", "t2.test"), users={"101": "pw1"}, ctl_socket=Path("/tmp/x/ctl")
    )

    text = render_config(cfg)

    assert "listen=udp:127.0.0.1:25060" in text and "listen=tcp:127.0.0.1:25060" in text
    assert 'alias="t1.test"' in text and 'alias="t2.test"' in text
    assert '$sht(users=>101) = "pw1";' in text
    assert "proxy_challenge" in text
    assert "proxy_challenge" not in render_config(
        KamailioConfig(port=1, users={}, ctl_socket=Path("/c"), invite_auth=False)
    )
    with pytest.raises(ValueError):
        render_config(KamailioConfig(port=1, users={"101": 'a"b'}, ctl_socket=Path("/c")))


def test_baresip_account_line_and_netstrings() -> None:
    account = Account(user="101", domain="t1.test", password="pw", outbound="sip:127.0.0.1:5070")

    assert account.line() == (
        '<sip:101@t1.test;transport=udp>;auth_pass=pw;outbound="sip:127.0.0.1:5070;transport=udp";'
        "regint=600;answermode=manual"
    )
    assert encode_netstring(b'{"a":1}') == b'7:{"a":1},'
    with pytest.raises(ValueError):
        Account(user="1;01", domain="t1.test", password="pw").line()
