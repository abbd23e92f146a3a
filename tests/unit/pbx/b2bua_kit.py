"""An in-process PBX for B2BUA tests, and phones that speak SIP bytes to it.

The node, its transaction table, digest auth, directory (over the test database) and the B2BUA are the real
ones; the transports, the B2BUA's timers and the media backend are fakes. A ``Phone`` sends bytes into
``node._receive`` as if they came from its address, and finds in its inbox what the node sent to that
address. ``Pbx.settle()`` runs the node's handler tasks until none is left, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from vpbx.app import Core
from vpbx.media.backend import AmdParams, MediaPorts, SessionStats
from vpbx.media.prompts import Prompt
from vpbx.media.relay import Address as MediaAddress
from vpbx.media.relay import LegRef
from vpbx.media.rtp import StreamState
from vpbx.pbx import domains, users
from vpbx.pbx.b2bua import B2bua
from vpbx.pbx.bus import CallEvent, Handler, SessionId
from vpbx.pbx.calls import CallEvents, EngineDirectory, MemoryCallRegistry
from vpbx.pbx.node import SipNode
from vpbx.pbx.registrar import Binding, aor_for
from vpbx.pbx.trunkmon import TrunkInfo
from vpbx.sip.auth import digest_response
from vpbx.sip.dialog import Dialog, LocalVia, build_initial_request, new_call_id, new_tag, tag_of
from vpbx.sip.digest import ha1
from vpbx.sip.flow import Destination
from vpbx.sip.message import (
    URI,
    Address,
    Parameters,
    Request,
    Response,
    build_response,
    parse,
    parse_uri,
    serialize,
)
from vpbx.sip.transaction import TimerConfig, TransactionTable
from vpbx.store.models import DomainId

TENANT = "acme.vpbx.test"
PBX_HOST, PBX_PORT = "203.0.113.1", 5060
MEDIA_HOST = "198.51.100.1"
PORT_A, PORT_B = 40000, 40002
PASSWORD = "Secret-Sip-1"
SDP = "application/sdp"
# The node's own transaction timers run on the real loop: slow enough that nothing retransmits in a test.
SLOW_TIMERS = TimerConfig(t1=60.0, t2=60.0, t4=60.0)


def sdp(
    host: str, port: int, *, direction: str = "sendrecv", codecs: str = "8 0 101", version: int = 1
) -> bytes:
    lines = [
        "v=0",
        f"o=- 42 {version} IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {codecs}",
    ]
    for pt in codecs.split():
        name = {"8": "PCMA/8000", "0": "PCMU/8000", "18": "G729/8000", "101": "telephone-event/8000"}[pt]
        lines.append(f"a=rtpmap:{pt} {name}")
    if "101" in codecs.split():
        lines.append("a=fmtp:101 0-15")
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


# --- fakes -----------------------------------------------------------------------------------------
class FakeTransports:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Destination]] = []

    def send(self, data: bytes, dest: Destination) -> bool:
        self.sent.append((data, dest))
        return True

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return host, port

    async def stop(self) -> None:
        return None


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """The B2BUA's timers on a virtual clock: ``advance`` fires what is due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, _Handle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle()
        heapq.heappush(self._heap, (self.now + delay_s, next(self._seq), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._heap and self._heap[0][0] <= until:
            when, _, handle, callback = heapq.heappop(self._heap)
            self.now = when
            if not handle.cancelled:
                callback()
        self.now = until

    @property
    def pending(self) -> int:
        return sum(not h.cancelled for _, _, h, _ in self._heap)

    def monotonic(self) -> float:
        return self.now


@dataclass
class FakeMedia:
    allocated: list[SessionId] = field(default_factory=list)
    updates: list[tuple[LegRef, MediaAddress | None, int, int | None]] = field(default_factory=list)
    released: list[SessionId] = field(default_factory=list)
    played: list[tuple[LegRef, str]] = field(default_factory=list)
    stops: int = 0
    adopted: list[tuple[LegRef, StreamState]] = field(default_factory=list)
    amd: list[tuple[LegRef, AmdParams | None]] = field(default_factory=list)  # starts, and stops (None)

    async def allocate(self, session: SessionId) -> MediaPorts:
        self.allocated.append(session)
        return MediaPorts(MediaAddress(MEDIA_HOST, PORT_A), MediaAddress(MEDIA_HOST, PORT_B))

    async def update(
        self, leg: LegRef, remote: MediaAddress | None, codec_pt: int, telephone_event_pt: int | None
    ) -> None:
        self.updates.append((leg, remote, codec_pt, telephone_event_pt))

    async def release(self, session: SessionId) -> None:
        self.released.append(session)

    async def play(self, leg: LegRef, prompt: Prompt, *, loop: bool = False) -> None:
        self.played.append((leg, prompt.id))

    async def stop_play(self, leg: LegRef) -> bool:
        self.stops += 1
        return False

    async def stream(self, leg: LegRef) -> StreamState:
        return StreamState(ssrc=7, seq=100, timestamp=16000, age_s=0.0)

    async def adopt_stream(self, leg: LegRef, state: StreamState) -> None:
        self.adopted.append((leg, state))

    async def stats(self, session: SessionId) -> SessionStats:
        raise NotImplementedError

    async def amd_start(self, leg: LegRef, params: AmdParams) -> None:
        self.amd.append((leg, params))

    async def amd_stop(self, leg: LegRef) -> None:
        self.amd.append((leg, None))

    def last(self, side: str) -> tuple[MediaAddress | None, int, int | None]:
        _leg, remote, codec, te = next(u for u in reversed(self.updates) if u[0].side == side)
        return remote, codec, te


class RecordingBus:
    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    def subscribe(self, name: str, handler: Handler) -> None:
        raise NotImplementedError

    async def publish(self, event: CallEvent) -> None:
        self.events.append(event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def states(self, session: SessionId | None = None) -> list[str]:
        return [e.state for e in self.events if session is None or e.session_id == session]


class TestNode(SipNode):
    """The real node; handler failures are kept so the test fails on them instead of a log line."""

    __test__ = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: list[BaseException] = []

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, eager: bool = False) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception as e:
                self.failures.append(e)
                raise

        super().spawn(guarded(), name, eager=eager)


# --- the PBX and its phones ------------------------------------------------------------------------
class Pbx:
    def __init__(self, core: Core, domain_id: DomainId, *, channel_limit: int, no_answer_s: float) -> None:
        self.core = core
        self.domain_id = domain_id
        self.bus = RecordingBus()
        self.media = FakeMedia()
        self.timers = FakeTimers()
        self.registry = MemoryCallRegistry()
        self.b2bua = B2bua(
            registry=self.registry,
            events=CallEvents(self.bus, core.clock),
            clock=core.clock,
            media=self.media,
            timers=self.timers,
            no_answer_s=no_answer_s,
        )
        self.node = TestNode(core, calls=self.b2bua)
        self.node.table = TransactionTable(SLOW_TIMERS)
        self.transports = FakeTransports()
        self.node.transports = self.transports  # type: ignore[assignment]
        self.node.advertised = (PBX_HOST, PBX_PORT)
        self.b2bua.attach(self.node, EngineDirectory(self.node.directory))
        self.phones: dict[tuple[str, int], Phone] = {}
        self.stray: list[tuple[bytes, Destination]] = []

    @classmethod
    async def create(
        cls,
        core: Core,
        extensions: Sequence[str] = ("101", "102", "103"),
        *,
        channel_limit: int = 10,
        no_answer_s: float = 60.0,
    ) -> Pbx:
        async with core.sessions() as s:
            d = await domains.create_domain(s, domains.DomainInput(name=TENANT, channel_limit=channel_limit))
            for ext in extensions:
                await users.create_user(
                    s,
                    d.id,
                    users.UserInput(
                        name=f"user{ext}",
                        display_name=f"User {ext}",
                        pin=ext,
                        sip_login=ext,
                        sip_password=PASSWORD,
                    ),
                    box=core.box,
                )
            await s.commit()
        return cls(core, DomainId(d.id), channel_limit=channel_limit, no_answer_s=no_answer_s)

    def phone(self, ext: str, host: str, port: int = 5060, *, name: str | None = None) -> Phone:
        p = Phone(self, ext, host, port, name=name or f"p{ext}")
        self.phones[(host, port)] = p
        return p

    async def register(
        self,
        phone: Phone,
        *,
        path: tuple[str, ...] = (),
        domain: str = TENANT,
        domain_id: DomainId | None = None,
    ) -> None:
        """A binding for the phone's contact, as the registrar would store it (in ``domain``, by default the
        kit's own)."""
        now = self.core.clock.monotonic()
        binding = Binding(
            contact=str(phone.contact.uri),
            flow=phone.flow,
            path=path,
            call_id=new_call_id(),
            cseq=1,
            expires_at=now + 3600,
            updated_at=now,
        )
        await self.node.location.save(domain_id or self.domain_id, aor_for(phone.ext, domain), binding)

    async def settle(self) -> None:
        """Run the node's handler tasks (and those they start) to completion, then route what was sent."""
        for _ in range(1000):
            await asyncio.sleep(0)
            busy = [t for t in self.node._tasks if not t.done()]
            if not busy:
                break
            await asyncio.wait(busy)
        for data, dest in self.transports.sent:
            phone = self.phones.get((dest.host, dest.port))
            if phone is None:
                self.stray.append((data, dest))
            else:
                msg = parse(data)
                phone.inbox.append(msg)
                phone.raw.append(data)
        self.transports.sent.clear()
        if self.node.failures:
            raise self.node.failures[0]

    async def advance(self, seconds: float) -> None:
        self.timers.advance(seconds)
        await self.settle()

    def events(self) -> list[str]:
        return self.bus.states()


class Phone:
    def __init__(self, pbx: Pbx, ext: str, host: str, port: int, *, name: str) -> None:
        self.pbx = pbx
        self.ext = ext
        self.flow = Destination("udp", host, port)
        self.via = LocalVia("UDP", host, port)
        self.contact = Address(uri=URI(scheme="sip", user=name, host=host, port=port))
        self.inbox: list[Request | Response] = []
        self.raw: list[bytes] = []

    # --- the wire ---
    async def send(self, msg: Request | Response) -> None:
        self.pbx.node._receive(serialize(msg), self.flow)
        await self.pbx.settle()

    async def expect(self, what: str | int) -> Any:
        """The first unread message that is the request ``what`` (a method) or a response with that code."""
        await self.pbx.settle()
        for i, msg in enumerate(self.inbox):
            if (isinstance(msg, Request) and msg.method == what) or (
                isinstance(msg, Response) and msg.code == what
            ):
                del self.inbox[i]
                return msg
        seen = [m.method if isinstance(m, Request) else m.code for m in self.inbox]
        raise AssertionError(f"{self.ext}@{self.flow.host}: no {what}; unread: {seen}")

    def unread(self, *, skip_trying: bool = True) -> list[str | int]:
        return [
            m.method if isinstance(m, Request) else m.code
            for m in self.inbox
            if not (skip_trying and isinstance(m, Response) and m.code == 100)
        ]

    # --- as a caller ---
    def invite(self, target: str, *, headers: Sequence[tuple[str, str]] = ()) -> Request:
        """A first INVITE (no credentials) with our usual offer."""
        body = sdp(self.flow.host, 30000)
        return self._invite(target, cseq=1, call_id=new_call_id(), tag=new_tag(), body=body, headers=headers)

    def _invite(
        self,
        target: str,
        *,
        cseq: int,
        call_id: str,
        tag: str,
        body: bytes,
        headers: Sequence[tuple[str, str]],
    ) -> Request:
        return build_initial_request(
            "INVITE",
            parse_uri(f"sip:{target}@{TENANT}"),
            via=self.via,
            from_=Address(
                uri=URI(scheme="sip", user=self.ext, host=TENANT),
                name=f"Phone {self.ext}",
                parameters=Parameters(tag=tag),
            ),
            to=Address(uri=URI(scheme="sip", user=target, host=TENANT)),
            call_id=call_id,
            cseq=cseq,
            contact=self.contact,
            headers=headers,
            body=body,
            content_type=SDP if body else None,
        )

    async def call(
        self,
        target: str,
        *,
        body: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        password: str = PASSWORD,
    ) -> OutgoingCall:
        """INVITE, the 407 challenge, its ACK, the INVITE with credentials (RFC 3261 §22.3)."""
        body = sdp(self.flow.host, 30000) if body is None else body
        call_id, tag = new_call_id(), new_tag()
        first = self._invite(target, cseq=1, call_id=call_id, tag=tag, body=body, headers=headers)
        await self.send(first)
        challenge: Response = await self.expect(407)
        await self.send(ack_non_2xx(first, challenge))
        second = self._invite(target, cseq=2, call_id=call_id, tag=tag, body=body, headers=headers)
        second.headers.add("Proxy-Authorization", self.credentials(challenge, second, password))
        await self.send(second)
        return OutgoingCall(self, second)

    def credentials(self, challenge: Response, request: Request, password: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge.headers["Proxy-Authenticate"]))
        realm, nonce = params["realm"], params["nonce"]
        uri = str(request.uri)
        response = digest_response(
            ha1=ha1(self.ext, realm, password, "MD5"),
            nonce=nonce,
            nc="00000001",
            cnonce="c0ffee",
            qop="auth",
            method=request.method,
            uri=uri,
        )
        return (
            f'Digest username="{self.ext}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"'
        )

    # --- as a callee ---
    async def ringing(self) -> IncomingCall:
        invite: Request = await self.expect("INVITE")
        return IncomingCall(self, invite, new_tag())


def ack_non_2xx(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a non-2xx final (RFC 3261 §17.1.1.3)."""
    ack = Request("ACK", invite.uri)
    ack.headers.add("Via", invite.headers.getlist("Via")[0])
    ack.headers.add("Max-Forwards", "70")
    ack.headers.add("From", invite.headers["From"])
    ack.headers.add("To", response.headers["To"])
    ack.headers.add("Call-ID", invite.call_id)
    ack.headers.add("CSeq", f"{invite.cseq.sequence} ACK")
    return ack


@dataclass
class OutgoingCall:
    """The caller's side of a call: the INVITE that was accepted for routing, then its dialog."""

    phone: Phone
    invite: Request
    dialog: Dialog | None = None
    ok: Response | None = None

    async def answered(self) -> Response:
        """Wait for the 200, make the dialog, ACK it."""
        ok: Response = await self.phone.expect(200)
        self.ok = ok
        self.dialog = Dialog.uac(self.invite, ok, local_contact=self.phone.contact)
        await self.phone.send(self.dialog.build_ack(self.invite.cseq.sequence, via=self.phone.via))
        return ok

    def request(self, method: str, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> Request:
        assert self.dialog is not None
        return self.dialog.build_request(
            method, via=self.phone.via, body=body, content_type=SDP if body else None, headers=headers
        )

    async def send(
        self, method: str, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Request:
        req = self.request(method, body=body, headers=headers)
        await self.phone.send(req)
        return req

    async def ack(self, reinvite: Request, body: bytes = b"") -> None:
        assert self.dialog is not None
        await self.phone.send(
            self.dialog.build_ack(
                reinvite.cseq.sequence, via=self.phone.via, body=body, content_type=SDP if body else None
            )
        )

    async def cancel(self) -> None:
        cancel = Request("CANCEL", self.invite.uri)
        for name in ("Via", "From", "To", "Call-ID"):
            cancel.headers.add(name, self.invite.headers.getlist(name)[0])
        cancel.headers.add("Max-Forwards", "70")
        cancel.headers.add("CSeq", f"{self.invite.cseq.sequence} CANCEL")
        await self.phone.send(cancel)


@dataclass
class IncomingCall:
    """The callee's side: the INVITE it got and the tag it answers with."""

    phone: Phone
    invite: Request
    tag: str
    dialog: Dialog | None = None

    def response(self, code: int, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> Response:
        extra = [("Contact", str(self.phone.contact)), *headers]
        if body:
            extra.append(("Content-Type", SDP))
        return build_response(self.invite, code, to_tag=self.tag, headers=extra, body=body)

    async def reply(
        self, code: int, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Response:
        resp = self.response(code, body=body, headers=headers)
        if 200 <= code < 300:
            self.dialog = Dialog.uas(self.invite, local_tag=self.tag, local_contact=self.phone.contact)
            self.dialog.confirm()
        await self.phone.send(resp)
        return resp

    async def answer(self, body: bytes | None = None) -> Request:
        """200 with SDP; the ACK the PBX sends back."""
        await self.reply(200, body=sdp(self.phone.flow.host, 31000) if body is None else body)
        ack: Request = await self.phone.expect("ACK")
        return ack

    async def send(self, method: str, *, body: bytes = b"") -> Request:
        assert self.dialog is not None
        req = self.dialog.build_request(
            method, via=self.phone.via, body=body, content_type=SDP if body else None
        )
        await self.phone.send(req)
        return req

    async def answer_request(self, request: Request, code: int = 200) -> None:
        await self.phone.send(build_response(request, code))


def tag(msg: Request | Response, which: str = "To") -> str | None:
    return tag_of(msg.to_address if which == "To" else msg.from_address)


# --- carriers ---------------------------------------------------------------------------------------
def trunk(domain_id: DomainId, name: str, host: str, **kw: object) -> TrunkInfo:
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "domain_id": domain_id,
        "name": name,
        "kind": "ip",
        "host": host,
        "port": 5060,
        "transport": "udp",
        "address": host,
        "proxy": None,
        "proxy_host": None,
        "username": "acme",
        "auth_username": "",
        "password": "carrier-secret",
        "expires_s": 3600,
        "from_user": "",
        "from_domain": "",
        "caller_id_mode": "domain",
        "caller_id_number": None,
        "number_format": "national",
        "max_calls": 10,
        "priority": 10,
        "enabled": True,
        "networks": (),
    }
    fields.update(kw)
    return TrunkInfo(**fields)  # type: ignore[arg-type]
