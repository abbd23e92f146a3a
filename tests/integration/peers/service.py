"""What a test needs to know about the SIP server under test, whichever program it is.

Kamailio (the reference) and vpbx both hand the tests a ``SipService``: where it listens, the domain its
phones use and the users with their SIP passwords. The peer tests take only this, so the same tests run
against either server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class SipService:
    host: str
    port: int
    domain: str
    users: Mapping[str, str] = field(default_factory=dict)  # user (extension) → SIP password

    @property
    def outbound(self) -> str:
        """The server as an outbound proxy URI (for baresip's ``outbound=``)."""
        return f"sip:{self.host}:{self.port}"

    def password(self, user: str) -> str:
        return self.users[user]
