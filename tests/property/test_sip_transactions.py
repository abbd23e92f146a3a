"""The four transaction machines against a hostile network and peer (telephony.md §3.3).

Each state machine drives one ``TransactionTable`` the way the asyncio adapter will: a fake clock, a timer
wheel fed by ``StartTimer``/``StopTimer``, and a network that drops, duplicates and reorders messages in
both directions and sometimes fails a send. The peer on the other side is a scripted adversary (it may
answer twice, late, with two To tags, or not at all). Invariants, checked after every step:

* at most one final response reaches the TU (INVITE client: one non-2xx, or only 2xx — RFC 6026 passes
  every 2xx up for re-ACK); a server transaction sends at most one distinct final, never a provisional or
  a 408 to a non-INVITE (RFC 4320), and passes its request up only once while it lives; an ACK reaches
  the TU only outside any transaction or in Accepted;
* a transaction ends within 64·T1 + T4 of the event that bounds it (creation for client transactions,
  the first final for INVITE client ones, the TU's final for server ones);
* the machine's running timers are exactly those the adapter holds, and a terminated transaction holds none;
* after the run, once the TU and the peer have answered everything and time has moved on, the table is
  empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.unit.sip.transaction_kit import T0, TCP, UDP, ack_for_2xx, ack_for_final, request, response
from vpbx.sip.flow import Destination
from vpbx.sip.message import Request, Response
from vpbx.sip.message import parse as parse_message
from vpbx.sip.transaction import (
    Deliver,
    Output,
    Refuse,
    Send,
    StartTimer,
    State,
    StopTimer,
    Terminated,
    TimerConfig,
    TransactionKey,
    TransactionTable,
    client_key,
)

CONFIG = TimerConfig()
LIMIT = CONFIG.timeout + CONFIG.t4  # 64·T1 + T4 (telephony.md §3.3)
MAX_REQUESTS = 3  # new requests per run, from the TU or the peer
MAX_IN_FLIGHT = 12
STEPS = st.sampled_from([0.1, 0.5, 0.5, 1.0, 1.0, 2.0, 4.0, 8.0, 33.0])
PICK = st.integers(min_value=0, max_value=63)
SEND_FAILS = 12  # one send in this many fails (ICMP unreachable, connection reset)
RUN_SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)


def parse(data: bytes) -> Request | Response:
    return parse_message(data)


class _Harness(RuleBasedStateMachine):
    """The adapter, the clock and the network; subclasses add the peer and the TU."""

    def __init__(self) -> None:
        super().__init__()
        self.table = TransactionTable(CONFIG)
        self.now = T0
        self.dest: Destination = UDP
        self.timers: dict[tuple[TransactionKey, str], float] = {}
        self.to_peer: list[tuple[TransactionKey, bytes]] = []
        self.to_table: list[bytes] = []
        self.before: set[TransactionKey] = set()

    @initialize(reliable=st.booleans())
    def start(self, reliable: bool) -> None:
        self.dest = TCP if reliable else UDP
        self.first_request()

    # --- hooks for the subclasses ---
    def first_request(self) -> None:
        """The opening move of the TU or the peer."""

    def begin(self, key: TransactionKey) -> None:
        """A table call produced the first action of a new transaction ``key``."""

    def sent(self, key: TransactionKey, msg: Request | Response) -> None:
        pass

    def delivered(self, key: TransactionKey | None, msg: Request | Response) -> None:
        pass

    def peer_receives(self, msg: Request | Response, data: st.DataObject) -> None:
        pass

    def deadline(self, key: TransactionKey) -> float | None:
        return None

    def answer_everything(self) -> None:
        """Teardown: the TU and the peer give each live transaction its final answer."""

    # --- the adapter ---
    def call(self, outputs: list[Output]) -> None:
        """Perform what one table call asked for; ``snapshot`` must have run just before that call."""
        new: set[TransactionKey] = set()
        for key, action in outputs:
            if key is not None and key not in self.before and key not in new:
                new.add(key)
                self.begin(key)
            match action:
                case Send(data, dest):
                    assert key is not None and dest == self.dest
                    self.to_peer.append((key, data))
                    self.sent(key, parse(data))
                case StartTimer(name, at):
                    assert key is not None and at >= self.now
                    self.timers[(key, name)] = at
                case StopTimer(name):
                    assert key is not None
                    assert self.timers.pop((key, name), None) is not None, "stopped a timer not running"
                case Deliver(message):
                    self.delivered(key, message)
                case Terminated():
                    assert key is not None and key not in self.table
                    assert not [k for k in self.timers if k[0] == key], "terminated with timers running"
                case Refuse():
                    raise AssertionError("the table is never full here")

    def snapshot(self) -> None:
        """Remember the live keys before a table call, to tell new transactions from old ones."""
        self.before = set(self.table.keys())

    # --- time ---
    def advance_to(self, target: float) -> None:
        while True:
            due = [(at, k.branch, k.method, name, k) for (k, name), at in self.timers.items() if at <= target]
            if not due:
                break
            at, _, _, name, key = min(due)
            del self.timers[(key, name)]
            self.now = at
            self.snapshot()
            self.call(self.table.on_timer(key, name, at))
        self.now = target

    @rule(dt=STEPS)
    def advance(self, dt: float) -> None:
        self.advance_to(self.now + dt)

    # --- the network ---
    @precondition(lambda self: self.to_peer or self.to_table)
    @rule(copy=st.booleans(), towards_peer=st.booleans(), i=PICK)
    def drop_or_duplicate(self, copy: bool, towards_peer: bool, i: int) -> None:
        if (towards_peer and self.to_peer) or not self.to_table:
            if copy and len(self.to_peer) < MAX_IN_FLIGHT:
                self.to_peer.append(self.to_peer[i % len(self.to_peer)])
            elif not copy:
                self.to_peer.pop(i % len(self.to_peer))
        elif copy and len(self.to_table) < MAX_IN_FLIGHT:
            self.to_table.append(self.to_table[i % len(self.to_table)])
        elif not copy:
            self.to_table.pop(i % len(self.to_table))

    @precondition(lambda self: self.to_peer)
    @rule(i=PICK, data=st.data())
    def deliver_to_peer(self, i: int, data: st.DataObject) -> None:
        key, raw = self.to_peer.pop(i % len(self.to_peer))
        if key in self.table and data.draw(st.integers(0, SEND_FAILS - 1), label="fails") == 0:
            self.snapshot()
            self.call(self.table.on_transport_error(key, self.now))
        else:
            self.peer_receives(parse(raw), data)

    @precondition(lambda self: self.to_table)
    @rule(i=PICK)
    def deliver_to_table(self, i: int) -> None:
        msg = parse(self.to_table.pop(i % len(self.to_table)))
        self.snapshot()
        if isinstance(msg, Response):
            self.call(self.table.on_response(msg, self.now))
        else:
            self.call(self.table.on_request(msg, self.dest, self.now))

    # --- invariants ---
    @invariant()
    def timers_agree(self) -> None:
        held: dict[TransactionKey, dict[str, float]] = {}
        for (key, name), at in self.timers.items():
            held.setdefault(key, {})[name] = at
        assert set(held) <= set(self.table.keys())
        for key in self.table.keys():
            tx = self.table.get(key)
            assert tx is not None and tx.timers == held.get(key, {})

    @invariant()
    def ends_in_time(self) -> None:
        for key in self.table.keys():
            limit = self.deadline(key)
            assert limit is None or self.now <= limit + 1e-9, f"{key} outlived {limit} at {self.now}"

    def teardown(self) -> None:
        self.answer_everything()
        self.to_peer.clear()
        self.to_table.clear()
        self.advance_to(self.now + LIMIT + 1)
        assert len(self.table) == 0, f"left over: {self.table.keys()}"
        assert not self.timers


# --- client side ---
@dataclass
class Outgoing:
    request: Request
    created: float
    cancelled_at: float | None = None
    first_provisional: float | None = None
    final_at: float | None = None
    codes: tuple[int, ...] = ()
    final_tag: str | None = None


class _ClientHarness(_Harness):
    methods: tuple[str, ...] = ("OPTIONS",)
    answers: tuple[tuple[int, ...], ...] = ((200,),)  # what the peer may send when a request reaches it
    late: tuple[int, ...] = (200,)  # what it may send at any time after

    def __init__(self) -> None:
        super().__init__()
        self.out: dict[TransactionKey, Outgoing] = {}
        self.seen: list[Request] = []  # requests the peer has received, to answer later

    def first_request(self) -> None:
        self.tu_sends(0)

    @precondition(lambda self: sum(k.method != "CANCEL" for k in self.out) < MAX_REQUESTS)
    @rule(which=PICK)
    def tu_sends(self, which: int) -> None:
        n = len(self.out)
        method = self.methods[which % len(self.methods)]
        req = request(
            method, branch=f"z9hG4bK-c{n}", call_id=f"c{n}@test", transport=self.dest.transport.upper()
        )
        key = client_key(req)
        assert key is not None
        self.out[key] = Outgoing(req, self.now)
        self.snapshot()
        self.call(self.table.send_request(req, self.dest, self.now))

    def peer_receives(self, msg: Request | Response, data: st.DataObject) -> None:
        assert isinstance(msg, Request)
        key = client_key(msg)
        assert key is not None
        if msg.method == "ACK":
            info = self.out[TransactionKey("client", key.branch, "", "INVITE")]
            assert info.final_tag is not None, "ACK without a non-2xx final"
            assert msg.to_address.parameters.get("tag") == info.final_tag
            assert msg.cseq.sequence == info.request.cseq.sequence and msg.cseq.method == "ACK"
            return
        original = self.out[key].request
        if original not in self.seen:
            self.seen.append(original)
        tag = data.draw(st.sampled_from(["t1", "t2"]), label="to-tag")
        if msg.method == "CANCEL":
            invite = self.out[TransactionKey("client", key.branch, "", "INVITE")].request
            if data.draw(st.booleans(), label="cancel answered"):
                self.to_table.append(bytes(response(invite, 200, method="CANCEL", to_tag=tag)))
                self.to_table.append(bytes(response(invite, 487, to_tag=tag)))
            return
        for code in data.draw(st.sampled_from(self.answers), label="answers"):
            self.to_table.append(bytes(response(original, code, to_tag=tag)))

    @precondition(lambda self: self.seen and len(self.to_table) < MAX_IN_FLIGHT)
    @rule(i=PICK, code=st.data(), tag=st.sampled_from(["t1", "t2"]))
    def peer_answers_late(self, i: int, code: st.DataObject, tag: str) -> None:
        original = self.seen[i % len(self.seen)]
        self.to_table.append(bytes(response(original, code.draw(st.sampled_from(self.late)), to_tag=tag)))

    def delivered(self, key: TransactionKey | None, msg: Request | Response) -> None:
        assert key is not None and isinstance(msg, Response)
        info = self.out[key]
        finals = [c for c in info.codes if c >= 200]
        if msg.code < 200:
            assert not finals, "a provisional after the final"
            info.first_provisional = info.first_provisional or self.now
        else:
            self.check_final(key, finals, msg.code)
            info.final_at = info.final_at or self.now
            if msg.code >= 300:
                info.final_tag = msg.to_address.parameters.get("tag")
        info.codes = (*info.codes, msg.code)

    def check_final(self, key: TransactionKey, earlier: list[int], code: int) -> None:
        assert not earlier, f"a second final {code} after {earlier}"

    def deadline(self, key: TransactionKey) -> float | None:
        return self.out[key].created + LIMIT  # F + K

    def answer_everything(self) -> None:
        for key, info in self.out.items():
            if key in self.table and info.final_at is None:
                self.snapshot()
                self.call(self.table.on_response(response(info.request, 486, method=key.method), self.now))


class NonInviteClientMachine(_ClientHarness):
    methods = ("OPTIONS", "REGISTER", "BYE")
    answers = ((), (100,), (200,), (100, 200), (404,), (408,), (503, 503), (200, 200))
    late = (100, 180, 200, 404, 503)


class InviteClientMachine(_ClientHarness):
    methods = ("INVITE",)
    answers = ((), (100,), (180,), (100, 180), (200,), (180, 200), (486,), (180, 603), (302, 302), (200, 200))
    late = (180, 183, 200, 486, 603)

    def check_final(self, key: TransactionKey, earlier: list[int], code: int) -> None:
        if key.method == "INVITE" and 200 <= code < 300:
            assert all(200 <= c < 300 for c in earlier), f"2xx after {earlier}"  # RFC 6026: every 2xx
        else:
            assert not earlier, f"{code} after {earlier}"

    def ringing(self) -> list[Outgoing]:
        return [
            o
            for k, o in self.out.items()
            if k.method == "INVITE" and self.table.state(k) is State.PROCEEDING and o.cancelled_at is None
        ]

    @precondition(lambda self: self.ringing())
    @rule(i=PICK)
    def tu_cancels(self, i: int) -> None:
        ringing = self.ringing()
        info = ringing[i % len(ringing)]
        info.cancelled_at = self.now
        cancel = request(
            "CANCEL",
            branch=info.request.via[0].parameters["branch"],
            call_id=info.request.call_id,
            transport=self.dest.transport.upper(),
        )
        key = client_key(cancel)
        assert key is not None
        self.out[key] = Outgoing(cancel, self.now)
        self.snapshot()
        self.call(self.table.send_request(cancel, self.dest, self.now))

    def deadline(self, key: TransactionKey) -> float | None:
        info = self.out[key]
        if key.method == "CANCEL":
            return info.created + LIMIT
        if info.final_at is not None:
            return info.final_at + LIMIT  # D (32 s) or M (64·T1) after the first final
        if info.cancelled_at is not None:
            return info.cancelled_at + LIMIT  # the RFC 3261 §9.1 guard
        if info.first_provisional is None:
            return info.created + LIMIT  # Timer B
        return None  # Proceeding without a CANCEL: the TU decides how long it rings


# --- server side ---
@dataclass
class Incoming:
    key: TransactionKey
    request: Request | None = None
    final_at: float | None = None
    finals: frozenset[bytes] = frozenset()
    responses: int = 0


class _ServerHarness(_Harness):
    methods: tuple[str, ...] = ("OPTIONS",)
    tu_codes: tuple[int, ...] = (200,)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Request] = []  # what the peer has sent, to retransmit
        self.lives: dict[TransactionKey, Incoming] = {}  # by key: its current lifetime
        self.pending_cancels: list[tuple[TransactionKey, Request]] = []

    def first_request(self) -> None:
        self.peer_sends(0, legacy=False)

    @precondition(lambda self: len(self.calls) < MAX_REQUESTS)
    @rule(which=PICK, legacy=st.booleans())
    def peer_sends(self, which: int, legacy: bool) -> None:
        n = len(self.calls)
        req = request(
            self.methods[which % len(self.methods)],
            branch=None if legacy else f"z9hG4bK-s{n}",
            call_id=f"s{n}@peer",
            transport=self.dest.transport.upper(),
        )
        self.calls.append(req)
        self.to_table.append(bytes(req))

    @precondition(lambda self: self.calls and len(self.to_table) < MAX_IN_FLIGHT)
    @rule(i=PICK)
    def peer_retransmits(self, i: int) -> None:
        self.to_table.append(bytes(self.calls[i % len(self.calls)]))

    def begin(self, key: TransactionKey) -> None:
        self.lives[key] = Incoming(key)

    def delivered(self, key: TransactionKey | None, msg: Request | Response) -> None:
        assert isinstance(msg, Request)
        if msg.method == "ACK":
            assert key is None or self.table.state(key) is State.ACCEPTED, "a non-2xx ACK reached the TU"
            if key is None:  # no transaction took it: none may be waiting for this very ACK
                via = msg.headers.getlist("Via")[0]
                for other in (k for k in self.before if k.method == "INVITE"):
                    tx = self.table.get(other)
                    if tx is not None and tx.state in (State.COMPLETED, State.CONFIRMED):
                        invite = tx.request
                        same = invite.call_id == msg.call_id and invite.headers.getlist("Via")[0] == via
                        assert not same, "the ACK of a non-2xx final missed its INVITE"
            return
        assert key is not None
        assert key not in self.before, "a retransmission reached the TU as a new request"
        self.lives[key].request = msg
        if msg.method == "CANCEL":
            self.pending_cancels.append((key, msg))

    def sent(self, key: TransactionKey, msg: Request | Response) -> None:
        assert isinstance(msg, Response)
        life = self.lives[key]
        if life.responses == 0 and key.method == "INVITE":
            assert msg.code == 100, "INVITE must be answered with 100 Trying at once"
        life.responses += 1
        if key.method != "INVITE":
            assert msg.code >= 200, "a provisional to a non-INVITE request (RFC 4320)"
            assert msg.code != 408, "a 408 to a non-INVITE request (RFC 4320)"
        if msg.code >= 200:
            life.finals = life.finals | {bytes(msg)}
            assert len(life.finals) == 1, "two different finals for one request"

    def unanswered(self) -> list[Incoming]:
        return [
            life
            for key, life in self.lives.items()
            if key in self.table and key.method != "CANCEL" and life.final_at is None
        ]

    @precondition(lambda self: self.unanswered())
    @rule(i=PICK, code=st.data(), twice=st.booleans())
    def tu_responds(self, i: int, code: st.DataObject, twice: bool) -> None:
        lives = self.unanswered()
        life = lives[i % len(lives)]
        self.respond(life, code.draw(st.sampled_from(self.tu_codes)))
        if twice:  # a confused TU (or a UAS core retransmitting its 2xx)
            self.respond(life, code.draw(st.sampled_from(self.tu_codes)))

    def respond(self, life: Incoming, code: int) -> None:
        assert life.request is not None
        self.snapshot()
        self.call(self.table.respond(life.key, response(life.request, code, to_tag="uas"), self.now))
        if life.final_at is None and self.table.state(life.key) not in (State.TRYING, State.PROCEEDING):
            life.final_at = self.now

    def deadline(self, key: TransactionKey) -> float | None:
        life = self.lives[key]
        return None if life.final_at is None else life.final_at + LIMIT

    def answer_everything(self) -> None:
        for key, life in list(self.lives.items()):
            if key in self.table and self.table.state(key) in (State.TRYING, State.PROCEEDING):
                self.respond(life, 486 if key.method == "INVITE" else 200)


class NonInviteServerMachine(_ServerHarness):
    methods = ("OPTIONS", "REGISTER", "BYE")
    tu_codes = (100, 180, 200, 404, 408, 500)

    def peer_receives(self, msg: Request | Response, data: st.DataObject) -> None:
        assert isinstance(msg, Response) and msg.code >= 200


class InviteServerMachine(_ServerHarness):
    methods = ("INVITE",)
    tu_codes = (180, 183, 200, 486, 603)

    def peer_receives(self, msg: Request | Response, data: st.DataObject) -> None:
        assert isinstance(msg, Response)
        if msg.code < 200 or msg.cseq.method != "INVITE":
            return
        invite = next(c for c in self.calls if c.call_id == msg.call_id)
        if msg.code >= 300:
            ack = ack_for_final(invite, msg)  # same branch: part of the INVITE transaction
        else:
            ack = ack_for_2xx(
                invite, msg, branch=f"z9hG4bK-ack-{msg.call_id.split('@')[0]}"
            )  # a transaction of its own
        self.to_table.append(bytes(ack))

    @precondition(lambda self: self.calls and len(self.to_table) < MAX_IN_FLIGHT)
    @rule(i=PICK)
    def peer_cancels(self, i: int) -> None:
        invite = self.calls[i % len(self.calls)]
        cancel = request("CANCEL", via=invite.headers.getlist("Via")[0], call_id=invite.call_id)
        self.to_table.append(bytes(cancel))

    @precondition(lambda self: self.pending_cancels)
    @rule()
    def tu_answers_cancel(self) -> None:
        key, cancel = self.pending_cancels.pop(0)
        target = self.table.cancel_target(cancel)
        if key in self.table:
            self.respond(self.lives[key], 200 if target else 481)
        if target is not None and self.table.state(target) is State.PROCEEDING:
            self.respond(self.lives[target], 487)

    def answer_everything(self) -> None:
        while self.pending_cancels:
            self.tu_answers_cancel()
        super().answer_everything()


InviteClientMachine.TestCase.settings = RUN_SETTINGS
NonInviteClientMachine.TestCase.settings = RUN_SETTINGS
InviteServerMachine.TestCase.settings = RUN_SETTINGS
NonInviteServerMachine.TestCase.settings = RUN_SETTINGS
TestInviteClient = InviteClientMachine.TestCase
TestNonInviteClient = NonInviteClientMachine.TestCase
TestInviteServer = InviteServerMachine.TestCase
TestNonInviteServer = NonInviteServerMachine.TestCase
