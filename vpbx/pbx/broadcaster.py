"""Autoinformer calls on the B2BUA: the ``BroadcastDialer`` of ``vpbx.pbx.broadcast`` (autoinformer.md §3.4,
§3.5, §5; telephony.md §3.7).

Nobody calls us, so the call's A-leg is a stand-in that never goes on the wire (as for ``call_back``,
``vpbx.pbx.originate``). The recipient's number is dialled through the domain's trunk on the relay's side
``a`` (the trunk's number format and failover, the campaign's line as caller ID, the request's Call-ID); on
answer the PBX plays the message to that side, as a voice menu plays its greeting, and listens for keys
(RFC 4733 from the media, SIP INFO from the dialog). ``connect`` rings the operator on side ``b`` with the
voice menus' ringing plans (a user's devices and mobiles, a group's strategy, an outside number through the
trunk) while the recipient hears ringback; the operator's answer bridges the two, like a transfer within
the same ``session_id``. From then on the call is an ordinary one of the B2BUA (hold, BYE, media timeout).

History and events: an ordinary outgoing call (``type`` ``outbound``, ``call_kind`` ``autoinformer``, the
line as the caller, the number as the callee): ``new``, ``connected`` when the recipient answers,
``disconnected`` and ``end``. ``connect`` adds what a blind transfer adds: ``disconnected`` with
``transfer_to`` (the history's ``session_log`` shows ``tr``), ``calling`` for each of the operator's phones,
``connected`` when one answers. A plain outgoing call has no ``calling`` for the number it dials
(integration-api.md §5.2), and neither has this one. The call is recorded only when the request says so.

``Broadcaster.dial`` places the call and returns when it has ended, with what happened
(``BroadcastResult``); the B2BUA calls the other methods from its hooks (answer, failure, keys, prompts
played, the plan ending unanswered, the call's end).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select

from vpbx.errors import MediaError, NoMediaPorts, NotFound
from vpbx.logs import get_logger
from vpbx.media.amd import GREETING_WAIT_S
from vpbx.media.backend import AmdParams
from vpbx.media.relay import LegRef
from vpbx.pbx.b2bua import CALLS, CALLS_ACTIVE, ELSEWHERE, _Ctx, _ringable, _to_tag
from vpbx.pbx.broadcast import ActionName, AmdResult, BroadcastRequest, BroadcastResult, KeyAction
from vpbx.pbx.bus import SessionId
from vpbx.pbx.callplan import external_plan
from vpbx.pbx.calls import REASON_TRANSFER, Call, Party, Phase, outside_party
from vpbx.pbx.numbering import to_e164
from vpbx.sip.dialog import reason_header
from vpbx.sip.message import Response, build_response
from vpbx.sip.sdp import SessionDescription
from vpbx.store.models import CallRecord, Domain

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.media.prompts import Prompt
    from vpbx.pbx.b2bua import B2bua, BLeg, Side, TimerHandle
    from vpbx.pbx.directory import DomainInfo
    from vpbx.pbx.trunkmon import TrunkInfo

log = get_logger("vpbx.pbx.broadcaster")

GAP_S = 1.0  # autoinformer.md §3.1: the message's plays are 1 s apart
MAX_CALL_S = 4 * 3600.0  # telephony.md §3.7: a call's maximum duration; dial() never waits longer
END_WAIT_S = 10.0  # after forcing a call over the maximum, its end comes within this
AMD_GRACE_S = 1.0  # the detector reports within its analysis time; this long after it, "unknown"
SEEN_MAX = 200_000  # session and Call-IDs remembered in memory (the call history remembers the rest)
_KEYS = frozenset("0123456789*#")
_AMD_RESULTS: dict[str, AmdResult] = {"human": "human", "machine": "machine"}

Stage = Literal["ringing", "amd", "greeting", "message", "gap", "wait", "closing", "operator", "bridged"]


@dataclass(eq=False, slots=True, kw_only=True)
class Broadcast:
    """One autoinformer call as the engine runs it: the request, where the call is, and the facts so far."""

    request: BroadcastRequest
    message: Prompt
    recipient: Party
    line: Party
    started_at: dt.datetime
    done: asyncio.Future[BroadcastResult]
    stage: Stage = "ringing"
    sip_code: int | None = None
    detail: str = ""
    answered_at: dt.datetime | None = None
    listen_s: float = 0.0
    played_full: bool = False
    digits: str = ""
    action: ActionName | None = None
    repeated: bool = False  # the repeat key replayed the message at least once
    regular_left: int = 0  # plays of the message still due (``repeat`` in all)
    extra_left: int = 0  # replays the repeat key may still ask for
    play_seq: int = 0  # the message play in progress (a stale play_done names an older one)
    play_t0: float | None = None  # monotonic start of the message play in progress
    closing_seq: int = 0
    timer: TimerHandle | None = None
    connect: bool = False
    operator_target: str | None = None
    unavailable_prompt: str | None = None  # «оператор недоступен» of the connect key
    before: tuple[Party, Party] | None = None  # caller, callee before the operator was rung
    no_response: bool = False  # the last recipient leg's final came from our transaction layer
    amd_result: AmdResult | None = None


class Broadcaster:
    """The ``BroadcastDialer`` of one B2BUA (``b2bua.broadcaster``)."""

    def __init__(self, b2bua: B2bua) -> None:
        self.b = b2bua
        self.sessions: async_sessionmaker[AsyncSession] | None = None  # the call history (set by the app)
        self._sessions_seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._calls_seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    # --- dial ------------------------------------------------------------------------------------------
    async def dial(self, request: BroadcastRequest) -> BroadcastResult:
        """Place the call and return when it has ended (``BroadcastDialer``). Never raises for a call that
        fails; a ``session_id`` or ``call_id`` seen before is refused with ``detail`` "duplicate"."""
        b = self.b
        now = b.clock.now()

        def refused(detail: str) -> BroadcastResult:
            log.info("broadcast.refused", session_id=request.session_id, detail=detail)
            return BroadcastResult(sip_code=None, started_at=now, ended_at=now, detail=detail)

        sid, call_id = request.session_id, request.call_id
        if not sid or not call_id or sid in self._sessions_seen or call_id in self._calls_seen:
            return refused("duplicate")
        self._remember(sid, call_id)  # before any await: a twin dial() of the same key is refused
        started = False
        try:
            found = await self._checks(request)
            if isinstance(found, str):
                return refused(found)
            domain, number, message = found
            line = outside_party(request.caller_id, domain.name)
            recipient = outside_party(number, domain.name)
            call = Call(
                session_id=SessionId(sid),
                domain=domain,
                caller=line,
                callee=recipient,
                type="outbound",
                kind="autoinformer",
                started_at=now,
                line=request.caller_id.lstrip("+"),
            )
            trunks = b._free_trunks(domain.id)
            if not trunks:
                return refused("no_trunk")
            if not b.registry.admit(call):
                CALLS.labels("rejected").inc()
                return refused("channels")
            started = True
            CALLS_ACTIVE.inc()
            bc = Broadcast(
                request=request,
                message=message,
                recipient=recipient,
                line=line,
                started_at=now,
                done=asyncio.get_running_loop().create_future(),
                regular_left=max(1, request.repeat),
                extra_left=max(0, request.max_extra_repeats),
            )
            ctx = _Ctx(call=call, a=b.originator._stand_in(b.node.advertised), broadcast=bc)
            ctx.caller_id = "+" + request.caller_id.lstrip("+")
            b._calls[call.session_id] = ctx
            await self._start(ctx, trunks, number)
            return await self._wait(ctx, bc)
        finally:
            if not started:
                self._forget(sid, call_id)

    async def _checks(self, request: BroadcastRequest) -> tuple[DomainInfo, str, Prompt] | str:
        """The domain, the number (E.164) and the message, or why the call cannot be placed."""
        b = self.b
        if (
            self.sessions is None
            or b.directory is None
            or b.media is None
            or b.prompts is None
            or b._node is None
        ):
            return "no_engine"
        try:
            async with self.sessions() as s:
                if await s.scalar(select(CallRecord.id).where(CallRecord.session_id == request.session_id)):
                    return "duplicate"
                row = await s.get(Domain, request.domain_id)
                name = row.name if row is not None and row.status == "active" else None
        except Exception:
            log.exception("broadcast.history_unavailable", session_id=request.session_id)
            return "history_unavailable"  # no dial whose uniqueness could not be checked
        domain = await b.directory.domain(name) if name is not None else None
        if domain is None:
            return "domain_unavailable"
        dialled = "+" + request.number.lstrip("+")  # E.164 digits: never read as a national number
        number: str | None
        if b.outbound is not None:
            decision = await b.outbound.decide(domain.id, None, dialled)
            number = decision.number if decision is not None else None
        else:
            number = to_e164(dialled)
        if number is None or not request.caller_id.lstrip("+").isdigit():
            return "bad_number"
        try:
            message = b.prompts.get(request.message_prompt_id)
        except (MediaError, ValueError):
            return "no_prompt"
        return domain, number, message

    async def _start(self, ctx: _Ctx, trunks: list[TrunkInfo], number: str) -> None:
        b = self.b
        call = ctx.call
        bc = ctx.broadcast
        assert bc is not None and b.media is not None
        async with ctx.lock:
            try:
                log.info("call.new", session_id=call.session_id, domain=call.domain.name, kind="autoinformer")
                await b.events.publish(call, "new")
                try:
                    ctx.ports = await b.media.allocate(call.session_id)
                except NoMediaPorts:
                    log.warning("call.no_media_ports", session_id=call.session_id)
                    bc.detail = "no_media"
                    b._reply_a(ctx, 503)
                    await b._finish(ctx, "failed")
                    return
                await b._ring_trunk(
                    b.node,
                    ctx,
                    trunks[0],
                    tuple(trunks[1:]),
                    number,
                    ctx.caller_id,
                    side="a",
                    call_id=bc.request.call_id,
                )
                ctx.no_answer = b.timers.call_later(
                    float(bc.request.ring_timeout_s),
                    lambda: b._spawn(self._ring_timeout(ctx), "broadcast-ring-timeout"),
                )
            except Exception:
                log.exception("broadcast.start_failed", session_id=call.session_id)
                bc.detail = bc.detail or "failed"
                await b._abort(ctx, "broadcast")
                if not bc.done.done():  # the abort could not finish the call: dial() still returns
                    self.ended(ctx)

    async def _wait(self, ctx: _Ctx, bc: Broadcast) -> BroadcastResult:
        try:
            async with asyncio.timeout(MAX_CALL_S):
                return await asyncio.shield(bc.done)
        except TimeoutError:
            log.warning("broadcast.too_long", session_id=ctx.session_id)
            async with ctx.lock:
                if not ctx.ended:
                    ctx.end_reason = "failed"
                    b = self.b
                    b._cancel_all(ctx, None)
                    await b._hangup(ctx, by=None, reason=reason_header(408, "too long"), outcome="answered")
            async with asyncio.timeout(END_WAIT_S):
                return await asyncio.shield(bc.done)

    # --- ids seen --------------------------------------------------------------------------------------
    def _remember(self, sid: str, call_id: str) -> None:
        for seen, key in ((self._sessions_seen, sid), (self._calls_seen, call_id)):
            seen[key] = None
            while len(seen) > SEEN_MAX:
                seen.popitem(last=False)

    def _forget(self, sid: str, call_id: str) -> None:
        """A dial that sent nothing (no trunk, no channel…): the same key may be dialled again later."""
        self._sessions_seen.pop(sid, None)
        self._calls_seen.pop(call_id, None)

    # --- hooks of the B2BUA: ringing ---------------------------------------------------------------------
    def final(self, ctx: _Ctx, code: int) -> Response:
        """What the B2BUA would answer a caller: nobody hears it; the history keeps the final code."""
        a = ctx.a
        if code >= 200 and not a.final_sent:
            a.final_sent = True
            a.final_code = code
        return build_response(a.invite, code, to_tag=a.tag)

    def note_final(self, ctx: _Ctx, leg: BLeg, response: Response) -> None:
        """A final ≥ 300 on a leg: for the recipient's, whether it came from the carrier at all (the
        transaction layer's own 408/503 carry no To tag)."""
        if leg.side == "a" and "a" not in ctx.sides and ctx.broadcast is not None:
            ctx.broadcast.no_response = _to_tag(response) is None and response.code in (408, 503)

    async def not_answered(self, ctx: _Ctx) -> None:
        """Every leg to the recipient failed (the trunks' failover is over): the call ends with the
        carrier's code."""
        b = self.b
        bc = ctx.broadcast
        assert bc is not None
        legs = [leg for leg in ctx.b if leg.side == "a" and leg.final is not None]
        code = legs[-1].final if legs else None
        if code is None or bc.no_response:
            bc.detail = "no_response" if code == 408 else "transport_error"
            code = code or 503
        else:
            bc.sip_code = code
        b._reply_a(ctx, code)
        outcome = "busy" if code in (486, 600, 603) else "unanswered" if code in (408, 480, 487) else "failed"
        await b._finish(ctx, outcome)

    async def _ring_timeout(self, ctx: _Ctx) -> None:
        """Nobody answered within the ring timeout: CANCEL, 408."""
        b = self.b
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is None or ctx.ended or bc.stage != "ringing" or "a" in ctx.sides:
                return
            bc.sip_code = 408
            bc.detail = "ring_timeout"
            b._reply_a(ctx, 408)
            b._cancel_all(ctx, None)
            await b._finish(ctx, "unanswered")

    async def answered(self, ctx: _Ctx, leg: BLeg, sdp: SessionDescription | str | None) -> None:
        """The recipient answered: the call is connected and the message starts."""
        b = self.b
        bc = ctx.broadcast
        call = ctx.call
        assert bc is not None
        if ctx.no_answer is not None:
            ctx.no_answer.cancel()
            ctx.no_answer = None
        bc.sip_code = 200
        if not await b._take_answer_a(ctx, leg, sdp):
            bc.detail = "bad_sdp"
            ctx.end_reason = "failed"
            b._reply_a(ctx, 488)
            b._cancel_all(ctx, None)
            await b._finish(ctx, "failed")
            return
        ctx.sides["a"] = leg
        ctx.b.remove(leg)  # the ringing plans of ``connect`` look at ctx.b: only the operator's legs
        b._cancel_all(ctx, ELSEWHERE)
        now = b.clock.now()
        bc.answered_at = now
        call.phase = Phase.CONNECTED
        call.answered_at = now
        log.info("call.connected", session_id=call.session_id, kind="autoinformer")
        await b.events.publish(call, "connected", request_uri=leg.contact_uri)
        if bc.request.record and b.recordings is not None:
            await b.recordings.start(call)
        if ctx.ended:
            return
        if bc.request.amd is not None and await self._amd_start(ctx):
            return
        await self._next_play(ctx)

    # --- answering-machine detection -------------------------------------------------------------------
    async def _amd_start(self, ctx: _Ctx) -> bool:
        """Classify the first seconds after the answer before the message plays; False when the media
        cannot (the message then plays at once, ``amd_result`` stays None)."""
        b = self.b
        bc = ctx.broadcast
        assert bc is not None and bc.request.amd is not None and b.media is not None
        amd = bc.request.amd
        params = AmdParams(
            analysis_s=amd.analysis_s,
            initial_silence_s=amd.initial_silence_s,
            greeting_s=amd.greeting_s,
            after_greeting_silence_s=amd.after_greeting_silence_s,
            until_greeting_end=amd.on_machine == "leave_message",
        )
        try:
            await b.media.amd_start(LegRef(ctx.session_id, "a"), params)
        except (ValueError, MediaError) as e:
            log.warning("broadcast.amd_failed", session_id=ctx.session_id, error=type(e).__name__)
            return False
        bc.stage = "amd"
        bc.timer = b.timers.call_later(  # the media decides by analysis_s; this only guards against silence
            amd.analysis_s + AMD_GRACE_S, lambda: b._spawn(self.amd(ctx, "a", "unknown"), "broadcast-amd")
        )
        return True

    async def amd(self, ctx: _Ctx, side: Side, event: str) -> None:
        """The detector's verdict (or the guard's ``unknown``); with ``leave_message``, the greeting's end."""
        b = self.b
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is None or ctx.ended or side != "a" or bc.request.amd is None:
                return
            if bc.stage == "amd" and event in ("human", "machine", "unknown"):
                self._cancel_timer(bc)
                bc.amd_result = (
                    "human" if event == "human" else "machine" if event == "machine" else "unknown"
                )
                log.info("broadcast.amd", session_id=ctx.session_id, result=event)
                if event != "machine":
                    await self._amd_stop(ctx)
                    await self._next_play(ctx)
                elif bc.request.amd.on_machine == "hangup":
                    await self._amd_stop(ctx)
                    await self._end(ctx)
                else:  # leave the message once the greeting is over
                    bc.stage = "greeting"
                    bc.timer = b.timers.call_later(
                        GREETING_WAIT_S + AMD_GRACE_S,
                        lambda: b._spawn(self.amd(ctx, "a", "greeting_end"), "broadcast-amd"),
                    )
            elif bc.stage == "greeting" and event == "greeting_end":
                self._cancel_timer(bc)
                await self._amd_stop(ctx)
                await self._next_play(ctx)

    async def _amd_stop(self, ctx: _Ctx) -> None:
        media = self.b.media
        if media is not None:
            try:
                await media.amd_stop(LegRef(ctx.session_id, "a"))
            except MediaError:
                pass  # the session is gone

    # --- the message -----------------------------------------------------------------------------------
    async def _next_play(self, ctx: _Ctx) -> None:
        bc = ctx.broadcast
        assert bc is not None
        bc.regular_left -= 1
        await self._play_message(ctx)

    async def _play_message(self, ctx: _Ctx) -> None:
        b = self.b
        bc = ctx.broadcast
        assert bc is not None and b.media is not None
        bc.stage = "message"
        bc.play_seq += 1
        bc.play_t0 = b.timers.monotonic()
        try:
            await b.media.play(LegRef(ctx.session_id, "a"), bc.message)
        except (ValueError, MediaError) as e:
            log.warning("broadcast.play_failed", session_id=ctx.session_id, error=type(e).__name__)
            bc.play_t0 = None
            bc.detail = "play_failed"
            await self._end(ctx)

    async def _stop_message(self, ctx: _Ctx) -> None:
        """The message stops where it is (a key, the call's end): what was played counts."""
        b = self.b
        bc = ctx.broadcast
        assert bc is not None
        self._cancel_timer(bc)
        if bc.play_t0 is None:
            return
        played = b.timers.monotonic() - bc.play_t0
        bc.listen_s += max(0.0, min(played, bc.message.duration_s))
        bc.play_t0 = None
        bc.play_seq += 1  # a play_done already on its way is stale now
        if b.media is not None and not ctx.ended:
            try:
                await b.media.stop_play(LegRef(ctx.session_id, "a"))
            except MediaError:
                pass  # the session is gone: nothing plays any more

    def takes_play_done(self, ctx: _Ctx, leg: LegRef) -> bool:
        """The media's play_done of side ``a``, while this call plays its own prompts."""
        bc = ctx.broadcast
        if bc is None or leg.side != "a" or bc.stage not in ("message", "closing") or self.b._node is None:
            return False
        seq = bc.play_seq if bc.stage == "message" else bc.closing_seq
        self.b._spawn(self._played(ctx, bc.stage, seq), "broadcast-played")
        return True

    async def _played(self, ctx: _Ctx, stage: Stage, seq: int) -> None:
        b = self.b
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is None or ctx.ended or bc.stage != stage:
                return
            if stage == "closing":
                if seq == bc.closing_seq:
                    await self._end(ctx)
                return
            if seq != bc.play_seq or bc.play_t0 is None:
                return
            bc.listen_s += bc.message.duration_s
            bc.play_t0 = None
            bc.played_full = True
            if bc.regular_left > 0:
                bc.stage = "gap"
                bc.timer = b.timers.call_later(GAP_S, lambda: b._spawn(self._gap_over(ctx), "broadcast-gap"))
            else:
                bc.stage = "wait"
                bc.timer = b.timers.call_later(
                    max(0.0, bc.request.dtmf_wait_s),
                    lambda: b._spawn(self._wait_over(ctx), "broadcast-wait"),
                )

    async def _gap_over(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is not None and not ctx.ended and bc.stage == "gap":
                bc.timer = None
                await self._next_play(ctx)

    async def _wait_over(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is not None and not ctx.ended and bc.stage == "wait":
                bc.timer = None
                await self._end(ctx)

    # --- keys ------------------------------------------------------------------------------------------
    def takes_key(self, ctx: _Ctx, side: Side, key: str) -> bool:
        """A key from the recipient (RFC 4733 or SIP INFO) while the message plays or waits for one."""
        bc = ctx.broadcast
        if bc is None or side != "a" or bc.stage not in ("message", "gap", "wait") or self.b._node is None:
            return False
        self.b._spawn(self._key(ctx, key), "broadcast-key")
        return True

    async def _key(self, ctx: _Ctx, key: str) -> None:
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is None or ctx.ended or bc.stage not in ("message", "gap", "wait"):
                return
            bc.digits += key
            action = bc.request.actions.get(key) if key in _KEYS else None
            if action is None:
                return  # unmapped: recorded, ignored
            log.info("broadcast.key", session_id=ctx.session_id, key=key, action=action.action)
            if action.action == "repeat":
                if bc.extra_left <= 0:
                    return  # no replays left: as good as an unmapped key
                bc.extra_left -= 1
                bc.repeated = True
                await self._stop_message(ctx)
                await self._play_message(ctx)
                return
            bc.action = action.action
            await self._stop_message(ctx)
            if action.action in ("confirm", "opt_out"):
                await self._close(ctx, action.prompt_id)
            elif action.action == "connect":
                await self._connect(ctx, action)
            else:
                await self._end(ctx)

    async def _close(self, ctx: _Ctx, prompt_id: str | None) -> None:
        """Play a last prompt (a confirmation, «оператор недоступен»), then hang up; without one, now."""
        b = self.b
        bc = ctx.broadcast
        assert bc is not None
        bc.stage = "closing"
        bc.closing_seq += 1
        if prompt_id and b.prompts is not None and b.media is not None:
            try:
                await b.media.play(LegRef(ctx.session_id, "a"), b.prompts.get(prompt_id))
                return
            except (ValueError, MediaError) as e:
                log.warning("broadcast.prompt_failed", session_id=ctx.session_id, error=type(e).__name__)
        await self._end(ctx)

    async def _end(self, ctx: _Ctx) -> None:
        if not ctx.ended:
            await self.b._hangup(ctx, by=None, reason=None, outcome="answered")

    # --- connect: the operator -----------------------------------------------------------------------
    async def _connect(self, ctx: _Ctx, action: KeyAction) -> None:
        """Ring the operator within this call, the recipient hearing ringback, as a transfer would."""
        b = self.b
        bc = ctx.broadcast
        call = ctx.call
        assert bc is not None
        bc.stage = "operator"
        bc.connect = True
        target = (action.target or "").strip()
        bc.operator_target = target or None
        kind = action.target_type
        domain = call.domain
        menu_id: uuid.UUID | None = None
        decision = None
        number: str | None = None
        if kind == "menu":
            try:
                menu_id = uuid.UUID(target)
                if b.menus is None:
                    raise NotFound("menu")
                await b.menus.menu_plan(domain.id, menu_id)
            except (ValueError, NotFound, MediaError):
                menu_id = None
        elif kind == "number":
            number = to_e164(target)
        elif target and b.incoming is not None:  # a user's or group's PIN
            found = await b.incoming.by_extension(domain.id, ctx.caller_id, target)
            if found is not None and _ringable(found) and (kind is None or found.action == kind):
                decision = found
        if ctx.ended:
            return
        if menu_id is None and number is None and decision is None:
            log.info("broadcast.operator_unknown", session_id=ctx.session_id, target=target[:32])
            bc.stage = "closing"
            await self._close(ctx, action.prompt_id)
            return
        # the PBX's side leaves the conversation: its `disconnected` names the transfer's target
        await b.events.publish(
            call, "disconnected", disconnect_reason=REASON_TRANSFER, extra={"transfer_to": target}
        )
        bc.before = (call.caller, call.callee)
        ctx.display = bc.request.operator_display or f"+{bc.recipient.external}"
        ctx.vm_owner = None
        log.info("broadcast.connect", session_id=ctx.session_id, target=target[:32], kind=kind or "")
        bc.unavailable_prompt = action.prompt_id
        if menu_id is not None:
            call.caller = bc.recipient
            await b._menu_enter(ctx, menu_id, 1)
            return
        parties: dict[str, Party] = {}
        if number is not None:
            party = outside_party(number, domain.name)
            plan, fallthrough = external_plan(number, ring_s=bc.request.operator_timeout_s), None
        else:
            assert decision is not None
            plan, parties = b._plan_for(decision, domain.name)
            fallthrough = decision.fallthrough
            if decision.action == "user":
                party = next(iter(parties.values()))
            else:
                party = Party(user_id=None, login="", pin=target, display_name="", domain=domain.name)
        call.caller, call.callee = bc.recipient, party
        bc.timer = b.timers.call_later(
            max(1.0, bc.request.operator_timeout_s),
            lambda: b._spawn(self._operator_timeout(ctx), "broadcast-operator-timeout"),
        )
        await b._menu_ring(ctx, plan, parties, fallthrough)

    async def _operator_timeout(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            bc = ctx.broadcast
            if bc is None or ctx.ended or bc.stage != "operator" or ctx.winner is not None:
                return
            bc.timer = None
            await self.operator_missed(ctx)

    async def operator_missed(self, ctx: _Ctx) -> None:
        """Nobody took the call in time (or every operator's phone failed): the optional «оператор
        недоступен», then the end."""
        b = self.b
        bc = ctx.broadcast
        assert bc is not None
        if ctx.ended or bc.stage != "operator":
            return
        log.info("broadcast.operator_missed", session_id=ctx.session_id)
        self._cancel_timer(bc)
        b._plan_stop(ctx)
        ctx.plan, ctx.fallthrough = None, None
        b._cancel_all(ctx, None)
        if b.media is not None:
            try:
                await b.media.stop_play(LegRef(ctx.session_id, "a"))  # the ringback
            except MediaError:
                pass
        if bc.before is not None:
            ctx.call.caller, ctx.call.callee = bc.before
        await self._close(ctx, bc.unavailable_prompt)

    def operator_answered(self, ctx: _Ctx) -> None:
        """The operator answered (the B2BUA bridged the two): the operator timer stops."""
        bc = ctx.broadcast
        if bc is not None:
            self._cancel_timer(bc)
            bc.stage = "bridged"

    # --- the end ---------------------------------------------------------------------------------------
    async def ending(self, ctx: _Ctx) -> None:
        """The call is ending (the B2BUA's ``_finish``, before ``end``): timers, ringing legs, the message."""
        bc = ctx.broadcast
        assert bc is not None
        self._cancel_timer(bc)
        if ctx.no_answer is not None:
            ctx.no_answer.cancel()
            ctx.no_answer = None
        if bc.play_t0 is not None:
            played = self.b.timers.monotonic() - bc.play_t0
            bc.listen_s += max(0.0, min(played, bc.message.duration_s))
            bc.play_t0 = None
        self.b._cancel_all(ctx, None)  # the operator's phones still ringing

    def ended(self, ctx: _Ctx) -> None:
        """The call has ended (``end`` published): ``dial`` returns its result."""
        bc = ctx.broadcast
        assert bc is not None
        call = ctx.call
        detail = bc.detail
        if not detail and ctx.end_reason:
            detail = ctx.end_reason  # media_timeout, media_lost, shutdown…
        if not detail and bc.sip_code is None:
            detail = "failed"
        result = BroadcastResult(
            sip_code=bc.sip_code,
            started_at=bc.started_at,
            answered_at=bc.answered_at,
            ended_at=call.ended_at or self.b.clock.now(),
            listen_s=round(bc.listen_s, 3),
            played_full=bc.played_full,
            digits=bc.digits,
            action=bc.action or ("repeat" if bc.repeated else None),
            operator_target=bc.operator_target,
            operator_answered=(ctx.winner is not None) if bc.connect else None,
            amd_result=bc.amd_result,
            detail=detail,
        )
        log.info(
            "broadcast.ended",
            session_id=ctx.session_id,
            sip_code=result.sip_code,
            action=result.action or "",
            detail=detail,
        )
        if not bc.done.done():
            bc.done.set_result(result)

    def _cancel_timer(self, bc: Broadcast) -> None:
        if bc.timer is not None:
            bc.timer.cancel()
            bc.timer = None


__all__ = ["Broadcast", "Broadcaster"]
