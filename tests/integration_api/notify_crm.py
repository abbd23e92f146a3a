"""A CRM on loopback for the PBX → CRM tests: a real HTTP server (uvicorn) in the test process that records
every request (path, headers, the raw body) and answers as the test scripts it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from vpbx import billing
from vpbx.integration_api.core import new_credential
from vpbx.store.models import ApiSettings

F_CLIENT_ID = "000003C405E6525C64C184258C44EC99"
F_KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
WAIT_S = 15.0


@dataclass(frozen=True, slots=True)
class Seen:
    path: str
    headers: dict[str, str]
    raw: bytes
    peer: tuple[str, int] | None = None  # the PBX's address and port: one port per TCP connection

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Script = Callable[["Crm", Seen], Answer]


@dataclass
class Crm:
    """``script(crm, request)`` decides each answer; ``seen`` keeps every request in arrival order."""

    script: Script = field(default=lambda _crm, _req: Answer())
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    in_flight: int = 0  # requests being answered now
    most_in_flight: int = 0  # the most at once

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = Seen(
            path=scope["path"],
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            raw=raw,
            peer=tuple(scope["client"]) if scope.get("client") else None,  # type: ignore[arg-type]
        )
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._answer(req, send)
        finally:
            self.in_flight -= 1

    async def _answer(self, req: Seen, send: Any) -> None:
        async with self.arrived:
            self.seen.append(req)
            self.arrived.notify_all()
        answer = self.script(self, req)
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (b"content-type", answer.content_type.encode()),
                    *((k.encode(), v.encode()) for k, v in answer.headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    async def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[Seen]:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.seen) >= count)
        return list(self.seen)

    @contextlib.asynccontextmanager
    async def running(self, tls: tuple[Path, Path] | None = None, port: int = 0) -> AsyncIterator[Crm]:
        """Serving on loopback (on ``port``, else any free one); with ``tls`` (certificate, key files) over
        HTTPS."""
        server = uvicorn.Server(
            uvicorn.Config(
                self,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="off",
                ssl_certfile=str(tls[0]) if tls else None,
                ssl_keyfile=str(tls[1]) if tls else None,
            )
        )
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(WAIT_S):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/rt"
        try:
            yield self
        finally:
            server.should_exit = True
            async with asyncio.timeout(WAIT_S):
                await task


async def activate(
    core: Any,
    domain_id: uuid.UUID,
    crm_url: str,
    *,
    client_id: str | None = None,
    key: str | None = None,
    **fields: Any,
) -> None:
    """The service on and the domain's settings saved (what the cabinet's activation does), for the tests."""
    now = core.clock.now()
    async with core.sessions() as s:
        await billing.enable(s, domain_id, billing.INTEGRATION_API, now)
        s.add(
            ApiSettings(
                domain_id=domain_id,
                client_id=client_id or new_credential(),
                sign_key_enc=core.box.seal(key or new_credential()),
                crm_url=crm_url,
                **{"tls_required": False, **fields},
            )
        )
        await s.commit()


def self_signed(directory: Path) -> tuple[Path, Path, str]:
    """A CRM's self-signed server certificate for 127.0.0.1: (certificate file, key file, PEM)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm.test")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_file, key_file = directory / "crm.pem", directory / "crm.key"
    cert_file.write_text(pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file, pem
