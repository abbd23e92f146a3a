"""Calls the PBX places itself: click-to-call (``call_back``, integration-api.md §4.1; telephony.md §3.7).

Nobody calls us, so the call's A-leg is a stand-in that never goes on the wire. The employee is rung on the
relay's side ``a`` as an internal call to their PIN would ring them (every registered device, and their
contact numbers through the domain's trunk), for ``EMPLOYEE_RING_S``. The first to answer becomes side ``a``
and hears ringback from the worker while the customer's number is dialled through the outbound routing
(the employee's rights, the trunk's number format, failover) on side ``b``; the customer's answer bridges the
two. From then on the call is an ordinary one of the B2BUA (hold, BYE, media timeout, recording).

Events: ``new`` (type ``outbound``, ``call_kind`` ``callback``, the employee in ``from_*`` and the customer in
``request_*``), ``calling`` for each of the employee's devices or numbers rung, ``connected`` when the
customer answers, then ``disconnected`` and ``end``. A failure after the API answered (the employee does not
answer, the customer is busy, no trunk) shows only as an ``end`` without ``connected`` and in the history.

``Originator`` works on the B2BUA's calls and legs (as ``vpbx.pbx.transfer.Transfers`` does); the B2BUA
calls it from a few hooks: the employee's answer, the final answer "to A" (which hangs up the employee), and
the customer's answer (``_connect``).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpbx.logs import get_logger
from vpbx.pbx.b2bua import (
    CALLS,
    CALLS_ACTIVE,
    ELSEWHERE,
    ALeg,
    BState,
    _Ctx,
    _origin,
)
from vpbx.pbx.calls import Call, Party, outside_party
from vpbx.pbx.registrar import aor_for
from vpbx.sip.dialog import LocalVia, build_initial_request, new_call_id, new_tag, reason_header
from vpbx.sip.flow import Destination
from vpbx.sip.message import URI, Address, Parameters, Response, build_response
from vpbx.sip.sdp import SessionDescription
from vpbx.sip.transaction import TransactionKey
from vpbx.store.models import DomainId

if TYPE_CHECKING:
    from vpbx.pbx.b2bua import B2bua, BLeg
    from vpbx.pbx.bus import CallKind, SessionId
    from vpbx.pbx.directory import DomainInfo
    from vpbx.pbx.registrar import Binding

log = get_logger("vpbx.pbx.originate")

EMPLOYEE_RING_S = 30.0  # integration-api.md §4.1: the employee's answer timeout
NO_ROUTE = 403  # the customer's number may not be called (rights) or is no number
NO_TRUNK = 503


@dataclass(frozen=True, slots=True, kw_only=True)
class Originate:
    """What a placed call is about: the employee rung first and the number dialled once they answer."""

    employee: Party
    number: str  # E.164 with "+"
    caller_id: str  # E.164 shown to the customer; "" → the outbound routing's (the domain's first line)
    contact_numbers: tuple[str, ...] = ()  # the employee's mobiles (E.164), rung through a trunk


class Originator:
    """Places calls for the B2BUA it belongs to."""

    def __init__(self, b2bua: B2bua) -> None:
        self.b = b2bua

    async def reachable(self, domain_id: uuid.UUID, domain: str, pin: str) -> bool:
        """Whether ``pin`` has a live registered device (its contact numbers are the caller's business)."""
        node = self.b._node
        if node is None:
            return False
        now = self.b.timers.monotonic()
        bindings = await node.location.lookup(DomainId(domain_id), aor_for(pin, domain))
        return any(b.expires_at > now for b in bindings)

    async def originate(
        self,
        domain: DomainInfo,
        employee: Party,
        number: str,
        *,
        session_id: SessionId,
        caller_id: str = "",
        kind: CallKind = "callback",
        contact_numbers: tuple[str, ...] = (),
    ) -> bool:
        """Start the call (ringing the employee) and return; False when it could not start at all."""
        b = self.b
        node = b.node
        number = "+" + number.lstrip("+")
        call = Call(
            session_id=session_id,
            domain=domain,
            caller=employee,
            callee=outside_party(number, domain.name),
            type="outbound",
            kind=kind,
            started_at=b.clock.now(),
        )
        if not b.registry.admit(call):
            log.warning("call.originate_refused", session_id=session_id, domain=domain.name, why="channels")
            CALLS.labels("rejected").inc()
            return False
        CALLS_ACTIVE.inc()
        a = self._stand_in(node.advertised)
        ctx = _Ctx(
            call=call,
            a=a,
            originate=Originate(
                employee=employee, number=number, caller_id=caller_id, contact_numbers=contact_numbers
            ),
        )
        b._calls[session_id] = ctx
        async with ctx.lock:
            try:
                log.info(
                    "call.new", session_id=session_id, domain=domain.name, caller=employee.pin, kind=kind
                )
                await b.events.publish(call, "new")
                await self._ring_employee(ctx)
            except Exception:
                await b._abort(ctx, "originate")
                raise
        return True

    def _stand_in(self, advertised: tuple[str, int]) -> ALeg:
        """The A-leg of a call nobody made: it has no dialog and nothing is ever sent on it."""
        host, port = advertised
        token = secrets.token_hex(8)
        via = LocalVia("UDP", host, port)
        contact = Address(uri=URI(scheme="sip", user=token, host=host, port=port))
        invite = build_initial_request(
            "INVITE",
            URI(scheme="sip", user="callback", host=host),
            via=via,
            from_=Address(
                uri=URI(scheme="sip", user="callback", host=host), parameters=Parameters(tag=new_tag())
            ),
            to=Address(uri=URI(scheme="sip", user="callback", host=host)),
            call_id=new_call_id(),
            cseq=1,
            contact=contact,
        )
        return ALeg(
            side="a",
            token=token,
            flow=Destination("udp", host, port),
            via=via,
            contact=contact,
            origin=_origin(host),
            key=TransactionKey("server", f"originate-{token}", "", "INVITE"),
            invite=invite,
            tag=new_tag(),
            offer=None,
        )

    async def _ring_employee(self, ctx: _Ctx) -> None:
        b = self.b
        node = b.node
        call = ctx.call
        o = ctx.originate
        assert o is not None
        if not await b._media_ports(ctx):
            return
        now = b.timers.monotonic()
        bindings = [
            x
            for x in await node.location.lookup(call.domain.id, aor_for(o.employee.pin, call.domain.name))
            if x.expires_at > now
        ]
        customer = o.number.lstrip("+")
        for binding in bindings:
            await self._ring_device(ctx, binding, customer)
        trunks = b._free_trunks(call.domain.id)
        for mobile in o.contact_numbers if trunks else ():
            await b.events.publish(
                call, "calling", request_uri=f"sip:{mobile.lstrip('+')}@{call.domain.name}"
            )
            await b._ring_trunk(node, ctx, trunks[0], tuple(trunks[1:]), mobile, o.number, side="a")
        if not ctx.b or all(leg.state is BState.FAILED for leg in ctx.b):
            b._reply_a(ctx, 480)
            await b._finish(ctx, "unanswered")
            return
        ctx.no_answer = b.timers.call_later(
            EMPLOYEE_RING_S, lambda: b._spawn(b._no_answer(ctx), "call-no-answer")
        )

    async def _ring_device(self, ctx: _Ctx, binding: Binding, customer: str) -> None:
        """One of the employee's phones: the customer's number as the caller, so the phone shows whom it is
        about to call."""
        employee = ctx.call.caller
        await self.b._ring(
            self.b.node, ctx, binding, f"+{customer}", side="a", from_user=customer, to_user=employee.pin
        )

    # --- hooks of the B2BUA ---------------------------------------------------------------------------
    async def employee_answered(self, ctx: _Ctx, leg: BLeg, sdp: SessionDescription | str | None) -> None:
        """The employee took the call: they hear ringback while the customer is dialled."""
        b = self.b
        o = ctx.originate
        assert o is not None
        if not await b._take_answer_a(ctx, leg, sdp):
            await b._after_failure(ctx)
            return
        ctx.sides["a"] = leg
        b._cancel_all(ctx, ELSEWHERE)
        if ctx.no_answer is not None:
            ctx.no_answer.cancel()
            ctx.no_answer = None
        log.info("call.employee_answered", session_id=ctx.session_id, contact=leg.contact_uri[:80])
        await b._ringback(ctx)
        call = ctx.call
        decision = None
        if b.outbound is not None:
            decision = await b.outbound.decide(call.domain.id, o.employee.user_id, o.number)
        trunks = b._free_trunks(call.domain.id)
        if ctx.ended:
            return
        if decision is None or not decision.allowed or not trunks:
            code = NO_TRUNK if decision is not None and decision.allowed else NO_ROUTE
            log.info("call.originate_failed", session_id=ctx.session_id, code=code)
            ctx.end_reason = "failed"
            b._reply_a(ctx, code)
            await b._finish(ctx, "failed")
            return
        caller_id = o.caller_id or decision.caller_id
        ctx.caller_id = caller_id
        call.line = caller_id.lstrip("+")
        await b._ring_trunk(b.node, ctx, trunks[0], tuple(trunks[1:]), decision.number, caller_id)
        ctx.no_answer = b.timers.call_later(
            b.no_answer_s, lambda: b._spawn(b._no_answer(ctx), "call-no-answer")
        )

    def final(self, ctx: _Ctx, code: int) -> Response:
        """What the B2BUA would answer the caller: nobody hears it; a failure hangs up the employee."""
        a = ctx.a
        if code >= 200:
            a.final_sent = True
            a.final_code = code
        employee = ctx.sides.get("a")
        if code >= 300 and employee is not None:
            self.b._bye(employee, reason_header(code))
        return build_response(a.invite, code, to_tag=a.tag)
