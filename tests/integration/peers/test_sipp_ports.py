"""SIPp starts again on another port when its free port was taken before it could bind it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.peers import sipp
from tests.integration.peers.net import LOOPBACK, free_port_block
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess, SippRun


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        yield s.getsockname()[1]


async def test_a_taken_port_makes_sipp_start_again_elsewhere(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("sipp")
    offered = iter([taken_port])
    monkeypatch.setattr(
        sipp, "free_port_block", lambda count=1: next(offered, None) or free_port_block(count)
    )
    run = SippRun(scenario="uas_answer", calls=1, timeout_s=10)
    async with SippProcess.running(run, tmp_path) as uas:
        await uas.wait_listening()
        assert uas.port != taken_port
        assert uas.proc.running


async def test_a_port_the_test_chose_itself_is_not_changed(tmp_path: Path, taken_port: int) -> None:
    require_binary("sipp")
    run = SippRun(scenario="uas_answer", calls=1, timeout_s=10, local_port=taken_port)
    async with SippProcess.running(run, tmp_path) as uas:
        with pytest.raises(RuntimeError, match="exited early"):
            await uas.wait_listening()
