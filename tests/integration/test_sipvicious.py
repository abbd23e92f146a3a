"""sipvicious against vpbx: svwar cannot tell existing extensions from missing ones, svcrack is banned after
a few guesses and cracks nothing (telephony.md §3.5, issue 4 acceptance)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.peers.net import free_ports, wait_sip_ready
from tests.integration.peers.process import require_binary, run_command
from tests.integration.peers.service import SipService
from tests.integration.peers.vpbx import Vpbx

pytestmark = pytest.mark.peers

USERS = {"101": "73910452", "102": "secret-102", "103": "secret-103"}
GUESSES_BEFORE_THE_RIGHT_ONE = 30  # the dictionary has the password at this position: a ban comes first
RUN_TIMEOUT_S = 120.0


@pytest.fixture
async def vpbx(tmp_path: Path) -> AsyncIterator[SipService]:
    for tool in ("svwar", "svcrack"):
        require_binary(tool)
    async with Vpbx.running(tmp_path, users=USERS) as v:
        yield v.service


async def run(*argv: str, cwd: Path) -> str:
    _code, output = await run_command(argv, timeout_s=RUN_TIMEOUT_S, cwd=cwd)
    return output


def table_rows(output: str) -> list[str]:
    """The extensions svwar/svcrack list in their result table."""
    return re.findall(r"^\|\s*(\S+)\s*\|", output, re.M)


@pytest.mark.parametrize("force", [False, True])
async def test_svwar_finds_no_real_extension(vpbx: SipService, tmp_path: Path, force: bool) -> None:
    argv = ["svwar", "-e100-110", "-m", "REGISTER", "-p", str(vpbx.port), vpbx.host]
    out = await run(*argv, *(["--force"] if force else []), cwd=tmp_path)
    found = [row for row in table_rows(out) if row not in ("Extension",)]
    assert not set(found) & set(USERS), out
    assert "found nothing" in out or found, out  # svwar ran to the end


async def test_svcrack_is_banned_and_cracks_nothing(vpbx: SipService, tmp_path: Path) -> None:
    # its own source port: by default svcrack binds 5060, where anything else on the machine sending SIP
    # (another PBX's OPTIONS) keeps it from noticing the ban's silence
    local = str(free_ports(1)[0])
    argv = ["svcrack", "-u101", "-r", "1-9999", "-z", "4", "-P", local, "-p", str(vpbx.port), vpbx.host]
    out = await run(*argv, cwd=tmp_path)
    assert USERS["101"] not in out, out
    assert "101" not in [row for row in table_rows(out) if row != "Extension"], out
    # the scanner's address now gets silence, even for a harmless OPTIONS
    with pytest.raises(TimeoutError):
        await wait_sip_ready(vpbx.host, vpbx.port, timeout_s=2)
