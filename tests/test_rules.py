"""Response-code taxonomy and network retry rules (issuer_seq.rules).

Every retry case runs through `check_retries` and through the independent one-at-a-time oracle
in tests/rules_oracle.py, and hypothesis compares the two on random histories.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer_seq.rules import (
    CODES,
    DEFAULT_RULES,
    MAC_MEANINGS,
    MAC_RETRY_AFTER,
    MASTERCARD,
    RULES,
    STOP_RECURRING_CODES,
    VISA,
    VISA_CATEGORY_1,
    VISA_CATEGORY_2,
    VISA_CATEGORY_3,
    Cause,
    NetworkRules,
    cause_of,
    causes,
    check_retries,
    is_known_code,
    is_soft,
    mac_delay_seconds,
    normalize_code,
    visa_categories,
    visa_category,
)
from issuer_seq.timestamps import epoch_seconds
from tests.rules_oracle import Attempt, RetryDecision, attempt_columns, check_retry

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# The properties run 100 examples (each through the oracle and check_retries); the parity of
# the two over several cards at once, where bugs hide in edge cases, runs 200.
PROPERTY = settings(max_examples=100, deadline=None)
PARITY = settings(max_examples=200, deadline=None)

# Every code docs/rules.md names (response-code table and Visa category table).
DOMAIN_CODES = (
    "00 05 51 61 62 65 1A 91 96 N7 54 14 04 07 41 43 57 R0 R1 R3 "
    "12 15 46 03 19 59 75 78 86 93 N3 N4 55 82 6P"
).split()


def visa(
    code: str,
    *,
    ts: datetime = T0,
    merchant_id: str = "m1",
    amount: float = 9.99,
    advice_code: str | None = None,
    attempt: int = 1,
) -> Attempt:
    return Attempt(ts, VISA, merchant_id, amount, code, advice_code, attempt)


def mc(
    code: str,
    advice_code: str | None = None,
    *,
    ts: datetime = T0,
    merchant_id: str = "m1",
    amount: float = 9.99,
    attempt: int = 1,
) -> Attempt:
    return Attempt(ts, MASTERCARD, merchant_id, amount, code, advice_code, attempt)


# --------------------------------------------------------------------------------------------
# Taxonomy
# --------------------------------------------------------------------------------------------


def test_every_domain_code_is_in_the_table() -> None:
    missing = [c for c in DOMAIN_CODES if c not in CODES]
    assert not missing
    # Every lookup goes through normalize_code: a key spelled otherwise ("5", "n7") is dead.
    assert [code for code in CODES if normalize_code(code) != code] == []


@pytest.mark.parametrize(
    ("code", "network", "cause"),
    [
        ("00", None, Cause.APPROVED),
        ("51", VISA, Cause.FUNDS),
        ("61", MASTERCARD, Cause.LIMIT),
        ("65", VISA, Cause.LIMIT),
        ("65", MASTERCARD, Cause.SCA),
        ("65", None, Cause.LIMIT),
        ("05", VISA, Cause.GENERIC),
        ("91", VISA, Cause.TECHNICAL),
        ("96", MASTERCARD, Cause.TECHNICAL),
        ("1A", VISA, Cause.SCA),
        ("N7", VISA, Cause.DATA),
        ("54", MASTERCARD, Cause.DATA),
        ("14", VISA, Cause.HARD),
        ("41", VISA, Cause.HARD),
        ("R1", VISA, Cause.HARD),
        ("Z9", VISA, Cause.OTHER),
        ("5", VISA, Cause.GENERIC),  # unpadded feed spelling
        ("1a", VISA, Cause.SCA),
        ("65", " MasterCard ", Cause.SCA),
    ],
)
def test_cause_of(code: str, network: str | None, cause: Cause) -> None:
    assert cause_of(code, network) is cause


def test_is_known_code() -> None:
    assert is_known_code("05") and is_known_code("n7")
    assert not is_known_code("Z9")


def test_soft_and_hard_causes() -> None:
    soft = {c for c in Cause if is_soft(c)}
    assert soft == {
        Cause.FUNDS,
        Cause.LIMIT,
        Cause.GENERIC,
        Cause.TECHNICAL,
        Cause.SCA,
        Cause.OTHER,
    }
    assert not is_soft("data") and not is_soft(Cause.HARD) and not is_soft(Cause.APPROVED)


@pytest.mark.parametrize(
    ("category", "codes"),
    [
        (1, "04 07 12 14 15 41 43 46 57 R0 R1 R3".split()),
        (2, "03 19 51 59 61 62 65 75 78 86 91 93 96 N3 N4".split()),
        (3, "54 55 82 N7 1A 6P".split()),
        (4, "05 01 06 13 Z9 XX".split()),  # every other code, incl. unknown ones
        (0, "00 85".split()),  # approvals are not declines
    ],
)
def test_visa_category_table(category: int, codes: list[str]) -> None:
    assert [visa_category(c) for c in codes] == [category] * len(codes)
    assert visa_categories(np.array(codes)).tolist() == [category] * len(codes)
    assert visa_categories(np.array(codes)).dtype == np.int8


def test_code_14_is_never_retry_although_listed_in_category_3() -> None:
    assert "14" in VISA_CATEGORY_3
    assert visa_category("14") == 1


def test_taxonomy_agrees_with_visa_categories() -> None:
    assert all(cause_of(c) is Cause.HARD for c in VISA_CATEGORY_1)
    assert all(is_soft(cause_of(c, VISA)) for c in VISA_CATEGORY_2)
    assert all(cause_of(c) in {Cause.DATA, Cause.SCA} for c in VISA_CATEGORY_3 - {"14"})
    assert STOP_RECURRING_CODES <= VISA_CATEGORY_1


def test_mac_tables() -> None:
    retry_macs = [str(m) for m in range(24, 31)]
    assert set(MAC_MEANINGS) == {"01", "02", "03", "04", "21", *retry_macs}
    assert [MAC_RETRY_AFTER[m] for m in retry_macs] == [
        HOUR,
        24 * HOUR,
        2 * DAY,
        4 * DAY,
        6 * DAY,
        8 * DAY,
        10 * DAY,
    ]
    delays = mac_delay_seconds(np.array(["24", "30", "", None, "03"], dtype=object))
    assert delays.tolist() == [3600, 864000, 0, 0, 0]


def test_vectorized_causes_match_scalar() -> None:
    codes = np.array(["65", "65", "05", None, "1a", "Z9", "54"], dtype=object)
    nets = np.array([MASTERCARD, VISA, VISA, VISA, MASTERCARD, "amex", VISA])
    expected = [cause_of("" if c is None else c, n).value for c, n in zip(codes, nets, strict=True)]
    assert causes(codes, nets).tolist() == expected
    assert causes(np.array([], dtype=str), np.array([], dtype=str)).shape == (0,)


# --------------------------------------------------------------------------------------------
# One test per rule, through the oracle and check_retries
# --------------------------------------------------------------------------------------------


def decide_at(
    decline: Attempt,
    retry_at: datetime,
    history: list[Attempt],
    *,
    three_ds: bool = False,
    updated_credentials: bool = False,
    rules: NetworkRules = DEFAULT_RULES,
) -> RetryDecision:
    """The oracle's decision, asserting on the way that check_retries agrees (so every case
    pins both)."""
    decision = check_retry(
        decline,
        retry_at,
        history,
        three_ds=three_ds,
        updated_credentials=updated_credentials,
        rules=rules,
    )
    allowed, rule = check_retries(
        attempt_columns([decline], np.zeros(1, dtype=np.int64)),
        np.array([epoch_seconds(retry_at)]),
        attempt_columns(history, np.zeros(len(history), dtype=np.int64)),
        three_ds=three_ds,
        updated_credentials=updated_credentials,
        rules=rules,
    )
    assert (bool(allowed[0]), str(rule[0])) == (decision.allowed, decision.rule)
    return decision


def decide(
    decline: Attempt,
    after: timedelta,
    history: list[Attempt] | None = None,
    *,
    three_ds: bool = False,
    updated_credentials: bool = False,
    rules: NetworkRules = DEFAULT_RULES,
) -> RetryDecision:
    """`decide_at` a delay `after` the decline."""
    return decide_at(
        decline,
        decline.ts + after,
        history or [],
        three_ds=three_ds,
        updated_credentials=updated_credentials,
        rules=rules,
    )


def test_plain_soft_decline_is_allowed() -> None:
    d = decide(visa("51"), DAY)
    assert d == RetryDecision(True, "ok", d.reason, None)


def test_approval_and_retry_before_decline_are_refused() -> None:
    assert decide(visa("00"), DAY).rule == "not_a_decline"
    assert decide(mc("51"), timedelta(0)).rule == "not_after_decline"
    assert decide(mc("51"), -HOUR).rule == "not_after_decline"


@pytest.mark.parametrize("code", sorted(VISA_CATEGORY_1 - STOP_RECURRING_CODES))
def test_visa_category_1_is_never_retried(code: str) -> None:
    d = decide(visa(code), 60 * DAY, three_ds=True, updated_credentials=True)
    assert (d.allowed, d.rule) == (False, "visa_category_1")
    assert decide(mc(code), 60 * DAY, updated_credentials=True).rule == "hard_decline"


@pytest.mark.parametrize("code", sorted(STOP_RECURRING_CODES))
def test_stop_recurring_is_never_retried(code: str) -> None:
    assert decide(visa(code), 60 * DAY).rule == "stop_recurring"
    assert decide(mc(code), 60 * DAY).rule == "stop_recurring"


@pytest.mark.parametrize("mac", ["03", "21"])
def test_mac_do_not_retry_on_this_decline(mac: str) -> None:
    d = decide(mc("05", mac), 90 * DAY, updated_credentials=True, three_ds=True)
    assert (d.allowed, d.rule) == (False, "mac_do_not_retry")


def test_mac_do_not_retry_blocks_card_and_merchant_for_30_days() -> None:
    earlier = mc("05", "03", ts=T0 - 10 * DAY)
    assert decide(mc("51"), DAY, [earlier]).rule == "mac_do_not_retry"
    # 30 days after the MAC 03 the block is over; another merchant is never blocked.
    assert decide(mc("51"), 20 * DAY, [earlier]).rule == "ok"
    assert decide(mc("51"), DAY, [replace(earlier, merchant_id="m2")]).rule == "ok"
    assert decide(mc("51"), DAY, [earlier], rules=NetworkRules(mac_block_days=5)).rule == "ok"
    # A MAC only rides on declines; one on an approval (a feed glitch) blocks nothing.
    assert decide(mc("51"), DAY, [replace(earlier, response_code="00")]).rule == "ok"


@pytest.mark.parametrize("code", ["54", "N7", "55", "82", "6P"])
def test_data_codes_need_updated_credentials(code: str) -> None:
    assert decide(visa(code), DAY).rule == "needs_updated_credentials"
    assert decide(visa(code), DAY, updated_credentials=True).rule == "ok"


@pytest.mark.parametrize("mac", ["01", "04"])
def test_mac_01_04_need_updated_credentials(mac: str) -> None:
    assert decide(mc("05", mac), DAY).rule == "needs_updated_credentials"
    assert decide(mc("05", mac), DAY, updated_credentials=True).rule == "ok"
    # A MAC only means something on Mastercard.
    assert decide(visa("05", advice_code=mac), DAY).rule == "ok"


def test_1a_needs_3ds_however_late() -> None:
    assert decide(visa("1A"), 10 * DAY).rule == "needs_3ds"
    assert decide(visa("1A"), timedelta(seconds=5), three_ds=True).rule == "ok"


def test_mastercard_65_may_be_retried_later_without_3ds() -> None:
    assert cause_of("65", MASTERCARD) is Cause.SCA
    assert decide(mc("65"), DAY).rule == "ok"


@pytest.mark.parametrize("mac", sorted(MAC_RETRY_AFTER))
def test_mac_retry_after_waits_for_the_advised_delay(mac: str) -> None:
    wait = MAC_RETRY_AFTER[mac]
    early = decide(mc("51", mac), wait - timedelta(seconds=1))
    assert (early.allowed, early.rule, early.earliest) == (False, "mac_wait", T0 + wait)
    assert decide(mc("51", mac), wait).rule == "ok"


def reattempts(n: int, start: datetime, step: timedelta, merchant_id: str = "m1") -> list[Attempt]:
    return [
        visa("51", ts=start + i * step, attempt=2 + i, merchant_id=merchant_id) for i in range(n)
    ]


def test_visa_allows_15_reattempts_in_30_days() -> None:
    decline = visa("51", ts=T0, attempt=15)  # the 14th reattempt
    history = reattempts(13, T0 - 13 * HOUR, HOUR)
    assert decide(decline, HOUR, history).rule == "ok"  # 13 + 1 + the retry = 15
    d = decide(decline, HOUR, [*history, visa("05", ts=T0 - 20 * HOUR, attempt=2)])
    assert (d.allowed, d.rule) == (False, "visa_reattempt_cap")


def test_visa_cap_counts_only_same_merchant_reattempts_in_window() -> None:
    decline = visa("05", ts=T0, attempt=1)
    history = reattempts(15, T0 - 40 * DAY, HOUR)  # older than 30 days
    history += reattempts(15, T0 - 2 * DAY, HOUR, merchant_id="m2")
    history += [visa("05", ts=T0 - DAY + i * HOUR) for i in range(15)]  # first tries
    assert decide(decline, DAY, history).rule == "ok"
    assert decide(decline, DAY, history, rules=NetworkRules(visa_max_reattempts_30d=0)).rule == (
        "visa_reattempt_cap"
    )


def mc_declines(n: int, start: datetime, step: timedelta) -> list[Attempt]:
    return [mc("51", ts=start + i * step, attempt=2) for i in range(n)]


def test_mastercard_excessive_declines_30_days() -> None:
    history = mc_declines(33, T0 - 25 * DAY, 12 * HOUR)
    assert decide(mc("51"), 2 * DAY, history).rule == "ok"  # 34 declines: one more is the 35th
    more = [*history, mc("51", ts=T0 - 27 * DAY)]
    assert decide(mc("51"), 2 * DAY, more).rule == "mc_excessive_30d"
    assert decide(mc("51"), 2 * DAY, more, rules=NetworkRules(mc_max_declines_30d=36)).rule == (
        "ok"
    )
    # Another amount, an approval, or a decline older than 30 days is not the same payment.
    others = [mc("51", ts=T0 - DAY, amount=10.0), mc("00", ts=T0 - DAY), mc("51", ts=T0 - 40 * DAY)]
    assert decide(mc("51"), 2 * DAY, [*history, *others]).rule == "ok"


def test_mastercard_24h_cap_defaults_to_the_stricter_10() -> None:
    history = mc_declines(9, T0 - 9 * HOUR, HOUR)
    d = decide(mc("51"), HOUR, history)
    assert (d.allowed, d.rule) == (False, "mc_excessive_24h")
    assert decide(mc("51"), HOUR, history[1:]).rule == "ok"
    assert decide(mc("51"), HOUR, history, rules=NetworkRules(mc_max_declines_24h=20)).rule == "ok"
    assert decide(mc("51"), 24 * HOUR, history).rule == "ok"  # the decline itself left the window


@pytest.mark.parametrize("inside", [False, True])
def test_windows_are_open_at_both_ends(inside: bool) -> None:
    """(retry_at - window, retry_at): an attempt exactly one window before the retry is out."""
    retry_at = T0 + 40 * DAY
    nudge = timedelta(seconds=1) if inside else timedelta(0)
    at_30d, at_24h = retry_at - 30 * DAY + nudge, retry_at - 24 * HOUR + nudge
    one = NetworkRules(visa_max_reattempts_30d=1, mc_max_declines_30d=1, mc_max_declines_24h=1)
    two = replace(one, mc_max_declines_30d=2)
    cases = [
        (visa("51"), [visa("51", ts=at_30d, attempt=2)], one, "visa_reattempt_cap"),
        (mc("51"), [mc("05", "03", ts=at_30d)], one, "mac_do_not_retry"),
        (mc("51"), [mc("51", ts=at_30d)], one, "mc_excessive_30d"),
        (mc("51"), [mc("51", ts=at_24h)], two, "mc_excessive_24h"),
        # The decline itself also counts only inside the window.
        (visa("51", ts=at_30d, attempt=2), [], one, "visa_reattempt_cap"),
        (mc("51", ts=at_24h), [], two, "mc_excessive_24h"),
    ]
    for decline, history, rules, rule in cases:
        got = decide(decline, retry_at - decline.ts, history, rules=rules).rule
        assert got == (rule if inside else "ok"), (decline, history)
    # The end is open: history is what happened strictly before the retry, so a log that
    # already holds the retry itself (checked after the fact) does not count it twice.
    same_second = [visa("51", ts=retry_at, attempt=2)]
    assert decide(visa("51"), retry_at - T0, same_second, rules=one).rule == "ok"
    just_before = [visa("51", ts=retry_at - timedelta(seconds=1), attempt=2)]
    assert decide(visa("51"), retry_at - T0, just_before, rules=one).rule == "visa_reattempt_cap"


def test_same_payment_matches_amounts_to_the_cent_and_ids_as_text() -> None:
    one = NetworkRules(mc_max_declines_30d=2)
    # 0.29 * 100 is 28.999...: still the same payment as 0.29; 0.30 is another.
    assert decide(mc("51", amount=0.29), DAY, [mc("51", amount=0.29)], rules=one).rule == (
        "mc_excessive_30d"
    )
    assert decide(mc("51", amount=0.29), DAY, [mc("51", amount=0.30)], rules=one).rule == "ok"
    merchant_7 = replace(mc("51"), merchant_id=7)
    history = [replace(mc("51"), merchant_id="7")]
    assert decide(merchant_7, DAY, history, rules=one).rule == "mc_excessive_30d"
    declines = replace(attempt_columns([merchant_7], np.array([1])), merchant_id=np.array([7]))
    at = np.array([epoch_seconds(T0 + DAY)])
    history_cols = attempt_columns(history, np.array([1]))
    assert check_retries(declines, at, history_cols, rules=one)[1].tolist() == ["mc_excessive_30d"]


def test_other_networks_only_get_generic_rules() -> None:
    amex = replace(visa("51"), network="amex")
    assert decide(amex, DAY, mc_declines(50, T0 - DAY, timedelta(minutes=1))).rule == "ok"
    assert decide(replace(amex, response_code="41"), DAY).rule == "hard_decline"


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        visa("51", ts=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        check_retry(visa("51"), datetime(2024, 1, 2))


# --------------------------------------------------------------------------------------------
# check_retries: whole logs, shapes
# --------------------------------------------------------------------------------------------


def test_check_retries_with_the_whole_log_as_history() -> None:
    log = [*mc_declines(8, T0 - 8 * HOUR, HOUR), mc("51"), visa("41"), visa("51")]
    cols = attempt_columns(log, np.array([7] * 9 + [8, 8]))
    rows = np.array([8, 9, 10])
    retry_at = np.full(3, epoch_seconds(T0 + HOUR))
    allowed, rule = check_retries(cols.take(rows), retry_at, cols, self_rows=rows)
    assert allowed.tolist() == [True, False, True]
    assert rule.tolist() == ["ok", "visa_category_1", "ok"]  # 8 + 1 declines < 10 in 24 h
    # Without self_rows the log's own decline row would be counted twice.
    _, twice = check_retries(cols.take(rows[:1]), retry_at[:1], cols)
    assert twice.tolist() == ["mc_excessive_24h"]


def test_check_retries_without_history_and_empty_input() -> None:
    cols = attempt_columns([visa("1A"), mc("51", "25")], np.array([1, 2]))
    at = np.full(2, epoch_seconds(T0 + HOUR))
    allowed, rule = check_retries(cols, at, three_ds=np.array([False, True]))
    assert rule.tolist() == ["needs_3ds", "mac_wait"] and not allowed.any()
    empty = cols.take(np.array([], dtype=np.int64))
    allowed, rule = check_retries(empty, np.array([], dtype=np.int64), cols)
    assert allowed.shape == rule.shape == (0,)


def test_check_retries_rejects_mismatched_shapes() -> None:
    cols = attempt_columns([visa("51")], np.array([1]))
    with pytest.raises(ValueError, match="retry_at"):
        check_retries(cols, np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="one length"):
        replace(cols, ts=np.zeros(3, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Properties over random histories
# --------------------------------------------------------------------------------------------

SOFT_DRAWN = ("05", "51", "61", "65", "1A", "91", "62", "Z9")
ALL_DRAWN = (*SOFT_DRAWN, *"00 N7 54 14 04 41 57 R0 R1 R3".split())
NEVER = tuple(sorted(VISA_CATEGORY_1 | STOP_RECURRING_CODES))
# Soft codes and MAC 24-30 come up more often so that the time-window rules, not the code
# alone, decide most examples.
codes_drawn = st.sampled_from(SOFT_DRAWN) | st.sampled_from(ALL_DRAWN)
macs_drawn = (
    st.none() | st.sampled_from(sorted(MAC_RETRY_AFTER)) | st.sampled_from(sorted(MAC_MEANINGS))
)
# Hour grid, dense near the decline, so that attempts land exactly on the 24 h / 30 d edges.
offsets = st.integers(-30, 30) | st.integers(-40 * 24, 40 * 24)
edges = st.sampled_from([h + e for h in (1, 24, 48, 96, 144, 192, 240, 720) for e in (-1, 0, 1)])
retry_delays = st.integers(-1, 30) | st.integers(-1, 35 * 24) | edges
Scenario = tuple[Attempt, datetime, list[Attempt], dict[str, Any]]
small_rules = st.builds(
    NetworkRules,
    visa_max_reattempts_30d=st.integers(0, 5),
    mc_max_declines_30d=st.integers(1, 6),
    mc_max_declines_24h=st.integers(1, 4),
    mac_block_days=st.sampled_from([1, 30]),
)


@st.composite
def attempts(
    draw: st.DrawFn,
    network: str,
    codes: st.SearchStrategy[str] = codes_drawn,
    hours: st.SearchStrategy[int] = offsets,
) -> Attempt:
    return Attempt(
        ts=T0 + draw(hours) * HOUR,
        network=network,
        merchant_id=draw(st.sampled_from(["m1", "m1", "m2"])),
        amount=draw(st.sampled_from([0.29, 0.29, 25.0])),  # 0.29 * 100 is 28.999...
        response_code=draw(codes),
        advice_code=draw(macs_drawn),
        attempt=draw(st.integers(1, 3)),
    )


@st.composite
def scenarios(draw: st.DrawFn, codes: st.SearchStrategy[str] = codes_drawn) -> Scenario:
    """One card: a decline, a proposed retry time, the card's history and the flags."""
    network = draw(st.sampled_from([VISA, MASTERCARD, "amex"]))
    decline = draw(attempts(network, codes))
    retry_at = decline.ts + draw(retry_delays) * HOUR
    # Some history lands on the retry itself or on / just inside the 24 h and 30 d starts.
    retry_hour = (retry_at - T0) // HOUR
    on_edges = st.sampled_from([retry_hour - w + e for w in (0, 24, 720) for e in (0, 1)])
    history = draw(st.lists(attempts(network, hours=offsets | on_edges), max_size=10))
    flags = {
        "three_ds": draw(st.booleans()),
        "updated_credentials": draw(st.booleans()),
        "rules": draw(small_rules),
    }
    return decline, retry_at, history, flags


