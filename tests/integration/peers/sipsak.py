"""sipsak: OPTIONS ping and REGISTER with digest, for smoke tests (telephony.md §7.3).

sipsak 0.9.8.1 cuts a five-digit port in the SIP URI to four digits (``sip:x@127.0.0.1:25060`` goes out as
``…:2506``), so the URI never carries the port: the port goes in ``-r``. It also resolves the URI's host,
so the URI names the server's IP address, never a test domain; the server's realm is then that address.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.integration.peers.net import require_loopback
from tests.integration.peers.process import run_command

SIPSAK = "sipsak"
RUN_TIMEOUT_S = 15.0

# sipsak's exit codes (man sipsak, RETURN VALUES)
OK = 0  # a 200 was received
NOT_OK = 1  # something other than 1xx or 2xx was received
LOCAL_ERROR = 2  # e.g. authentication failed after a challenge, bad options
REMOTE_ERROR = 3  # no answer (timeout), socket errors


@dataclass(frozen=True, slots=True)
class SipsakResult:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == OK

    @property
    def status_codes(self) -> list[int]:
        """Status codes of the responses sipsak printed (with ``-vv`` it prints each one)."""
        codes = []
        for line in self.output.splitlines():
            parts = line.strip().split()
            if len(parts) >= 2 and parts[0] == "SIP/2.0" and parts[1].isdigit():
                codes.append(int(parts[1]))
        return codes


async def run(*args: str, timeout_s: float = RUN_TIMEOUT_S) -> SipsakResult:
    code, output = await run_command([SIPSAK, *args], timeout_s=timeout_s)
    return SipsakResult(code, output)


async def options(host: str, port: int, *, user: str = "ping") -> SipsakResult:
    """``sipsak -s sip:ping@host -r port``: OPTIONS; ``ok`` when a 200 came back."""
    require_loopback(host)
    return await run("-vv", "-s", f"sip:{user}@{host}", "-r", str(port))


async def register(
    host: str,
    port: int,
    user: str,
    password: str,
    *,
    contact: str | None = None,
    expires_s: int | None = None,
) -> SipsakResult:
    """``sipsak -U``: REGISTER ``user`` with digest auth; ``ok`` when it ends in 200.

    With ``contact`` the binding points there (e.g. a SIPp UAS that cannot register itself).
    """
    require_loopback(host)
    args = ["-vv", "-U", "-s", f"sip:{user}@{host}", "-r", str(port), "-u", user, "-a", password]
    if contact is not None:
        args += ["-C", contact]
    if expires_s is not None:
        args += ["-x", str(expires_s)]
    return await run(*args)
