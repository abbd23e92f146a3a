"""Hold with music, blind and attended transfer (telephony.md §4, RFC 3515, 3891, 3892, 4488, 3420).

The B2BUA (``vpbx.pbx.b2bua``) owns the legs; this module adds what REFER, Replaces and hold do to a
connected call, through a few hooks: ``music`` after every offer/answer, ``on_refer`` for an in-dialog REFER,
``on_bye`` before a BYE ends the call, ``on_target_response`` for the responses of a transfer's target legs,
``on_replaces`` for an INVITE with Replaces and ``call_ended`` when a call ends.

Media stays anchored. A call has two media sides, ``a`` and ``b``; each side's phone sends RTP to that side's
port. The transferor's side is handed to the new party: a blind transfer rings the target with our offer from
that port (the transferee hears ringback meanwhile) and bridges on answer, so the transferee is never
re-INVITEd. An attended transfer (REFER with ``?Replaces=`` naming our own consultation dialog) moves the
consultation's far leg into the transferred call on the transferor's side; that leg's phone is re-INVITEd
once, towards the new port, because its media session ends with the consultation call. An INVITE with
Replaces (RFC 3891 §3) takes over a connected leg the same way, answered from that leg's port.

The call keeps its session id. Events: ``disconnected`` (``disconnect_reason`` "0", ``transfer_to``) for the
transferor, ``calling`` for each leg of the target, ``connected`` with the new party; the merged
consultation call ends with ``disconnected`` "0" and ``end``. After a transfer ``call.caller`` is the party
that stayed and ``call.callee`` the one that came (integration-api.md §5.2 names the callee).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from vpbx.errors import MediaError, SipParseError
from vpbx.logs import get_logger
from vpbx.media.relay import LegRef
from vpbx.pbx.b2bua import (
    CANCELLED,
    ELSEWHERE,
    SDP,
    SUPPORTED_OPTIONS,
    BLeg,
    BState,
    Leg,
    _Ctx,
    _incoming_leg,
    _is_ip,
    _line_of,
    _remote,
    _sdp_of,
    _to_tag,
)
from vpbx.pbx.calls import REASON_TRANSFER, Party, Phase, outside_party
from vpbx.pbx.node import ALLOW, SUPPORTED
from vpbx.pbx.registrar import aor_for
from vpbx.sip.dialog import Dialog, DialogState, reason_header
from vpbx.sip.message import Request, Response, serialize
from vpbx.sip.refer import SIPFRAG, ReferTo, build_sipfrag, parse_refer_to, parse_replaces, refer_sub_wanted
from vpbx.sip.sdp import SessionDescription, build_offer

if TYPE_CHECKING:
    from vpbx.media.prompts import Prompt
    from vpbx.pbx.b2bua import B2bua, TimerHandle
    from vpbx.pbx.directory import DomainInfo
    from vpbx.pbx.node import SipNode
    from vpbx.sip.transaction import TransactionKey

log = get_logger("vpbx.pbx.transfer")

Side = Literal["a", "b"]
SIDES: tuple[Side, Side] = ("a", "b")
NOTIFY_EXPIRES_S = 60  # the implicit subscription's lifetime we announce (RFC 3515 §2.4.4)
LOCK_WAIT_S = 2.0  # an attended transfer waits this long for the consultation call's lock
REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
}


def _other(side: Side) -> Side:
    return "b" if side == "a" else "a"


@dataclass(eq=False, slots=True, kw_only=True)
class Transfer:
    """A REFER being carried out on one call."""

    transferor: Leg
    transferee: Leg
    side: Side  # the media side the transferor talked on: the target takes it
    event_id: int  # the REFER's CSeq: ``Event: refer;id=`` of our NOTIFYs
    subscribed: bool  # RFC 4488: False when the REFER said ``Refer-Sub: false``
    target: str = ""  # the PIN or digits transferred to (the events' ``transfer_to``)
    before: tuple[Party, Party] | None = None  # caller, callee before ringing started (restored on failure)
    target_party: Party | None = None
    legs: list[BLeg] = field(default_factory=list)  # the target's legs being rung
    timer: TimerHandle | None = None  # no answer from the target
    ringing_notified: bool = False
    done: bool = False


class _Quiet:
    """The client-transaction user of our NOTIFYs: their answers change nothing (RFC 6665 §4.2.2)."""

    def on_response(self, key: TransactionKey, response: Response) -> None:
        return None

    def on_terminated(self, key: TransactionKey, reason: str) -> None:
        return None


@dataclass(eq=False, slots=True)
class _Reinvite:
    """Our re-INVITE of a leg moved into another call: ACK its 2xx, apply the answer to the new session."""

    transfers: Transfers
    ctx: _Ctx
    leg: Leg
    request: Request
    acked: bool = False

    def on_response(self, key: TransactionKey, response: Response) -> None:
        if response.code < 200:
            return
        if response.code < 300:
            dialog = self.leg.dialog
            if dialog is not None:  # RFC 3261 §13.2.2.4: every 2xx (retransmissions too) is ACKed
                ack = dialog.build_ack(self.request.cseq.sequence, via=self.leg.via)
                self.transfers.b.node.send_stateless(serialize(ack), self.leg.flow)
            if self.acked:
                return
            self.acked = True
        self.transfers.b.node.spawn(
            self.transfers.reinvite_answered(self.ctx, self.leg, response), "call-transfer-reinvite"
        )

    def on_terminated(self, key: TransactionKey, reason: str) -> None:
        if reason != "done" and not self.acked:  # timeout or transport error: no answer came
            self.acked = True
            self.transfers.b.node.spawn(
                self.transfers.reinvite_answered(self.ctx, self.leg, None), "call-transfer-reinvite"
            )


class Transfers:
    """Hold music, REFER and Replaces for one B2BUA."""

    def __init__(self, b2bua: B2bua) -> None:
        self.b = b2bua
        self._quiet = _Quiet()

    # --- parties and sides ----------------------------------------------------------------------------
    def _party_on(self, ctx: _Ctx, side: Side) -> Party:
        found = ctx.parties.get(side)
        if found is not None:
            return found
        return ctx.call.caller if side == "a" else ctx.call.callee

    def _leg_on(self, ctx: _Ctx, side: Side) -> Leg | None:
        if side in ctx.sides:
            return ctx.sides[side]
        return ctx.a if side == "a" else ctx.winner

    def _side_of(self, ctx: _Ctx, leg: Leg) -> Side | None:
        for side in SIDES:
            if self._leg_on(ctx, side) is leg:
                return side
        return None

    def _take_side(self, ctx: _Ctx, side: Side, leg: Leg, party: Party) -> None:
        """``leg`` (``party``) talks on ``side`` from now; the events name it as the callee."""
        stays = self._party_on(ctx, _other(side))
        ctx.parties[_other(side)] = stays
        ctx.parties[side] = party
        ctx.sides[side] = leg
        leg.side = side
        ctx.call.caller, ctx.call.callee = stays, party

    # --- hold: music to the other party -------------------------------------------------------------
    async def music(self, ctx: _Ctx) -> None:
        """Music on hold to each side whose other party holds (telephony.md §4), stopped when it resumes."""
        media = self.b.media
        if media is None or ctx.ended or ctx.call.phase is not Phase.CONNECTED:
            return
        ringing_to = self._ringback_side(ctx)
        for side in SIDES:
            other = self._leg_on(ctx, _other(side))
            want = other is not None and other.held and side != ringing_to
            if want and side not in ctx.moh:
                prompt = await self._prompt(ctx, "moh")
                if prompt is not None and await self._play(ctx, side, prompt):
                    ctx.moh.add(side)
            elif not want and side in ctx.moh:
                ctx.moh.discard(side)
                if side != ringing_to:
                    await self._stop(ctx, side)

    def _ringback_side(self, ctx: _Ctx) -> Side | None:
        xfer = ctx.transfer
        if xfer is None or xfer.done or not xfer.legs:
            return None
        return _other(xfer.side)

    async def _prompt(self, ctx: _Ctx, kind: Literal["ringback", "moh"]) -> Prompt | None:
        prompts = self.b.prompts
        if prompts is None:
            return None
        moh_id = ctx.call.domain.moh_prompt_id
        try:
            if kind == "moh" and moh_id:
                try:
                    return prompts.get(moh_id)
                except (MediaError, ValueError):
                    log.warning("call.moh_prompt_missing", session_id=ctx.session_id, prompt_id=moh_id)
            return await prompts.tone(kind)
        except (MediaError, OSError) as e:
            log.warning("call.tone_unavailable", session_id=ctx.session_id, tone=kind, error=str(e))
            return None

    async def _play(self, ctx: _Ctx, side: Side, prompt: Prompt) -> bool:
        media = self.b.media
        if media is None:
            return False
        try:
            await media.play(LegRef(ctx.session_id, side), prompt, loop=True)
        except (ValueError, MediaError) as e:  # no G.711 on that leg, or the relay is gone
            log.info("call.play_refused", session_id=ctx.session_id, side=side, error=str(e))
            return False
        return True

    async def _stop(self, ctx: _Ctx, side: Side) -> None:
        media = self.b.media
        if media is None:
            return
        try:
            await media.stop_play(LegRef(ctx.session_id, side))
        except MediaError:
            pass  # the session is gone: nothing plays any more

    # --- REFER ----------------------------------------------------------------------------------------
    async def on_refer(
        self, node: SipNode, ctx: _Ctx, leg: Leg, key: TransactionKey, request: Request
    ) -> None:
        """An in-dialog REFER (RFC 3515): checked, 202, then carried out; failures go in NOTIFY."""
        values = request.headers.getlist("Refer-To")
        if len(values) != 1:  # RFC 3515 §2.4.1: exactly one
            node.respond(key, request, 400, "Missing or Multiple Refer-To")
            return
        try:
            refer_to = parse_refer_to(values[0])
        except SipParseError:
            node.respond(key, request, 400, "Bad Refer-To")
            return
        side = self._side_of(ctx, leg)
        if ctx.call.phase is not Phase.CONNECTED or side is None:
            node.respond(key, request, 403, "Only a Connected Call Can Be Transferred")
            return
        transferee = self._leg_on(ctx, _other(side))
        if transferee is None or transferee.dialog is None:
            node.respond(key, request, 403, "Only a Connected Call Can Be Transferred")
            return
        if ctx.transfer is not None:
            node.respond(key, request, 491)  # one transfer at a time
            return
        subscribed = refer_sub_wanted(request.headers.get("Refer-Sub"))
        headers = [("Contact", str(leg.contact))]
        if not subscribed:
            headers.append(("Refer-Sub", "false"))  # RFC 4488 §4: we honour it
        node.respond(key, request, 202, headers=tuple(headers))
        xfer = Transfer(
            transferor=leg,
            transferee=transferee,
            side=side,
            event_id=request.cseq.sequence,
            subscribed=subscribed,
        )
        ctx.transfer = xfer
        self._notify(xfer, 100)
        log.info(
            "call.refer",
            session_id=ctx.session_id,
            side=side,
            attended=refer_to.replaces is not None,
            target=(refer_to.uri.user or "")[:32],
        )
        if refer_to.replaces is not None:
            await self._attended(ctx, xfer, refer_to)
        else:
            await self._blind(ctx, xfer, refer_to)

    def _notify(self, xfer: Transfer, code: int, *, final: bool = False) -> None:
        """The refer subscription's NOTIFY with the sipfrag ``SIP/2.0 <code>`` (RFC 3515 §2.4.5)."""
        leg = xfer.transferor
        dialog = leg.dialog
        if not xfer.subscribed or dialog is None or dialog.state is not DialogState.CONFIRMED:
            return
        state = "terminated;reason=noresource" if final else f"active;expires={NOTIFY_EXPIRES_S}"
        notify = dialog.build_request(
            "NOTIFY",
            via=leg.via,
            headers=(("Event", f"refer;id={xfer.event_id}"), ("Subscription-State", state)),
            body=build_sipfrag(code, REASON_PHRASES.get(code, "Unknown")),
            content_type=SIPFRAG,
        )
        self.b.node.send_request(notify, leg.flow, user=self._quiet)

    async def _refused(self, ctx: _Ctx, xfer: Transfer, code: int) -> None:
        """The REFER failed before anyone was rung: the call goes on as it was."""
        log.info("call.transfer_refused", session_id=ctx.session_id, code=code)
        xfer.done = True
        self._notify(xfer, code, final=True)
        if ctx.transfer is xfer:
            ctx.transfer = None

    async def _blind(self, ctx: _Ctx, xfer: Transfer, refer_to: ReferTo) -> None:
        b = self.b
        node = b.node
        call = ctx.call
        domain = call.domain
        host = refer_to.uri.host.strip("[]").lower()
        dialled = refer_to.uri.user or ""
        if (host != domain.name.lower() and not _is_ip(host)) or not dialled:
            await self._refused(ctx, xfer, 403)  # only within the transferor's own domain
            return
        transferor = self._party_on(ctx, xfer.side)
        stays = self._party_on(ctx, _other(xfer.side))
        parties: list[Party] = []
        user = await b.directory.user_by_pin(domain, dialled) if b.directory is not None else None
        decision = None
        if user is not None and user.dnd:  # vpbx.pbx.dnd: the target is busy, nobody rings
            log.info("call.transfer_target_dnd", session_id=ctx.session_id, target=dialled)
            await self._refused(ctx, xfer, 486)
            return
        if user is not None:
            parties = [user]
        elif b.incoming is not None and dialled.isdigit():
            decision = await b.incoming.by_extension(domain.id, _line_of(ctx), dialled)
            if decision is not None and decision.action == "group":
                _plan, by_pin = b._plan_for(decision, domain.name)
                parties = [p for p in by_pin.values() if not await b.on_dnd(domain, p.pin)]
                if not parties:  # every member on DND: nobody can answer
                    await self._refused(ctx, xfer, 480)
                    return
        outbound = None
        if not parties and b.outbound is not None and transferor.user_id is not None:
            outbound = await b.outbound.decide(domain.id, transferor.user_id, dialled)
            if outbound is not None and not outbound.allowed:
                await self._refused(ctx, xfer, 403)  # the transferor may not call it
                return
        if ctx.ended or ctx.transfer is not xfer:
            return
        now = b.clock.monotonic()
        bindings = []
        for party in parties:
            found = await node.location.lookup(domain.id, aor_for(party.pin, domain.name))
            bindings += [(party, x) for x in found if x.expires_at > now]
        trunks = b._free_trunks(domain.id) if outbound is not None else []
        if not bindings and not trunks:
            code = 404 if not parties and outbound is None else 480
            await self._refused(ctx, xfer, code)
            return
        if ctx.ended or ctx.transfer is not xfer:
            return
        # the transferor leaves the conversation: its `disconnected`, then the target rings
        xfer.target = dialled
        xfer.before = (call.caller, call.callee)
        await b.events.publish(
            call, "disconnected", disconnect_reason=REASON_TRANSFER, extra={"transfer_to": dialled}
        )
        target_party = parties[0] if len(parties) == 1 else None
        if target_party is None and decision is not None and outbound is None:
            target_party = Party(
                user_id=None, login="", pin=dialled, display_name="", domain=domain.name
            )  # a group: the events name its PIN until a member answers
        if target_party is None and outbound is not None:
            target_party = outside_party(outbound.number, domain.name)
        assert target_party is not None
        xfer.target_party = target_party
        call.caller, call.callee = stays, target_party
        referred_by = (("Referred-By", f"<{transferor.uri}>"),)  # RFC 3892
        display = stays.display_name or stays.pin or stays.external
        for party, binding in bindings:
            leg = await b._ring(node, ctx, binding, display, party, side=xfer.side, headers=referred_by)
            if leg is not None:
                xfer.legs.append(leg)
        if outbound is not None and trunks:
            leg = await b._ring_trunk(
                node,
                ctx,
                trunks[0],
                tuple(trunks[1:]),
                outbound.number,
                outbound.caller_id,
                side=xfer.side,
                headers=referred_by,
            )
            xfer.legs.append(leg)
        if not xfer.legs:
            await self._failed(ctx, xfer, 480)
            return
        call.callee = target_party
        other = _other(xfer.side)
        ctx.moh.discard(other)
        prompt = await self._prompt(ctx, "ringback")
        if prompt is not None:
            await self._play(ctx, other, prompt)  # the transferee hears ringback (replacing any music)
        xfer.timer = b.timers.call_later(
            b.no_answer_s, lambda: b._spawn(self._no_answer(ctx, xfer), "call-transfer-no-answer")
        )

    async def _no_answer(self, ctx: _Ctx, xfer: Transfer) -> None:
        async with ctx.lock:
            if ctx.transfer is xfer and not xfer.done and not ctx.ended:
                await self._failed(ctx, xfer, 480)

    async def on_target_response(self, ctx: _Ctx, leg: BLeg, response: Response) -> None:
        """A response to the INVITE of one of the target's legs (the call's lock is held)."""
        xfer = ctx.transfer
        assert xfer is not None
        b = self.b
        code = response.code
        if code < 200:
            if code == 100 or leg.state not in (BState.CALLING, BState.PROCEEDING):
                return
            leg.state = BState.PROCEEDING
            if leg.cancel_wanted:
                b._send_cancel(leg)
            elif code == 180 and not xfer.ringing_notified:
                xfer.ringing_notified = True
                self._notify(xfer, 180)
            return
        if code >= 300:
            if leg.state in (BState.ANSWERED, BState.FAILED):
                return
            leg.state = BState.FAILED
            leg.final = code
            if not xfer.done and all(x.state is BState.FAILED for x in xfer.legs):
                codes = [x.final for x in xfer.legs if x.final is not None]
                busy = any(c in (486, 600, 603) for c in codes)
                await self._failed(ctx, xfer, 486 if busy else (codes[0] if len(set(codes)) == 1 else 480))
            return
        tag = _to_tag(response)
        if tag is None:
            return
        if leg.dialog is not None:
            if tag == leg.dialog.remote_tag and leg.ack is not None:
                b.node.send_stateless(leg.ack, leg.flow)  # a retransmitted 2xx
            else:
                b._ack_and_bye(leg, response, reason=ELSEWHERE)
            return
        leg.dialog = Dialog.uac(leg.invite, response, local_contact=leg.contact)
        leg.state = BState.ANSWERED
        leg.ack = serialize(leg.dialog.build_ack(leg.invite.cseq.sequence, via=leg.via))
        b.node.send_stateless(leg.ack, leg.flow)
        if xfer.done or ctx.ended or leg.cancel_wanted:
            b._bye(leg, leg.cancel_reason or (ELSEWHERE if xfer.done else CANCELLED))
            leg.state = BState.FAILED
            return
        sdp = _sdp_of(response)
        audio = sdp.audio if isinstance(sdp, SessionDescription) else None
        if (
            not isinstance(sdp, SessionDescription)
            or audio is None
            or not await b._update_media(ctx, xfer.side, _remote(sdp, audio), audio)
        ):
            b._bye(leg, reason_header(488, "no usable SDP answer"))
            leg.state = BState.FAILED
            leg.final = 488
            if all(x.state is BState.FAILED for x in xfer.legs):
                await self._failed(ctx, xfer, 488)
            return
        await self._completed(ctx, xfer, leg)

    async def _completed(self, ctx: _Ctx, xfer: Transfer, leg: BLeg) -> None:
        """The target answered: it talks on the transferor's side; NOTIFY 200, BYE the transferor."""
        b = self.b
        xfer.done = True
        if xfer.timer is not None:
            xfer.timer.cancel()
        for other in xfer.legs:
            if other is not leg:
                other.cancel_reason = ELSEWHERE
        b._cancel_legs([x for x in xfer.legs if x is not leg])
        b._index(ctx, leg)
        party = leg.party or xfer.target_party
        assert party is not None
        self._take_side(ctx, xfer.side, leg, party)
        ctx.transfer = None
        await self._stop(ctx, _other(xfer.side))  # the ringback
        self._notify(xfer, 200, final=True)
        b._bye(xfer.transferor, None)
        log.info("call.transferred", session_id=ctx.session_id, to=xfer.target[:32])
        await b.events.publish(ctx.call, "connected", request_uri=leg.contact_uri)
        await b._held_changed(ctx)

    async def _failed(self, ctx: _Ctx, xfer: Transfer, code: int) -> None:
        """Nobody took the transfer: NOTIFY the failure; the transferee goes back to the transferor if it is
        still there, else the call ends."""
        b = self.b
        log.info("call.transfer_failed", session_id=ctx.session_id, code=code)
        xfer.done = True
        if xfer.timer is not None:
            xfer.timer.cancel()
        b._cancel_legs(xfer.legs)
        ctx.transfer = None
        self._notify(xfer, code, final=True)
        other = _other(xfer.side)
        await self._stop(ctx, other)  # the ringback
        ctx.moh.discard(other)
        dialog = xfer.transferor.dialog
        if xfer.before is not None:
            ctx.call.caller, ctx.call.callee = xfer.before
        if dialog is not None and dialog.state is DialogState.CONFIRMED:
            await b.events.publish(ctx.call, "connected")  # back with the transferor
            await b._held_changed(ctx)
            return
        await b._hangup(ctx, by=xfer.transferor, reason=reason_header(code), outcome="answered")

    async def on_bye(self, ctx: _Ctx, leg: Leg) -> bool:
        """A BYE (already answered): True when it is a transferor leaving while its transfer goes on."""
        xfer = ctx.transfer
        if xfer is None or leg is not xfer.transferor or xfer.done:
            return False
        log.info("call.transferor_left", session_id=ctx.session_id)
        return True

    def call_ended(self, ctx: _Ctx) -> None:
        """The call is over: a transfer in progress stops (its target legs are cancelled)."""
        xfer = ctx.transfer
        if xfer is None or xfer.done:
            return
        xfer.done = True
        if xfer.timer is not None:
            xfer.timer.cancel()
        self.b._cancel_legs(xfer.legs)
        self._notify(xfer, 487, final=True)

    # --- attended transfer: REFER with Replaces ------------------------------------------------------
    def _dialog_named(self, call_id: str, to_tag: str, from_tag: str) -> tuple[_Ctx, Leg] | None:
        """Our leg whose dialog the Replaces names (our tag is its to-tag, RFC 3891 §3); the reverse reading
        too, as some phones build it from their own view."""
        for local, remote in ((to_tag, from_tag), (from_tag, to_tag)):
            found = self.b._dialogs.get((call_id, local))
            if found is not None:
                dialog = found[1].dialog
                if dialog is not None and dialog.remote_tag == remote:
                    return found
        return None

    async def _attended(self, ctx: _Ctx, xfer: Transfer, refer_to: ReferTo) -> None:
        rep = refer_to.replaces
        assert rep is not None
        found = self._dialog_named(rep.call_id, rep.to_tag, rep.from_tag)
        if found is None or found[0] is ctx or found[0].call.domain.id != ctx.call.domain.id:
            await self._refused(ctx, xfer, 481)  # another tenant's dialog is as unknown as none
            return
        consult, their_leg = found
        try:
            async with asyncio.timeout(LOCK_WAIT_S):
                await consult.lock.acquire()
        except TimeoutError:
            await self._refused(ctx, xfer, 500)
            return
        try:
            side2 = self._side_of(consult, their_leg)
            far = self._leg_on(consult, _other(side2)) if side2 is not None else None
            if (
                consult.ended
                or consult.call.phase is not Phase.CONNECTED
                or consult.transfer is not None
                or side2 is None
                or far is None
                or far.dialog is None
                or far.dialog.state is not DialogState.CONFIRMED
            ):
                await self._refused(ctx, xfer, 481)
                return
            await self._merge(ctx, xfer, consult, side2, far)
        finally:
            consult.lock.release()

    async def _merge(self, ctx: _Ctx, xfer: Transfer, consult: _Ctx, side2: Side, far: Leg) -> None:
        """The consultation's far party replaces the transferor in ``ctx``; the consultation call ends."""
        b = self.b
        party = self._party_on(consult, _other(side2))
        target = party.pin or party.external
        xfer.target = target
        xfer.done = True
        ctx.transfer = None
        await b.events.publish(
            ctx.call, "disconnected", disconnect_reason=REASON_TRANSFER, extra={"transfer_to": target}
        )
        await self._hand_stream(LegRef(consult.session_id, _other(side2)), LegRef(ctx.session_id, xfer.side))
        # the far leg leaves the consultation call (which must not BYE it) for this one
        consult.sides[_other(side2)] = None
        consult.handed_over.append(far)
        b._index(ctx, far)
        self._take_side(ctx, xfer.side, far, party)
        other = _other(xfer.side)
        if other in ctx.moh:
            ctx.moh.discard(other)
            await self._stop(ctx, other)
        self._notify(xfer, 200, final=True)
        b._bye(xfer.transferor, None)
        consult.merged = True
        await b._hangup(consult, by=None, reason=None, outcome="answered")
        self._reinvite(ctx, far)
        log.info("call.transferred", session_id=ctx.session_id, to=target[:32], attended=True)
        await b.events.publish(ctx.call, "connected")
        await b._held_changed(ctx)

    async def _hand_stream(self, src: LegRef, dst: LegRef) -> None:
        """The far phone keeps receiving one RTP stream (SSRC, sequence) across the move: jitter buffers
        that ignore an SSRC change would take the new stream's packets as late."""
        media = self.b.media
        if media is None:
            return
        try:
            state = await media.stream(src)
            await media.adopt_stream(dst, state)
            log.info("call.stream_handed", session_id=dst.session, seq=state.seq, age_s=round(state.age_s, 3))
        except (MediaError, ValueError) as e:  # a worker gone: the phone re-syncs on the new SSRC, or not
            log.warning("call.stream_handover_failed", session_id=dst.session, error=str(e))

    def _reinvite(self, ctx: _Ctx, leg: Leg) -> None:
        """Point a moved leg's phone at its new side's port (its old media session is gone)."""
        b = self.b
        dialog = leg.dialog
        if ctx.ports is None or dialog is None:
            return
        local = ctx.ports.a if leg.side == "a" else ctx.ports.b
        body = b._sdp(leg, lambda o: build_offer(origin=o, address=local.host, port=local.port))
        invite = dialog.build_request(
            "INVITE",
            via=leg.via,
            headers=(("Allow", ALLOW), ("Supported", SUPPORTED)),
            body=body,
            content_type=SDP,
        )
        b.node.send_request(invite, leg.flow, user=_Reinvite(self, ctx, leg, invite))

    async def reinvite_answered(self, ctx: _Ctx, leg: Leg, response: Response | None) -> None:
        """The moved leg's answer: its media goes to the new session; a refusal ends the call."""
        b = self.b
        async with ctx.lock:
            if ctx.ended:
                return
            if response is not None and response.code < 300:
                sdp = _sdp_of(response)
                audio = sdp.audio if isinstance(sdp, SessionDescription) else None
                if (
                    isinstance(sdp, SessionDescription)
                    and audio is not None
                    and await b._update_media(ctx, leg.side, _remote(sdp, audio), audio)
                ):
                    leg.held = sdp.is_hold(audio)
                    await b._held_changed(ctx)
                    return
            code = response.code if response is not None else 408
            log.warning("call.transfer_reinvite_failed", session_id=ctx.session_id, code=code)
            await b._hangup(ctx, by=None, reason=reason_header(488, "re-INVITE refused"), outcome="answered")

    # --- INVITE with Replaces (RFC 3891 §3) ----------------------------------------------------------
    async def on_replaces(
        self, node: SipNode, key: TransactionKey, invite: Request, domain: DomainInfo, caller: Party
    ) -> None:
        """An authenticated user's INVITE that takes over one of our connected legs."""
        b = self.b
        try:
            rep = parse_replaces(invite.headers["Replaces"])
        except (SipParseError, KeyError):
            node.respond(key, invite, 400, "Bad Replaces")
            return
        if len(invite.headers.getlist("Replaces")) != 1:
            node.respond(key, invite, 400, "Bad Replaces")
            return
        unsupported = [t for t in invite.require if t.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            node.respond(key, invite, 420, headers=(("Unsupported", ", ".join(unsupported)),))
            return
        found = self._dialog_named(rep.call_id, rep.to_tag, rep.from_tag)
        if found is None or found[0].call.domain.id != domain.id:
            node.respond(key, invite, 481)  # RFC 3891 §3: no match
            return
        ctx, replaced = found
        async with ctx.lock:
            side = self._side_of(ctx, replaced)
            if ctx.ended or side is None or ctx.transfer is not None:
                node.respond(key, invite, 481)
                return
            if ctx.call.phase is not Phase.CONNECTED:
                node.respond(key, invite, 486 if rep.early_only else 481)
                return
            if rep.early_only:  # RFC 3891 §3: the dialog is confirmed already
                node.respond(key, invite, 486)
                return
            acceptable, offer = b._checked_offer(node, key, invite)
            if not acceptable:
                return
            flow = node.flow_of(key)
            if offer is None or flow is None or ctx.ports is None:
                if flow is not None:
                    node.respond(key, invite, 488, headers=(("Accept", SDP),))
                return
            new = _incoming_leg(node, side, key, invite, flow, offer)
            local = ctx.ports.a if side == "a" else ctx.ports.b
            body = await b._offer_answer(ctx, new, offer, local)
            if isinstance(body, int):
                node.respond(key, invite, body)
                return
            headers = [("Record-Route", rr) for rr in new.record_route]
            headers += [
                ("Contact", str(new.contact)),
                ("Allow", ALLOW),
                ("Supported", SUPPORTED),
                ("Content-Type", SDP),
            ]
            response = node.respond(key, invite, 200, headers=tuple(headers), to_tag=new.tag, body=body)
            new.final_sent = True
            new.dialog = Dialog.uas(invite, local_tag=new.tag, local_contact=new.contact)
            new.dialog.confirm()
            b._start_unacked(ctx, new, response, invite.cseq.sequence)
            b._index(ctx, new)
            target = caller.pin
            await b.events.publish(
                ctx.call, "disconnected", disconnect_reason=REASON_TRANSFER, extra={"transfer_to": target}
            )
            self._take_side(ctx, side, new, caller)
            if side in ctx.moh:
                ctx.moh.discard(side)
                await self._stop(ctx, side)
            b._bye(replaced, None)
            log.info("call.replaced", session_id=ctx.session_id, side=side, by=caller.pin)
            await b.events.publish(ctx.call, "connected")
            await b._held_changed(ctx)


__all__ = ["Transfer", "Transfers"]
