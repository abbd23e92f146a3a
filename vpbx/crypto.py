"""Password hashing (argon2), reversible secret storage (Fernet keyed by the secret key), random tokens."""

from __future__ import annotations

import base64
import hashlib
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

from vpbx.errors import VpbxError

_HASHER = PasswordHasher()
# Verified against when the login is unknown, so both answers take the same time.
DUMMY_HASH = _HASHER.hash("dummy password for unknown logins")
PASSWORD_ALPHABET = string.ascii_letters + string.digits


class SecretUnreadable(VpbxError):
    code = "secret-unreadable"


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists: an absent hash checks the dummy one."""
    try:
        ok = _HASHER.verify(password_hash or DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


def random_password(length: int = 16) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SecretBox:
    """Encrypts secrets that must be shown again (SIP passwords, API keys), keyed by the secret key."""

    def __init__(self, secret_key: str) -> None:
        digest = hashlib.sha256(b"vpbx-secretbox-v1:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as e:
            raise SecretUnreadable("secret cannot be decrypted with the current secret key") from e