@PROPERTY
@given(scenarios(codes=st.sampled_from(NEVER)))
def test_never_retry_codes_are_never_allowed(scenario: Scenario) -> None:
    decline, retry_at, history, flags = scenario
    assert not decide_at(decline, retry_at, history, **flags).allowed


@PROPERTY
@given(scenarios())
def test_allowed_retries_respect_the_network_limits(scenario: Scenario) -> None:
    decline, retry_at, history, flags = scenario
    if not decide_at(decline, retry_at, history, **flags).allowed:
        return
    rules: NetworkRules = flags["rules"]

    def in_window(window: timedelta) -> list[Attempt]:
        # (retry_at - window, retry_at): history is what happened strictly before the retry
        # (test_windows_are_open_at_both_ends)
        return [
            a
            for a in [*history, decline]
            if retry_at - window < a.ts < retry_at and a.merchant_id == decline.merchant_id
        ]

    if decline.network == VISA:
        reattempts = sum(1 for a in in_window(30 * DAY) if a.attempt > 1)
        assert reattempts + 1 <= rules.visa_max_reattempts_30d
    if decline.network == MASTERCARD:
        if decline.advice_code in MAC_RETRY_AFTER:
            assert retry_at >= decline.ts + MAC_RETRY_AFTER[decline.advice_code]
        for window, cap in (
            (30 * DAY, rules.mc_max_declines_30d),
            (DAY, rules.mc_max_declines_24h),
        ):
            same_payment = [
                a
                for a in in_window(window)
                if a.amount == decline.amount and a.response_code != "00"
            ]
            assert len(same_payment) + 1 <= cap


