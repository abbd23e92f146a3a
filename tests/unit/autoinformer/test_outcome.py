"""One dial's outcome and the contact's next state (autoinformer.md §3.4, §3.5, §4.2)."""

from __future__ import annotations

import datetime as dt

import pytest

from vpbx.autoinformer.outcome import next_number, next_state, outcome_of
from vpbx.autoinformer.schemas import Success
from vpbx.pbx.broadcast import BroadcastResult

T0 = dt.datetime(2026, 6, 16, 9, 0, tzinfo=dt.UTC)
FULL = Success(criterion="listened_full")


def unanswered(code: int | None) -> BroadcastResult:
    return BroadcastResult(sip_code=code, started_at=T0, ended_at=T0 + dt.timedelta(seconds=5))


def answered(**kw: object) -> BroadcastResult:
    return BroadcastResult(
        sip_code=200,
        started_at=T0,
        answered_at=T0 + dt.timedelta(seconds=3),
        ended_at=T0 + dt.timedelta(seconds=30),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (486, "busy"),
        (600, "busy"),
        (408, "no_answer"),
        (480, "no_answer"),
        (403, "rejected"),
        (603, "rejected"),
        (404, "invalid_number"),
        (410, "invalid_number"),
        (484, "invalid_number"),
        (604, "invalid_number"),
        (500, "failed"),
        (503, "failed"),
        (488, "failed"),
        (402, "failed"),
        (None, "failed"),
    ],
)
def test_unanswered_outcomes_by_sip_code(code: int | None, outcome: str) -> None:
    assert outcome_of(unanswered(code), FULL) == (outcome, False)


def test_answered_outcomes_and_criteria() -> None:
    assert outcome_of(answered(played_full=True, listen_s=20), FULL) == ("success", True)
    assert outcome_of(answered(played_full=False, listen_s=7), FULL) == ("answered_incomplete", False)
    assert outcome_of(answered(), Success(criterion="answered")) == ("success", True)
    at_least_10 = Success(criterion="listened_min", min_listen_s=10)
    assert outcome_of(answered(listen_s=10.0), at_least_10) == ("success", True)
    assert outcome_of(answered(listen_s=9.5), at_least_10) == ("answered_incomplete", False)
    confirm = Success(criterion="confirmed", confirm_digit="1")
    assert outcome_of(answered(digits="31", action="confirm"), confirm) == ("success", True)
    assert outcome_of(answered(digits="3"), confirm) == ("answered_incomplete", False)


def test_opt_out_after_a_full_listen_is_opted_out_with_the_criterion_met() -> None:
    assert outcome_of(answered(played_full=True, digits="9", action="opt_out"), FULL) == ("opted_out", True)


def test_machine() -> None:
    assert outcome_of(answered(amd_result="machine", played_full=True), FULL) == ("machine", True)
    assert outcome_of(answered(amd_result="human", played_full=True), FULL) == ("success", True)


def step(outcome: str, **kw: object) -> tuple[str, dt.datetime | None, bool]:
    args: dict[str, object] = {
        "number_index": 0,
        "attempt_no": 1,
        "phones": 1,
        "dropped": [],
        "round_outcomes": [outcome],
        "drop_outcomes": [],
        "retry_on": ["busy", "no_answer", "failed"],
        "max_rounds": 3,
        "interval_min": 60,
        "ended_at": T0,
    } | kw
    s = next_state(outcome, **args)  # type: ignore[arg-type]
    return s.status, s.next_attempt_at, s.same_round


def test_single_number() -> None:
    hour = T0 + dt.timedelta(minutes=60)
    assert step("success") == ("succeeded", None, False)
    assert step("opted_out") == ("opted_out", None, False)
    assert step("busy") == ("waiting_retry", hour, False)
    assert step("busy", attempt_no=3) == ("attempts_exhausted", None, False)
    assert step("no_answer", retry_on=["busy"]) == ("not_succeeded", None, False)
    assert step("answered_incomplete") == ("not_succeeded", None, False)
    assert step("answered_incomplete", retry_on=["answered_incomplete"]) == ("waiting_retry", hour, False)
    assert step("machine", retry_on=["machine"], attempt_no=3) == ("attempts_exhausted", None, False)
    assert step("rejected", dropped=[0], drop_outcomes=["rejected"]) == ("not_succeeded", None, False)
    assert step("invalid_number", dropped=[0], drop_outcomes=["invalid_number"]) == (
        "invalid_number",
        None,
        False,
    )


def test_restart_delays_the_next_dial_by_the_interval_even_within_a_round() -> None:
    later = T0 + dt.timedelta(minutes=30)
    assert step("failed", phones=2, min_delay=dt.timedelta(minutes=30)) == ("waiting_retry", later, True)
    assert step("failed", interval_min=5, min_delay=dt.timedelta(minutes=30)) == (
        "waiting_retry",
        later,
        False,
    )


def test_several_numbers_are_rung_one_after_another() -> None:
    # phone busy → phone2 right away, in the same round
    assert step("busy", phones=2) == ("waiting_retry", T0, True)
    # phone2 answered with success ends the contact
    assert step("success", phones=2, number_index=1, round_outcomes=["busy", "success"]) == (
        "succeeded",
        None,
        False,
    )
    # end of the round: the last outcome still in play decides
    assert (
        step("no_answer", phones=2, number_index=1, round_outcomes=["busy", "no_answer"])[0]
        == "waiting_retry"
    )
    # a dropped last number: the earlier one's outcome decides
    assert step(
        "rejected",
        phones=2,
        number_index=1,
        dropped=[1],
        drop_outcomes=["rejected"],
        round_outcomes=["busy", "rejected"],
    ) == ("waiting_retry", T0 + dt.timedelta(minutes=60), False)
    # a reached person outside retry_on is not rung on another number
    assert step("answered_incomplete", phones=3) == ("not_succeeded", None, False)
    # every number non-existent → invalid_number; one rejected among them → not_succeeded
    assert (
        step(
            "invalid_number",
            phones=2,
            number_index=1,
            dropped=[0, 1],
            drop_outcomes=["invalid_number", "invalid_number"],
            round_outcomes=["invalid_number", "invalid_number"],
        )[0]
        == "invalid_number"
    )
    assert (
        step(
            "invalid_number",
            phones=2,
            number_index=1,
            dropped=[0, 1],
            drop_outcomes=["rejected", "invalid_number"],
            round_outcomes=["rejected", "invalid_number"],
        )[0]
        == "not_succeeded"
    )


def test_next_number_skips_dropped_ones() -> None:
    assert next_number(3, [], None) == 0
    assert next_number(3, [0], None) == 1
    assert next_number(3, [1], 0) == 2
    assert next_number(3, [], 2) is None
    assert next_number(2, [0, 1], None) is None


def test_the_schemas_statuses_and_outcomes_are_the_stores() -> None:
    """One definition (vpbx.store.models): the campaign object's Literals, the CHECK constraints' tuples and
    the subsets the dispatcher uses agree."""
    from typing import get_args

    from vpbx.autoinformer import schemas
    from vpbx.store import models

    assert get_args(schemas.CampaignStatus) == models.AI_CAMPAIGN_STATUSES
    assert get_args(schemas.ContactStatus) == models.AI_CONTACT_STATUSES
    assert get_args(schemas.Outcome) == models.AI_OUTCOMES
    assert set(get_args(schemas.RetryOutcome)) <= set(models.AI_OUTCOMES)
    assert schemas.FINAL_CONTACT < set(models.AI_CONTACT_STATUSES)
    assert schemas.FINAL_CAMPAIGN < set(models.AI_CAMPAIGN_STATUSES)
