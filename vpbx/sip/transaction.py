"""SIP transactions: the four RFC 3261 §17 state machines and the table that routes to them (sans-I/O).

RFC 3261 §17 as amended by RFC 6026 (Accepted state, Timers L and M, stray responses dropped) and RFC 4320
(a non-INVITE server never sends a provisional response nor a 408). Nothing here touches a socket or a
clock: every call takes ``now`` (monotonic seconds) and returns the actions the caller must perform, in
order (telephony.md §3.3)::

    for key, action in table.on_request(request, source, now=clock.monotonic()):
        match action:
            case Send(data, dest): transport.send(data, dest)   # failed? table.on_transport_error(key, now)
            case StartTimer(name, at): timers.schedule(key, name, at)   # replaces a running one of that name
            case StopTimer(name): timers.cancel(key, name)
            case Deliver(message): tu.receive(key, message)   # key None: an ACK outside any transaction
            case Terminated(reason): tu.ended(key, reason)     # the table has already forgotten the key
            case Refuse(request, dest): ...   # table full: send build_response(request, 503) + Retry-After

When a timer fires the adapter calls ``table.on_timer(key, name, now)``; when the UDP socket reports an ICMP
error for a datagram it sent to an address, ``table.on_unreachable(host, port, now)`` (RFC 3261 §18.4).
The TU answers a server transaction with ``table.respond(key, response, now)`` and starts a client
transaction with ``table.send_request(request, dest, now)``; a CANCEL goes the same way (its own transaction
on the INVITE's branch) and also arms the RFC 3261 §9.1 guard on the INVITE. A 2xx ACK is not a
transaction: the UAC core sends it itself (§13.2.2.4), and the UAS core retransmits its 2xx (§13.3.1.4)
through ``respond``.

The machines can also be driven alone (unit tests, a stateless front end): build one, call ``start(now)``,
then ``on_response`` / ``on_request`` / ``respond`` / ``on_timer`` / ``on_transport_error``. A timer that
is not running (stopped, already fired, or replaced) is ignored when it fires.

Timeouts reach the TU as follows: Timer B (and the CANCEL guard) delivers a synthetic 408 and then
``Terminated("timeout")``; Timer F and Timer H only terminate with ``"timeout"`` (RFC 4320: no 408 for
non-INVITE). A transport error on a client transaction still waiting for its final response delivers a
synthetic 503 (RFC 3261 §8.1.3.1), every other transport error ends with ``"transport-error"``. These
synthetic responses are delivered with ``local=True``.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Literal, TypeAlias

from vpbx.errors import ConfigError, SipError, TransactionError
from vpbx.sip import message
from vpbx.sip.flow import Destination
from vpbx.sip.message import URI, Request, Response

# What a completed non-INVITE server transaction holds instead of its request: nothing needs the request
# any more (retransmissions are matched by key and answered with the stored bytes), and dropping it leaves
# the collector and the memory one small object per transaction for the 32 s of Timer J.
RELEASED_REQUEST = Request("RELEASED", URI(scheme="sip", host="invalid"))

# --- RFC 3261 Appendix A / §17 timer values -------------------------------------------------------------
T1 = 0.5  # s, RFC 3261 §17.1.1.1: round-trip time estimate (configurable, TimerConfig.t1)
T2 = 4.0  # s, RFC 3261 §17.1.2.2: cap of the non-INVITE request and INVITE response retransmit interval
T4 = 5.0  # s, RFC 3261 §17.1.2.2: longest time a message stays in the network
TIMEOUT_FACTOR = 64  # RFC 3261 App. A: B, F, H, J = 64·T1; RFC 6026 §8.4, §8.7: L, M = 64·T1
TIMER_D_UNRELIABLE = 32.0  # s, RFC 3261 §17.1.1.2: "at least 32 seconds" for unreliable transports

# --- timer names (telephony.md §3.3 table) ---------------------------------------------------------------
TIMER_A = "A"  # RFC 3261 §17.1.1.2: INVITE client retransmit, T1 doubling (unreliable only)
TIMER_B = "B"  # RFC 3261 §17.1.1.2: INVITE client gives up after 64·T1 → 408 to the TU
TIMER_D = "D"  # RFC 3261 §17.1.1.2: INVITE client absorbs final retransmits, 32 s UDP / 0 reliable
TIMER_E = "E"  # RFC 3261 §17.1.2.2: non-INVITE client retransmit, T1 doubling to T2 (unreliable only)
TIMER_F = "F"  # RFC 3261 §17.1.2.2: non-INVITE client gives up after 64·T1
TIMER_G = "G"  # RFC 3261 §17.2.1: INVITE server retransmits its non-2xx final, T1 doubling to T2
TIMER_H = "H"  # RFC 3261 §17.2.1: INVITE server waits 64·T1 for the ACK
TIMER_I = "I"  # RFC 3261 §17.2.1: INVITE server absorbs ACK retransmits, T4 UDP / 0 reliable
TIMER_J = "J"  # RFC 3261 §17.2.2: non-INVITE server absorbs request retransmits, 64·T1 UDP / 0 reliable
TIMER_K = "K"  # RFC 3261 §17.1.2.2: non-INVITE client absorbs response retransmits, T4 UDP / 0 reliable
TIMER_L = "L"  # RFC 6026 §8.7: INVITE server stays Accepted for 64·T1 after a 2xx
TIMER_M = "M"  # RFC 6026 §8.4: INVITE client stays Accepted for 64·T1 after a 2xx
TIMER_CANCEL = "cancel"  # RFC 3261 §9.1: no final 64·T1 after our CANCEL → the INVITE counts as cancelled

MAGIC_COOKIE = message.MAGIC_COOKIE  # RFC 3261 §8.1.1.7: z9hG4bK; without it, RFC 2543 matching
DEFAULT_PORTS = {"tls": 5061, "ws": 80, "wss": 443}  # RFC 3261 §19.1.2, RFC 7118; everything else 5060
# Table cap: beyond it new server transactions are refused with 503. A REGISTER storm at 2,000/s keeps
# 2 × 2,000 × 32 s (Timer J) = 128,000 completed transactions; each holds its response bytes only (~1 KB).
DEFAULT_MAX_TRANSACTIONS = 150_000

TerminationReason: TypeAlias = Literal["done", "timeout", "transport-error"]
Message: TypeAlias = Request | Response


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1, T2 and T4; every other timer is derived from them (RFC 3261 Appendix A)."""

    t1: float = T1
    t2: float = T2
    t4: float = T4

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 <= 0:
            raise ConfigError(
                "SIP timers need 0 < T1 <= T2 and T4 > 0",
                details={"t1": self.t1, "t2": self.t2, "t4": self.t4},
            )

    @property
    def timeout(self) -> float:
        """64·T1: timers B, F, H, J (unreliable), L, M and the CANCEL guard."""
        return TIMEOUT_FACTOR * self.t1

    def timer_d(self, reliable: bool) -> float:
        return 0.0 if reliable else TIMER_D_UNRELIABLE

    def timer_i(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        return 0.0 if reliable else self.timeout

    def timer_k(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4


DEFAULT_TIMERS = TimerConfig()


# --- actions ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Hand ``data`` to the transport for ``dest``; report a failure with ``on_transport_error``."""

    data: bytes
    dest: Destination


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Fire ``name`` at monotonic time ``at``; replaces a running timer of the same name."""

    name: str
    at: float


@dataclass(frozen=True, slots=True)
class StopTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Pass a request or response up to the transaction user.

    ``local``: a response the transaction layer made itself on a failure (the 408 of Timer B, the 503 of a
    transport error) and that a ``Terminated`` with the failure's reason follows; a user that learns of
    failures from the reason alone (an OPTIONS pinger) must not take it for the peer's answer.
    """

    message: Message
    local: bool = False


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over; ``"timeout"`` and ``"transport-error"`` tell the TU why it failed."""

    reason: TerminationReason


@dataclass(frozen=True, slots=True)
class Refuse:
    """The table is full: answer ``request`` statelessly with 503 (and Retry-After) to ``dest``."""

    request: Request
    dest: Destination


Action: TypeAlias = Send | StartTimer | StopTimer | Deliver | Terminated | Refuse


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


# --- matching keys (RFC 3261 §17.1.3, §17.2.3) ------------------------------------------------------------
Side: TypeAlias = Literal["client", "server"]


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """Client: branch + CSeq method. Server: branch + sent-by + method (ACK counts as INVITE).

    For an RFC 2543 request (no ``z9hG4bK`` branch) ``branch`` holds the legacy tuple of §17.2.3 —
    Call-ID, From tag, CSeq number, Request-URI and top Via — and ``sent_by`` is empty. The To tag is left
    out, so the ACK of a non-2xx final (whose To carries our tag) still matches its INVITE.
    """

    side: Side
    branch: str
    sent_by: str
    method: str


def _sent_by(via: message.Via) -> str:
    transport = via.transport.lower()
    return f"{via.host.lower()}:{via.port or DEFAULT_PORTS.get(transport, 5060)}"


def client_key(msg: Message) -> TransactionKey | None:
    """The client transaction a response (or our own request) belongs to; None when it cannot have one."""
    try:
        branch = message.branch(msg)
        method = msg.method if isinstance(msg, Request) else msg.cseq.method
    except (KeyError, ValueError, SipError):
        return None
    if not branch:
        return None
    return TransactionKey("client", branch, "", method)


def server_key(request: Request) -> TransactionKey | None:
    """The server transaction ``request`` belongs to (§17.2.3); None when its Via or CSeq is unusable."""
    method = "INVITE" if request.method == "ACK" else request.method
    try:
        via = message.top_via(request)
        branch = via.parameters.get("branch")
        if branch and branch.startswith(MAGIC_COOKIE):
            return TransactionKey("server", branch, _sent_by(via), method)
        from_tag = request.from_address.parameters.get("tag") or ""
        legacy = "\n".join(
            ("rfc2543", request.call_id, from_tag, str(request.cseq.sequence), str(request.uri), str(via))
        )
    except (KeyError, ValueError, SipError):
        return None
    return TransactionKey("server", legacy, "", method)


# --- message helpers ----------------------------------------------------------------------------------------
_serialize = message.serialize


def _response_to(request: Request, code: int) -> Response:
    """A response built by the transaction layer itself: 100 Trying, synthetic 408 and 503 (§8.2.6)."""
    return message.build_response(request, code)


def _ack_for(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final, built by the client transaction (RFC 3261 §17.1.1.3)."""
    ack = Request("ACK", invite.uri)
    top = invite.headers.getlist("Via")[0]  # one Via, equal to the INVITE's top one
    ack.headers.add("Via", top if "," not in top else str(message.top_via(invite)))
    for name in ("Max-Forwards", "From"):
        for value in invite.headers.getlist(name):
            ack.headers.add(name, value)
    ack.headers.add("To", response.headers["To"])
    ack.headers.add("Call-ID", invite.headers["Call-ID"])
    ack.headers.add("CSeq", f"{invite.cseq.sequence} ACK")
    for value in invite.headers.getlist("Route"):
        ack.headers.add("Route", value)
    return ack  # Content-Length: 0 is written by serialize


# --- the machines -------------------------------------------------------------------------------------------
class _Machine:
    """Timer bookkeeping shared by the four machines: which timers run, and the way out."""

    __slots__ = ("_timers", "config", "dest", "reliable", "request", "state")

    def __init__(self, request: Request, dest: Destination, config: TimerConfig, state: State) -> None:
        self.request = request
        self.dest = dest
        self.config = config
        self.reliable = dest.reliable
        self.state = state
        self._timers: dict[str, float] = {}

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    @property
    def timers(self) -> dict[str, float]:
        """Running timers by name → deadline (a copy)."""
        return dict(self._timers)

    def _start(self, out: list[Action], name: str, at: float) -> None:
        self._timers[name] = at
        out.append(StartTimer(name, at))

    def _stop(self, out: list[Action], *names: str) -> None:
        for name in names:
            if self._timers.pop(name, None) is not None:
                out.append(StopTimer(name))

    def _terminate(self, out: list[Action], reason: TerminationReason) -> list[Action]:
        self._stop(out, *list(self._timers))
        self.state = State.TERMINATED
        out.append(Terminated(reason))
        return out

    def _linger(
        self, out: list[Action], state: State, name: str, duration: float, now: float
    ) -> list[Action]:
        """Enter an absorbing state for ``duration`` (D, I, J, K, L, M); zero means terminate at once."""
        if duration <= 0:
            return self._terminate(out, "done")
        self.state = state
        self._start(out, name, now + duration)
        return out

    def on_timer(self, name: str, now: float) -> list[Action]:
        if self.state is State.TERMINATED or self._timers.pop(name, None) is None:
            return []
        return self._fired(name, now)

    def _fired(self, name: str, now: float) -> list[Action]:
        raise NotImplementedError


class InviteClientTransaction(_Machine):
    """RFC 3261 Figure 5 with RFC 6026 §8.4: Calling → Proceeding → Completed | Accepted → Terminated."""

    __slots__ = ("_ack", "_data", "_interval")

    def __init__(self, request: Request, dest: Destination, config: TimerConfig = DEFAULT_TIMERS) -> None:
        super().__init__(request, dest, config, State.CALLING)
        self._data = _serialize(request)
        self._interval = config.t1
        self._ack: bytes | None = None

    def start(self, now: float) -> list[Action]:
        out: list[Action] = [Send(self._data, self.dest)]
        if not self.reliable:
            self._start(out, TIMER_A, now + self._interval)
        self._start(out, TIMER_B, now + self.config.timeout)
        return out

    def cancel_sent(self, now: float) -> list[Action]:
        """The TU sent a CANCEL for this INVITE: give up 64·T1 later if no final arrives (§9.1)."""
        out: list[Action] = []
        if self.state in (State.CALLING, State.PROCEEDING) and TIMER_CANCEL not in self._timers:
            self._start(out, TIMER_CANCEL, now + self.config.timeout)
        return out

    def on_response(self, response: Response, now: float) -> list[Action]:
        out: list[Action] = []
        code = response.code
        if self.state in (State.CALLING, State.PROCEEDING):
            if code < 200:
                self._stop(out, TIMER_A, TIMER_B)
                self.state = State.PROCEEDING
                out.append(Deliver(response))
                return out
            self._stop(out, TIMER_A, TIMER_B, TIMER_CANCEL)
            if code < 300:  # RFC 6026 §8.4: Accepted; the TU ACKs every 2xx itself
                out.append(Deliver(response))
                return self._linger(out, State.ACCEPTED, TIMER_M, self.config.timeout, now)
            self._ack = _serialize(_ack_for(self.request, response))
            out.append(Send(self._ack, self.dest))
            out.append(Deliver(response))
            return self._linger(out, State.COMPLETED, TIMER_D, self.config.timer_d(self.reliable), now)
        if self.state is State.COMPLETED and code >= 300 and self._ack is not None:
            out.append(Send(self._ack, self.dest))  # the ACK was lost: send it again, tell nobody
        elif self.state is State.ACCEPTED and 200 <= code < 300:
            out.append(Deliver(response))  # RFC 6026 §8.4: 2xx retransmissions and forks go to the TU
        return out

    def _fired(self, name: str, now: float) -> list[Action]:
        out: list[Action] = []
        if name == TIMER_A and self.state is State.CALLING:
            self._interval *= 2  # no T2 cap for INVITE requests (§17.1.1.2)
            out.append(Send(self._data, self.dest))
            self._start(out, TIMER_A, now + self._interval)
            return out
        if name in (TIMER_B, TIMER_CANCEL) and self.state in (State.CALLING, State.PROCEEDING):
            out.append(Deliver(_response_to(self.request, 408), local=True))
            return self._terminate(out, "timeout")
        if name in (TIMER_D, TIMER_M):
            return self._terminate(out, "done")
        return out

    def on_transport_error(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self.state in (State.CALLING, State.PROCEEDING):
            out.append(Deliver(_response_to(self.request, 503), local=True))  # §8.1.3.1
            return self._terminate(out, "transport-error")
        if self.state is State.COMPLETED:
            return self._terminate(out, "transport-error")
        return out


class NonInviteClientTransaction(_Machine):
    """RFC 3261 Figure 6: Trying → Proceeding → Completed → Terminated."""

    __slots__ = ("_data", "_interval")

    def __init__(self, request: Request, dest: Destination, config: TimerConfig = DEFAULT_TIMERS) -> None:
        super().__init__(request, dest, config, State.TRYING)
        self._data = _serialize(request)
        self._interval = config.t1

    def start(self, now: float) -> list[Action]:
        out: list[Action] = [Send(self._data, self.dest)]
        if not self.reliable:
            self._start(out, TIMER_E, now + self._interval)
        self._start(out, TIMER_F, now + self.config.timeout)
        return out

    def on_response(self, response: Response, now: float) -> list[Action]:
        out: list[Action] = []
        if self.state not in (State.TRYING, State.PROCEEDING):
            return out  # Completed absorbs retransmitted responses
        if response.code < 200:
            self.state = State.PROCEEDING
            out.append(Deliver(response))
            return out
        self._stop(out, TIMER_E, TIMER_F)
        out.append(Deliver(response))
        return self._linger(out, State.COMPLETED, TIMER_K, self.config.timer_k(self.reliable), now)

    def _fired(self, name: str, now: float) -> list[Action]:
        out: list[Action] = []
        if name == TIMER_E and self.state in (State.TRYING, State.PROCEEDING):
            if self.state is State.TRYING:
                self._interval = min(2 * self._interval, self.config.t2)
            else:
                self._interval = self.config.t2
            out.append(Send(self._data, self.dest))
            self._start(out, TIMER_E, now + self._interval)
            return out
        if name == TIMER_F and self.state in (State.TRYING, State.PROCEEDING):
            return self._terminate(out, "timeout")  # RFC 4320: the TU learns it from the reason, no 408
        if name == TIMER_K:
            return self._terminate(out, "done")
        return out

    def on_transport_error(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self.state in (State.TRYING, State.PROCEEDING):
            out.append(Deliver(_response_to(self.request, 503), local=True))  # §8.1.3.1
            return self._terminate(out, "transport-error")
        if self.state is State.COMPLETED:
            return self._terminate(out, "transport-error")
        return out


class InviteServerTransaction(_Machine):
    """RFC 3261 Figure 7 with RFC 6026 §8.7: Proceeding → Completed → Confirmed | Accepted → Terminated."""

    __slots__ = ("_final", "_interval", "_provisional")

    def __init__(self, request: Request, dest: Destination, config: TimerConfig = DEFAULT_TIMERS) -> None:
        super().__init__(request, dest, config, State.PROCEEDING)
        self._provisional = _serialize(_response_to(request, 100))
        self._final: bytes | None = None
        self._interval = config.t1

    def start(self, now: float) -> list[Action]:
        """100 Trying at once (telephony.md §3.3), then the INVITE to the TU."""
        return [Send(self._provisional, self.dest), Deliver(self.request)]

    def on_request(self, request: Request, now: float) -> list[Action]:
        out: list[Action] = []
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self._stop(out, TIMER_G, TIMER_H)
                return self._linger(out, State.CONFIRMED, TIMER_I, self.config.timer_i(self.reliable), now)
            if self.state is State.ACCEPTED:
                out.append(Deliver(request))  # RFC 6026 §8.7: an ACK matching Accepted goes to the TU
            return out
        if self.state is State.PROCEEDING:
            out.append(Send(self._provisional, self.dest))  # the latest provisional again
        elif self.state is State.COMPLETED and self._final is not None:
            out.append(Send(self._final, self.dest))
        return out  # Accepted and Confirmed absorb retransmitted INVITEs: never a second call

    def respond(self, response: Response, now: float) -> list[Action]:
        out: list[Action] = []
        code = response.code
        if self.state is State.ACCEPTED and 200 <= code < 300:
            out.append(Send(_serialize(response), self.dest))  # the UAS core's 2xx retransmission
            return out
        if self.state is not State.PROCEEDING:
            return out
        data = _serialize(response)
        out.append(Send(data, self.dest))
        if code < 200:
            self._provisional = data
            return out
        if code < 300:
            return self._linger(out, State.ACCEPTED, TIMER_L, self.config.timeout, now)
        self._final = data
        self.state = State.COMPLETED
        if not self.reliable:
            self._start(out, TIMER_G, now + self._interval)
        self._start(out, TIMER_H, now + self.config.timeout)
        return out

    def _fired(self, name: str, now: float) -> list[Action]:
        out: list[Action] = []
        if name == TIMER_G and self.state is State.COMPLETED and self._final is not None:
            self._interval = min(2 * self._interval, self.config.t2)
            out.append(Send(self._final, self.dest))
            self._start(out, TIMER_G, now + self._interval)
            return out
        if name == TIMER_H and self.state is State.COMPLETED:
            return self._terminate(out, "timeout")  # no ACK: the TU is told by the reason
        if name in (TIMER_I, TIMER_L):
            return self._terminate(out, "done")
        return out

    def on_transport_error(self, now: float) -> list[Action]:
        if self.state is State.ACCEPTED:
            return []  # RFC 6026 Figure 7: stays Accepted; the UAS core gives up on its 2xx itself
        return self._terminate([], "transport-error")


class NonInviteServerTransaction(_Machine):
    """RFC 3261 Figure 8 under RFC 4320: Trying → Completed → Terminated (no Proceeding: no provisionals)."""

    __slots__ = ("_final",)

    def __init__(self, request: Request, dest: Destination, config: TimerConfig = DEFAULT_TIMERS) -> None:
        super().__init__(request, dest, config, State.TRYING)
        self._final: bytes | None = None

    def start(self, now: float) -> list[Action]:
        return [Deliver(self.request)]

    def on_request(self, request: Request, now: float) -> list[Action]:
        if self.state is State.COMPLETED and self._final is not None:
            return [Send(self._final, self.dest)]
        return []  # Trying absorbs retransmissions until the TU answers

    def respond(self, response: Response, now: float) -> list[Action]:
        out: list[Action] = []
        if self.state is not State.TRYING or response.code < 200:
            return out  # RFC 4320 §4.1: no provisional responses to non-INVITE requests
        if response.code != 408:  # RFC 4320 §4.2: never a 408; go quiet and let the client time out
            self._final = _serialize(response)
            out.append(Send(self._final, self.dest))
        self.request = RELEASED_REQUEST  # Timer J keeps only the response bytes (GC work, memory)
        return self._linger(out, State.COMPLETED, TIMER_J, self.config.timer_j(self.reliable), now)

    def _fired(self, name: str, now: float) -> list[Action]:
        if name == TIMER_J:
            return self._terminate([], "done")
        return []

    def on_transport_error(self, now: float) -> list[Action]:
        return self._terminate([], "transport-error")


ClientTransaction: TypeAlias = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction: TypeAlias = InviteServerTransaction | NonInviteServerTransaction
Transaction: TypeAlias = ClientTransaction | ServerTransaction
Output: TypeAlias = tuple[TransactionKey | None, Action]


class TransactionTable:
    """All live transactions of one node, matched by the keys of RFC 3261 §17.1.3 and §17.2.3 (pure).

    Holds at most ``max_transactions``; a new server transaction beyond that is refused (``Refuse``, the
    adapter answers 503), a new client transaction gets a synthetic 503 delivered to the TU instead.
    """

    def __init__(
        self, config: TimerConfig = DEFAULT_TIMERS, *, max_transactions: int = DEFAULT_MAX_TRANSACTIONS
    ) -> None:
        self.config = config
        self.max_transactions = max_transactions
        self._tx: dict[TransactionKey, Transaction] = {}
        # UDP client transactions by next hop (address, port): an ICMP error names only the destination
        self._by_hop: dict[tuple[str, int], set[TransactionKey]] = {}

    def __len__(self) -> int:
        return len(self._tx)

    def __contains__(self, key: object) -> bool:
        return key in self._tx

    def get(self, key: TransactionKey) -> Transaction | None:
        return self._tx.get(key)

    def state(self, key: TransactionKey) -> State | None:
        tx = self._tx.get(key)
        return tx.state if tx is not None else None

    def keys(self) -> list[TransactionKey]:
        return list(self._tx)

    # --- client side ---
    def send_request(self, request: Request, dest: Destination, now: float) -> list[Output]:
        """Start a client transaction for ``request`` (our Via on top, with a fresh ``z9hG4bK`` branch)."""
        if request.method == "ACK":
            raise TransactionError("An ACK is sent outside transactions (RFC 3261 §17.1.1.3, §13.2.2.4)")
        key = client_key(request)
        if key is None or not key.branch.startswith(MAGIC_COOKIE):
            raise TransactionError("Our requests carry a z9hG4bK branch in the top Via (RFC 3261 §8.1.1.7)")
        if key in self._tx:
            raise TransactionError("A client transaction with this branch and method exists")
        if len(self._tx) >= self.max_transactions:
            return [(key, Deliver(_response_to(request, 503)))]
        out: list[Output] = []
        if request.method == "CANCEL":
            invite_key = TransactionKey("client", key.branch, "", "INVITE")
            invite = self._tx.get(invite_key)
            if isinstance(invite, InviteClientTransaction):
                out += self._route(invite_key, invite, invite.cancel_sent(now))
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(request, dest, self.config)
        else:
            tx = NonInviteClientTransaction(request, dest, self.config)
        self._tx[key] = tx
        if dest.transport.lower() == "udp":
            self._by_hop.setdefault(_hop(dest.host, dest.port), set()).add(key)
        out += self._route(key, tx, tx.start(now))
        return out

    def on_response(self, response: Response, now: float) -> list[Output]:
        """Pass a response to its client transaction; a stray response is dropped (RFC 6026 §7.2)."""
        key = client_key(response)
        tx = self._tx.get(key) if key is not None else None
        if key is None or not isinstance(tx, InviteClientTransaction | NonInviteClientTransaction):
            return []
        return self._route(key, tx, tx.on_response(response, now))

    # --- server side ---
    def on_request(self, request: Request, source: Destination, now: float) -> list[Output]:
        """Match ``request`` to its server transaction or create one; responses go back to ``source``.

        ``source`` is where responses go: the flow the request came on (RFC 3261 §18.2.2, RFC 3581).
        An ACK that matches nothing (the ACK of a 2xx) is delivered with key None.
        """
        key = server_key(request)
        if key is None:
            return []
        tx = self._tx.get(key)
        if isinstance(tx, InviteServerTransaction | NonInviteServerTransaction):
            return self._route(key, tx, tx.on_request(request, now))
        if request.method == "ACK":
            return [(None, Deliver(request))]
        if len(self._tx) >= self.max_transactions:
            return [(key, Refuse(request, source))]
        new: ServerTransaction
        if request.method == "INVITE":
            new = InviteServerTransaction(request, source, self.config)
        else:
            new = NonInviteServerTransaction(request, source, self.config)
        self._tx[key] = new
        return self._route(key, new, new.start(now))

    def respond(self, key: TransactionKey, response: Response, now: float) -> list[Output]:
        """The TU answers the request of server transaction ``key``; nothing if it has ended."""
        tx = self._tx.get(key)
        if not isinstance(tx, InviteServerTransaction | NonInviteServerTransaction):
            return []
        return self._route(key, tx, tx.respond(response, now))

    def cancel_target(self, cancel: Request) -> TransactionKey | None:
        """The INVITE server transaction a received CANCEL refers to (RFC 3261 §9.2), if it still exists."""
        key = server_key(cancel)
        if key is None:
            return None
        invite_key = TransactionKey("server", key.branch, key.sent_by, "INVITE")
        return invite_key if isinstance(self._tx.get(invite_key), InviteServerTransaction) else None

    # --- both ---
    def on_timer(self, key: TransactionKey, name: str, now: float) -> list[Output]:
        tx = self._tx.get(key)
        if tx is None:
            return []
        return self._route(key, tx, tx.on_timer(name, now))

    def on_transport_error(self, key: TransactionKey, now: float) -> list[Output]:
        """A send for ``key`` failed (ICMP unreachable, connection reset)."""
        tx = self._tx.get(key)
        if tx is None:
            return []
        return self._route(key, tx, tx.on_transport_error(now))

    def on_unreachable(self, host: str, port: int, now: float) -> list[Output]:
        """A datagram we sent to ``host``:``port`` over UDP drew an ICMP error (RFC 3261 §18.4).

        Every client transaction whose next hop is exactly that address fails as on a transport error: one
        still waiting for its final gets a synthetic 503 (§8.1.3.1), so a fork goes on with its other
        branches at once instead of after Timer B. ICMP is not authenticated, so nothing else is touched:
        no server transaction, no other port of that host, no registration.
        """
        keys = self._by_hop.get(_hop(host, port))
        if not keys:
            return []
        out: list[Output] = []
        for key in sorted(keys, key=lambda k: (k.branch, k.method)):
            tx = self._tx.get(key)
            if tx is not None:
                out += self._route(key, tx, tx.on_transport_error(now))
        return out

    def _route(self, key: TransactionKey, tx: Transaction, actions: list[Action]) -> list[Output]:
        if tx.terminated:
            self._tx.pop(key, None)
            if key.side == "client" and not tx.reliable:
                hop = _hop(tx.dest.host, tx.dest.port)
                keys = self._by_hop.get(hop)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._by_hop[hop]
        return [(key, action) for action in actions]


def _hop(host: str, port: int) -> tuple[str, int]:
    """An address as the kernel reports it: IPv6 compressed, an IPv4-mapped one as plain IPv4."""
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return bare.lower(), port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port
