"""Digest authentication helpers (RFC 3261 §22.4, RFC 8760). Pure functions."""

from __future__ import annotations

import hashlib
from typing import Literal

Algorithm = Literal["MD5", "SHA-256"]


def ha1(username: str, realm: str, password: str, algorithm: Algorithm = "MD5") -> str:
    """H(username:realm:password): what the registrar keeps instead of the password."""
    data = f"{username}:{realm}:{password}".encode()
    if algorithm == "MD5":
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    return hashlib.sha256(data).hexdigest()
