"""baresip as a scripted phone (telephony.md §7.2).

Each phone gets its own configuration directory, listens on 127.0.0.1 only, plays a WAV file as its
microphone (``aufile``) and records what it sends and receives per call (``sndfile`` writes
``dump-<time>-enc.wav`` and ``dump-<time>-dec.wav`` into ``recordings``). The test drives it through
``ctrl_tcp``: JSON in netstrings both ways, commands answered by token, events pushed as they happen.

The account is added with ``uanew`` only after the control connection is up, so that no event (such as
``REGISTER_OK``) can happen before the harness listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.integration.peers.audio import make_silence
from tests.integration.peers.net import LOOPBACK, free_port_block, free_ports, require_loopback, wait_until
from tests.integration.peers.process import PeerProcess
from tests.integration.peers.service import SipService

BARESIP = "baresip"
MODULE_PATH = "/usr/lib/baresip/modules"
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 5.0
EVENT_TIMEOUT_S = 10.0
RTP_PORTS_PER_PHONE = 20
MAX_EVENTS = 2000  # kept per phone; a test that needs more is doing something else
MAX_NETSTRING = 1 << 20

Event = Mapping[str, object]
AnswerMode = Literal["manual", "auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One SIP account: ``<sip:user@domain>;auth_pass=…;outbound="sip:host:port;transport=…";…``."""

    user: str
    domain: str
    password: str
    outbound: str | None = None  # e.g. "sip:127.0.0.1:5060"; None = the domain itself
    transport: Literal["udp", "tcp", "tls"] = "udp"
    regint_s: int = 600  # 0 = never register
    answermode: AnswerMode = "manual"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def line(self) -> str:
        for value in (self.user, self.domain, self.password):
            if any(c in value for c in ';<>"\r\n '):
                raise ValueError(f"unsupported character in account value {value!r}")
        params = [f"auth_pass={self.password}"]
        if self.outbound is not None:
            params.append(f'outbound="{self.outbound};transport={self.transport}"')
        params += [f"regint={self.regint_s}", f"answermode={self.answermode}"]
        return f"<{self.aor};transport={self.transport}>;" + ";".join(params)

    @classmethod
    def on(cls, service: SipService, user: str, **kwargs: object) -> Account:
        """The account of ``user`` on ``service`` (its domain, password and address as outbound proxy)."""
        return cls(
            user=user,
            domain=service.domain,
            password=service.password(user),
            outbound=service.outbound,
            **kwargs,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class Response:
    ok: bool
    data: str


class CommandFailed(RuntimeError):
    pass


def encode_netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def render_config(
    *,
    sip_port: int,
    ctrl_port: int,
    rtp_ports: tuple[int, int],
    audio_source: Path,
    recordings: Path,
) -> str:
    """The ``config`` file of one phone (telephony.md §7.2; comments there, not here: baresip reads it)."""
    lines = [
        "poll_method epoll",
        f"sip_listen {LOOPBACK}:{sip_port}",
        f"net_interface {LOOPBACK}",
        f"audio_source aufile,{audio_source}",
        "audio_alert aufile,/dev/null",
        "audio_channels 1",
        "audio_srate 8000",
        f"rtp_ports {rtp_ports[0]}-{rtp_ports[1]}",
        f"module_path {MODULE_PATH}",
        "module g711.so",
        "module aufile.so",
        "module sndfile.so",
        "module_app account.so",
        "module_app menu.so",
        "module_app ctrl_tcp.so",
        f"ctrl_tcp_listen {LOOPBACK}:{ctrl_port}",
        f"snd_path {recordings}",
    ]
    return "\n".join(lines) + "\n"


class Baresip:
    """A running baresip with its control connection. Use ``Baresip.start(...)`` as a context manager."""

    def __init__(self, name: str, workdir: Path, proc: PeerProcess, sip_port: int, ctrl_port: int) -> None:
        self.name = name
        self.workdir = workdir
        self.recordings = workdir / "recordings"
        self.proc = proc
        self.sip_port = sip_port
        self.ctrl_port = ctrl_port
        self.account: Account | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._events: list[Event] = []
        self._consumed = 0  # events before this index have been returned by wait_event
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        workdir: Path,
        *,
        name: str = "phone",
        account: Account | None = None,
        audio_source: Path | None = None,
        sip_trace: bool = False,
    ) -> AsyncIterator[Baresip]:
        """Start a phone in ``workdir/name``; with ``account``, add it (``register()`` waits for it).
        ``sip_trace``: baresip prints every SIP message it sends and receives into its log (``-s``)."""
        home = workdir / name
        home.mkdir(parents=True, exist_ok=True)
        (home / "recordings").mkdir(exist_ok=True)
        if audio_source is None:
            audio_source = await make_silence(home / "silence.wav", 30)
        sip_port = free_port_block(2)  # baresip's TLS listener takes sip_port + 1
        ctrl_port = free_ports(1)[0]
        rtp_lo = free_port_block(RTP_PORTS_PER_PHONE)
        (home / "config").write_text(
            render_config(
                sip_port=sip_port,
                ctrl_port=ctrl_port,
                rtp_ports=(rtp_lo, rtp_lo + RTP_PORTS_PER_PHONE - 1),
                audio_source=audio_source,
                recordings=home / "recordings",
            )
        )
        (home / "accounts").write_text("")
        (home / "contacts").write_text("")
        proc = await PeerProcess.start(
            f"baresip {name}",
            [BARESIP, "-f", str(home), *(["-s"] if sip_trace else [])],
            log_path=home / "baresip.log",
            cwd=home,
        )
        phone = cls(name, home, proc, sip_port, ctrl_port)
        try:
            await phone._connect()
            if account is not None:
                await phone.add_account(account)
            yield phone
        finally:
            await phone.close()

    async def _connect(self) -> None:
        async def attempt() -> bool:
            if not self.proc.running:
                raise RuntimeError(f"baresip {self.name} exited:\n{self.proc.log_tail()}")
            try:
                self._reader, self._writer = await asyncio.open_connection(LOOPBACK, self.ctrl_port)
            except OSError:
                return False
            return True

        await wait_until(attempt, timeout_s=CONNECT_TIMEOUT_S, what=f"baresip {self.name} ctrl_tcp")
        self._task = asyncio.create_task(self._read_loop(), name=f"baresip-{self.name}-ctrl")

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                size = int((await self._reader.readuntil(b":"))[:-1])
                if size > MAX_NETSTRING:
                    raise ValueError(f"netstring of {size} bytes from baresip")
                message = json.loads((await self._reader.readexactly(size + 1))[:-1])
                await self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        ConnectionError(f"baresip {self.name} closed its control connection")
                    )
            async with self._changed:
                self._changed.notify_all()

    async def _dispatch(self, message: dict[str, object]) -> None:
        if message.get("response"):
            future = self._pending.pop(str(message.get("token")), None)
            if future is not None and not future.done():
                future.set_result(Response(ok=bool(message.get("ok")), data=str(message.get("data", ""))))
        elif message.get("event"):
            async with self._changed:
                self._events.append(message)
                if len(self._events) > MAX_EVENTS:
                    drop = len(self._events) - MAX_EVENTS
                    del self._events[:drop]
                    self._consumed = max(0, self._consumed - drop)
                self._changed.notify_all()

    # -- commands ---------------------------------------------------------------------------------------

    async def command(self, name: str, params: str = "", *, check: bool = True) -> Response:
        """Send one ctrl_tcp command and wait for its response (matched by token)."""
        if self._writer is None:
            raise RuntimeError("not connected")
        token = uuid.uuid4().hex
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        body = json.dumps({"command": name, "params": params, "token": token}).encode()
        self._writer.write(encode_netstring(body))
        await self._writer.drain()
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                response = await future
        finally:
            self._pending.pop(token, None)
        if check and not response.ok:
            raise CommandFailed(f"baresip {self.name}: {name} {params}: {response.data.strip()}")
        return response

    async def add_account(self, account: Account) -> None:
        if account.outbound is not None:
            require_loopback(account.outbound.removeprefix("sip:").split(":", 1)[0].split(";", 1)[0])
        await self.command("uanew", account.line())
        self.account = account

    async def register(self, account: Account, *, timeout_s: float = EVENT_TIMEOUT_S) -> Event:
        """Add ``account`` and wait for its ``REGISTER_OK``."""
        await self.add_account(account)
        return await self.wait_event("REGISTER_OK", timeout_s=timeout_s)

    async def dial(self, target: str) -> None:
        """Call ``target`` (an extension on the account's domain, or a full SIP URI)."""
        if not target.startswith("sip:"):
            if self.account is None:
                raise RuntimeError("dialling an extension needs an account")
            target = f"sip:{target}@{self.account.domain}"
        await self.command("dial", target)

    async def answer(self) -> None:
        await self.command("accept")

    async def hangup(self) -> None:
        await self.command("hangup")

    async def list_calls(self) -> str:
        return (await self.command("listcalls")).data

    # -- events -----------------------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    async def wait_event(
        self,
        kind: str,
        *,
        timeout_s: float = EVENT_TIMEOUT_S,
        where: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The next event of type ``kind`` (e.g. ``CALL_ESTABLISHED``) after the last one waited for.

        Events in between stay in ``events``; waiting is ordered, so ``wait_event("CALL_RINGING")`` then
        ``wait_event("CALL_ESTABLISHED")`` also checks that order.
        """

        def find() -> Event | None:
            for i in range(self._consumed, len(self._events)):
                event = self._events[i]
                if event.get("type") == kind and (where is None or where(event)):
                    self._consumed = i + 1
                    return event
            return None

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                while (found := find()) is None:
                    if self._task is None or self._task.done():
                        raise ConnectionError(f"baresip {self.name} control connection is closed")
                    await self._changed.wait()
                return found
        except TimeoutError:
            seen = [e.get("type") for e in self._events[self._consumed :]]
            raise TimeoutError(
                f"baresip {self.name}: no {kind} within {timeout_s} s; events since: {seen}"
            ) from None

    # -- recordings -------------------------------------------------------------------------------------

    def recorded(self, direction: Literal["dec", "enc"] = "dec") -> list[Path]:
        """The call recordings, oldest first: ``dec`` is what the phone received, ``enc`` what it sent."""
        return sorted(self.recordings.glob(f"dump-*-{direction}.wav"))

    async def wait_recorded(self, seconds: float, *, timeout_s: float = EVENT_TIMEOUT_S) -> Path:
        """Wait until the newest received-audio recording holds ``seconds`` of 8 kHz 16-bit audio."""
        want = 44 + int(seconds * 8000 * 2)

        def enough() -> bool:
            files = self.recorded("dec")
            return bool(files) and files[-1].stat().st_size >= want

        await wait_until(enough, timeout_s=timeout_s, what=f"{seconds} s of audio at {self.name}")
        return self.recorded("dec")[-1]

    # -- shutdown ---------------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._writer is not None and self.proc.running:
            with contextlib.suppress(Exception):
                await self.command("quit", check=False)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.proc.stop()
