"""The retry policy: best allowed delay by expected value; never against the rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.delays import DEFAULT_GRID, grid_seconds
from issuer_seq.retry_policy import (
    CIT_SESSION_S,
    DONT_RETRY,
    NO_RETRY,
    NOW_3DS,
    NOW_3DS_DELAY_S,
    RETRY_NOW_WITH_3DS,
    Action,
    RetryEconomics,
    choose_retry,
    retry_values,
    within_session,
)

GRID = grid_seconds()
CODES = ["05", "51", "91", "1A", "41", "54", "R1", "61", "Z9"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_never_chooses_a_forbidden_or_losing_action(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 20))
    g = len(GRID)
    p = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n * g, max_size=n * g))).reshape(n, g)
    allowed = np.array(data.draw(st.lists(st.booleans(), min_size=n * g, max_size=n * g)))
    allowed = allowed.reshape(n, g)
    amount = np.array(data.draw(st.lists(st.floats(0, 5000), min_size=n, max_size=n)))
    code = np.array(data.draw(st.lists(st.sampled_from(CODES), min_size=n, max_size=n)))
    network = np.array(
        data.draw(st.lists(st.sampled_from(["visa", "mastercard"]), min_size=n, max_size=n))
    )
    choice = choose_retry(p, allowed, amount, code, network, GRID)
    values = retry_values(p, amount, GRID)
    for i in range(n):
        a = choice.action[i]
        if code[i] in ("41", "54", "R1"):
            assert a == NO_RETRY and choice.reason[i] == "never_retry"
        if a >= 0:
            assert allowed[i, a]
            assert choice.value[i] > 0
            assert values[i, a] == max(values[i][allowed[i]])
        else:
            assert choice.value[i] == 0
            assert not (allowed[i] & (values[i] > 0)).any() or code[i] in ("41", "54", "R1")


def test_prefers_the_later_delay_only_when_it_pays() -> None:
    p = np.array([[0.1, 0.1, 0.2, 0.3, 0.6, 0.7, 0.75, 0.8]])
    allowed = np.ones_like(p, dtype=bool)
    econ = RetryEconomics(margin=0.03, attempt_fee=0.02, delay_cost_per_day=0.0)
    pick = choose_retry(
        p, allowed, np.array([100.0]), np.array(["51"]), np.array(["visa"]), GRID, econ=econ
    )
    assert pick.action[0] == 7 and pick.reason[0] == "best_value"
    waiting = RetryEconomics(margin=0.03, attempt_fee=0.02, delay_cost_per_day=0.01)
    pick = choose_retry(
        p, allowed, np.array([100.0]), np.array(["51"]), np.array(["visa"]), GRID, econ=waiting
    )
    assert (
        pick.action[0] == 4
    )  # 1 day: the extra success of waiting longer costs more than it brings
    tiny = choose_retry(p, allowed, np.array([0.5]), np.array(["51"]), np.array(["visa"]), GRID)
    assert tiny.action[0] == NO_RETRY and tiny.reason[0] == "not_worth_it"


def test_immediate_3ds_retry_for_sca_declines() -> None:
    p = np.full((1, len(GRID)), 0.2)
    allowed = np.zeros_like(p, dtype=bool)  # 1A: later retries without 3DS are not allowed
    pick = choose_retry(
        p,
        allowed,
        np.array([80.0]),
        np.array(["1A"]),
        np.array(["visa"]),
        GRID,
        p_now_3ds=np.array([0.9]),
        sca_3ds_possible=np.array([True]),
    )
    assert pick.action[0] == NOW_3DS and pick.reason[0] == "now_with_3ds"


def test_customer_initiated_payments_are_retried_only_within_the_session() -> None:
    mask = within_session(np.array(["CIT", "MIT"]), GRID)
    assert mask[1].all()
    assert (mask[0] == (GRID <= CIT_SESSION_S)).all() and mask[0, 0] and not mask[0, -1]
    p = np.array([[0.1, 0.1, 0.2, 0.3, 0.6, 0.7, 0.75, 0.8]])
    pick = choose_retry(p, mask[:1], np.array([500.0]), np.array(["51"]), np.array(["visa"]), GRID)
    assert pick.action[0] in (0, 1)  # the best it may do is a retry within the session


def test_actions_carry_their_name_and_delay() -> None:
    assert Action.decode(NO_RETRY, DEFAULT_GRID, GRID) == DONT_RETRY == Action("no_retry", None)
    assert not DONT_RETRY.retries
    now = Action.decode(NOW_3DS, DEFAULT_GRID, GRID)
    assert now == RETRY_NOW_WITH_3DS == Action("now_with_3ds", NOW_3DS_DELAY_S) and now.retries
    assert Action.decode(1, DEFAULT_GRID, GRID) == Action("30m", 1800)
    assert Action.decode(7, DEFAULT_GRID, GRID) == Action("7d", 7 * 86_400)
