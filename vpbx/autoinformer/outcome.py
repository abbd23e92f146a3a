"""One dial's outcome and the contact's next state (autoinformer.md §3.4, §3.5, §4.2). Pure.

A contact's numbers are rung one after another in a round (column order, never two at once); ``rejected`` and
``invalid_number`` drop a number from later rounds; success or an opt-out on any number ends the contact.
Within a round the next number follows at once after an outcome that did not reach the person (``busy``,
``no_answer``, ``failed``), or after a reached one that is retried (``answered_incomplete``/``machine`` in
``retry_on``); a reached one outside ``retry_on`` ends the contact (``not_succeeded``). At the end of a round
the last outcome of a number still in play decides: in ``retry_on`` → the next round after ``interval_min``
(or ``attempts_exhausted`` when ``attempts.max`` rounds are made), otherwise ``not_succeeded``. A contact
with no number left is ``invalid_number`` when the network called every one of them non-existent, else
``not_succeeded``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from vpbx.autoinformer.schemas import Success
from vpbx.pbx.broadcast import BroadcastResult

BUSY_CODES = frozenset({486, 600})
NO_ANSWER_CODES = frozenset({408, 480})
REJECTED_CODES = frozenset({403, 603})
INVALID_CODES = frozenset({404, 410, 484, 604})
DROPS = frozenset({"rejected", "invalid_number"})  # the number leaves later rounds
REACHED = frozenset({"answered_incomplete", "machine"})  # the person (or their machine) answered


def criterion_met(result: BroadcastResult, success: Success) -> bool:
    """§3.5: computed for every answered dial, whatever its outcome."""
    if result.answered_at is None:
        return False
    match success.criterion:
        case "answered":
            return True
        case "listened_full":
            return result.played_full
        case "listened_min":
            return result.listen_s >= (success.min_listen_s or 0)
        case "confirmed":
            return success.confirm_digit is not None and success.confirm_digit in result.digits
    return False


def outcome_of(result: BroadcastResult, success: Success) -> tuple[str, bool]:
    """(outcome, criterion_met) of one dial (§3.4's table)."""
    met = criterion_met(result, success)
    if result.answered_at is not None:
        if result.action == "opt_out":
            return "opted_out", met
        if result.amd_result == "machine":
            return "machine", met
        return ("success" if met else "answered_incomplete"), met
    code = result.sip_code
    if code in BUSY_CODES:
        return "busy", False
    if code in NO_ANSWER_CODES:
        return "no_answer", False
    if code in REJECTED_CODES:
        return "rejected", False
    if code in INVALID_CODES:
        return "invalid_number", False
    return "failed", False


@dataclass(frozen=True, slots=True)
class NextState:
    status: str  # the contact's status after the dial
    next_attempt_at: dt.datetime | None = None  # before moving into an open window; None for final states
    same_round: bool = False  # the next dial is the next number of this round


def next_number(phones: int, dropped: Collection[int], after: int | None) -> int | None:
    """The next number index to ring in a round: the first one after ``after`` (None = a new round) still in
    play, or None when the round is over."""
    start = 0 if after is None else after + 1
    return next((i for i in range(start, phones) if i not in dropped), None)


def next_state(
    outcome: str,
    *,
    number_index: int,
    attempt_no: int,
    phones: int,
    dropped: Collection[int],
    round_outcomes: Sequence[str],
    drop_outcomes: Sequence[str],
    retry_on: Collection[str],
    max_rounds: int,
    interval_min: int,
    ended_at: dt.datetime,
    min_delay: dt.timedelta = dt.timedelta(0),
) -> NextState:
    """The contact's status after a dial that ended with ``outcome``.

    ``dropped``: number indices out of later rounds, this dial's number included if it was dropped now;
    ``round_outcomes``: this round's outcomes in dial order, this one last; ``drop_outcomes``: the outcome
    that dropped each dropped number; ``min_delay``: the earliest next dial (``interval_min`` after a
    restart, §7.2).
    """
    if outcome == "success":
        return NextState("succeeded")
    if outcome == "opted_out":
        return NextState("opted_out")
    if outcome in REACHED and outcome not in retry_on:
        return NextState("not_succeeded")
    if next_number(phones, dropped, number_index) is not None:
        return NextState("waiting_retry", ended_at + min_delay, same_round=True)
    if next_number(phones, dropped, None) is None:  # no number left in play
        if drop_outcomes and all(o == "invalid_number" for o in drop_outcomes):
            return NextState("invalid_number")
        return NextState("not_succeeded")
    deciding = next((o for o in reversed(round_outcomes) if o not in DROPS), outcome)
    if deciding not in retry_on:
        return NextState("not_succeeded")
    if attempt_no >= max_rounds:
        return NextState("attempts_exhausted")
    wait = max(dt.timedelta(minutes=interval_min), min_delay)
    return NextState("waiting_retry", ended_at + wait)
