"""SIP: messages, transports, transactions, dialogs and digest authentication."""

from __future__ import annotations

from vpbx.sip.digest import ha1

__all__ = ["ha1"]