@PROPERTY
@given(scenarios(), st.lists(attempts(MASTERCARD) | attempts(VISA), max_size=8))
def test_more_history_never_turns_a_refusal_into_an_approval(
    scenario: Scenario, extra: list[Attempt]
) -> None:
    decline, retry_at, history, flags = scenario
    before = decide_at(decline, retry_at, history, **flags)
    after = decide_at(decline, retry_at, [*history, *extra], **flags)
    assert before.allowed or not after.allowed
    assert before.rule in RULES and after.rule in RULES


@PARITY
@given(
    st.lists(scenarios(), min_size=1, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    small_rules,
    st.booleans(),
)
def test_vectorized_agrees_with_the_oracle(
    cards: list[Scenario], in_log: list[bool], rules: NetworkRules, attempt_floor: bool
) -> None:
    """Several cards in one call; some declines are rows of the history (self_rows)."""
    log: list[Attempt] = []
    log_cards: list[str] = []
    declines: list[Attempt] = []
    self_rows: list[int] = []
    # Text ids in descending order, so that key order differs from row order.
    card_ids = [f"card{len(cards) - k}" for k in range(len(cards))]
    for card, (decline, _, history, _) in enumerate(cards):
        log += history
        log_cards += [card_ids[card]] * len(history)
        declines.append(decline)
        if in_log[card]:
            self_rows.append(len(log))
            log.append(decline)
            log_cards.append(card_ids[card])
        else:
            self_rows.append(-1)
    retry_at = [retry for _, retry, _, _ in cards]
    three_ds = np.array([f["three_ds"] for *_, f in cards])
    updated = np.array([f["updated_credentials"] for *_, f in cards])

    allowed, rule = check_retries(
        attempt_columns(declines, np.array(card_ids)),
        np.array([epoch_seconds(t) for t in retry_at], dtype=np.int64),
        attempt_columns(log, np.array(log_cards, dtype=str)),
        self_rows=np.array(self_rows),
        three_ds=three_ds,
        updated_credentials=updated,
        rules=rules,
        attempt_floor=attempt_floor,
    )
    for card, (decline, retry, history, _) in enumerate(cards):
        expected = check_retry(
            decline,
            retry,
            history,
            three_ds=bool(three_ds[card]),
            updated_credentials=bool(updated[card]),
            rules=rules,
            attempt_floor=attempt_floor,
        )
        assert (bool(allowed[card]), str(rule[card])) == (expected.allowed, expected.rule)


def test_attempt_floor_counts_what_the_attempt_number_implies() -> None:
    # No history (a scorer's store after a restart): only the attempt number tells.
    rows = [
        visa("51", attempt=16),
        visa("51", attempt=15),
        mc("51", attempt=35),
        mc("51", attempt=34),
    ]
    cols = attempt_columns(rows, np.arange(4))
    at = np.full(4, epoch_seconds(T0 + DAY))
    _, plain = check_retries(cols, at)
    assert plain.tolist() == ["ok"] * 4
    _, floored = check_retries(cols, at, attempt_floor=True)
    # attempt 16: reattempts 2..16 were 15, the retry would be the 16th; attempt 35: 35 declines
    assert floored.tolist() == ["visa_reattempt_cap", "ok", "mc_excessive_30d", "ok"]
    # The history's own count still decides where it is larger than the floor.
    history = attempt_columns(mc_declines(40, T0 - 2 * DAY, HOUR), np.full(40, 3))
    _, counted = check_retries(cols.take(np.array([3])), at[:1], history, attempt_floor=True)
    assert counted.tolist() == ["mc_excessive_30d"]
