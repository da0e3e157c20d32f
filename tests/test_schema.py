"""The input contract (docs/data_contract.md): every rule of it, with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from issuer_seq.errors import IssuerSeqError
from issuer_seq.schema import (
    PROBLEM_STAGES,
    WARNING_CHECKS,
    LogValidationError,
    load_log,
    summarize,
    validate,
)
from tests.conftest import handmade_rows


def _problems(df: pd.DataFrame) -> str:
    with pytest.raises(LogValidationError) as info:
        validate(df, source="test.parquet")
    return str(info.value)


def test_simulated_log_meets_the_contract(sim_dir: Path) -> None:
    vlog = load_log(sim_dir)
    assert len(vlog.frame) > 10_000
    assert vlog.frame["ts"].is_monotonic_increasing
    assert str(vlog.frame["ts"].dt.tz) == "UTC"
    summary = summarize(vlog)
    assert 0.8 < summary["approval_rate"] < 0.95
    assert summary["rows"] == len(vlog.frame)
    assert set(summary["network_mix"]) == {"visa", "mastercard"}


def test_handmade_log_is_sorted_and_unknown_codes_warned() -> None:
    df = handmade_rows()
    vlog = validate(df)
    assert list(vlog.frame["txn_id"]) == ["t4", "t1", "t2", "t5", "t6", "t3"]
    assert any("not sorted" in w for w in vlog.warnings)
    assert any("'Z9'" in w and "other" in w for w in vlog.warnings)
    assert len(vlog.frame) == len(df)  # nothing dropped
    summary = summarize(vlog)
    assert summary["decline_causes"]["other"] == pytest.approx(1 / 3, abs=1e-3)


def test_missing_and_mistyped_columns_are_named() -> None:
    df = handmade_rows().drop(columns=["currency"])
    df["mcc"] = 5411
    df["amount"] = df["amount"].astype(str)
    msg = _problems(df)
    assert "missing required column 'currency'" in msg
    assert "column 'mcc' has type int64, expected string of 4 digits" in msg
    assert "column 'amount' has type" in msg and "expected float64" in msg


def test_value_problems_are_all_reported_with_counts_and_examples() -> None:
    df = handmade_rows()
    df.loc[0, "amount"] = -5.0
    df.loc[1, "amount"] = np.inf
    df.loc[2, "txn_id"] = "t1"
    df.loc[3, "card_id"] = None
    df.loc[4, "network"] = "amex"
    df.loc[5, "mcc"] = "54"
    msg = _problems(df)
    assert "1 negative value(s): row 0: -5.0" in msg
    assert "1 non-finite value(s): row 1: inf" in msg
    assert "'txn_id' has 1 duplicated id(s) on 2 rows" in msg
    assert "'card_id' has 1 null value(s)" in msg
    assert "'network' has 1 value(s) outside ['visa', 'mastercard']: ['amex']" in msg
    assert "'mcc' has 1 value(s) that are not four digits" in msg


def test_inconsistent_payments_are_rejected() -> None:
    df = handmade_rows()
    df.loc[2, "card_id"] = "c9"  # a retry of p2 on another card
    assert "mix several card_id values" in _problems(df)
    df = handmade_rows()
    df.loc[2, "ts"] = pd.Timestamp("2026-02-01", tz="UTC")  # retry before its first try
    assert "timed before the previous attempt" in _problems(df)


def test_csv_keeps_leading_zeros_and_rejects_bad_timestamps(tmp_path: Path) -> None:
    df = handmade_rows()
    df["ts"] = df["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    vlog = load_log(path)
    assert set(vlog.frame["response_code"]) == {"00", "51", "05", "Z9"}
    df.loc[3, "ts"] = "yesterday"
    df.to_csv(path, index=False)
    with pytest.raises(
        LogValidationError, match=r"1 unparseable timestamp\(s\): row 3: 'yesterday'"
    ):
        load_log(path)


def test_naive_timestamps_are_taken_as_utc() -> None:
    df = handmade_rows()
    df["ts"] = df["ts"].dt.tz_localize(None)
    vlog = validate(df)
    assert str(vlog.frame["ts"].dt.tz) == "UTC"
    assert any("no time zone: read as UTC" in w for w in vlog.warnings)
    assert not any("time zone" in w for w in validate(handmade_rows()).warnings)


def test_payments_missing_attempts_and_inconsistent_cards_are_warned() -> None:
    df = handmade_rows()
    clean = validate(df).warnings
    assert not any("no attempt 1" in w or "skip attempt" in w for w in clean)
    df.loc[df["txn_id"] == "t3", "attempt"] = 3  # p2: attempts 1 and 3
    df.loc[df["txn_id"] == "t6", "attempt"] = 4  # p5: only attempt 4
    df.loc[df["txn_id"] == "t1", "network"] = "mastercard"  # c1: visa and mastercard
    warnings = validate(df).warnings
    assert any("1 payment(s) have no attempt 1" in w and "p5" in w for w in warnings)
    assert any("1 payment(s) skip attempt numbers (e.g. p2)" in w for w in warnings)
    assert any("card(s) appear with several network values (e.g. c1)" in w for w in warnings)
    assert len(validate(df).frame) == len(df)  # warned, nothing dropped
    df["advice_code"] = np.where(df["txn_id"] == "t1", "03", None)  # on a Visa approval
    assert any("1 advice code(s) on approvals or on Visa" in w for w in validate(df).warnings)


def test_blank_ids_and_huge_amounts_are_rejected() -> None:
    df = handmade_rows()
    df.loc[df["txn_id"] == "t2", "card_id"] = " "
    df.loc[df["txn_id"] == "t4", "amount"] = 1e300
    problems = _problems(df)
    assert "column 'card_id' has 1 empty id(s)" in problems
    assert "column 'amount' has 1 value(s) above 1e+09" in problems


def test_cli_validate_prints_summary_and_fails_cleanly(sim_dir: Path, tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "issuer_seq.cli", "validate"]
    ok = subprocess.run([*exe, f"data_dir={sim_dir}"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "meets the transaction-log contract" in ok.stdout
    assert '"approval_rate"' in ok.stdout
    bad = handmade_rows().drop(columns=["three_ds"])
    bad.to_parquet(tmp_path / "bad.parquet")
    fail = subprocess.run(
        [*exe, f"path={tmp_path / 'bad.parquet'}"], capture_output=True, text=True
    )
    assert fail.returncode == 2
    assert "missing required column 'three_ds'" in fail.stdout + fail.stderr
    assert "Traceback" not in fail.stdout + fail.stderr
    (tmp_path / "empty.parquet").write_bytes(b"")
    handmade_rows().to_csv(tmp_path / "csv.parquet")  # a CSV under a Parquet name
    for name in ("empty.parquet", "csv.parquet"):
        fail = subprocess.run([*exe, f"path={tmp_path / name}"], capture_output=True, text=True)
        assert fail.returncode == 2, name
        assert "not a readable Parquet file" in fail.stdout + fail.stderr
        assert "Traceback" not in fail.stdout + fail.stderr


# --------------------------------------------------------------------------------------------
# The table of checks: each fires on a log built to break it, in the table's order
# --------------------------------------------------------------------------------------------


def clean_rows() -> pd.DataFrame:
    """The hand-made log with nothing to report: known codes, one issuer per card, sorted."""
    df = handmade_rows()
    df.loc[df["txn_id"] == "t5", ["response_code", "issuer_id"]] = ["05", "i1"]
    return df.sort_values("ts", kind="stable", ignore_index=True)


def _at(txn_id: str, column: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def breaks(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df["txn_id"] == txn_id, column] = value
        return df

    return breaks


def _ts_strings_with(bad: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def breaks(df: pd.DataFrame) -> pd.DataFrame:
        df["ts"] = df["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").astype(object)
        df.loc[2, "ts"] = bad
        return df

    return breaks


#: check name -> (how to break the clean log, a phrase only that check's message has)
BREAKS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    "missing_columns": (lambda df: df.drop(columns=["currency"]), "missing required column"),
    "column_types": (lambda df: df.assign(mcc=5411), "column 'mcc' has type int64"),
    "no_rows": (lambda df: df.iloc[:0], "the log has no rows"),
    "nulls": (_at("t4", "card_id", None), "column 'card_id' has 1 null value(s)"),
    "unparseable_ts": (_ts_strings_with("yesterday"), "1 unparseable timestamp(s): row 2"),
    "non_finite_amounts": (_at("t1", "amount", -np.inf), "1 non-finite value(s)"),
    "negative_amounts": (_at("t1", "amount", -0.01), "1 negative value(s)"),
    "huge_amounts": (_at("t1", "amount", 2e9), "1 value(s) above 1e+09"),
    "blank_ids": (_at("t1", "merchant_id", ""), "column 'merchant_id' has 1 empty id(s)"),
    "propensity": (
        lambda df: df.assign(policy_propensity=[1.0, 0.0, 0.5, 0.5, 0.5, 0.5]),
        "'policy_propensity' has 1 value(s) outside (0, 1]: row 1: 0.0",
    ),
    "routes": (
        lambda df: df.assign(route=["a", "b", None, "a", "a", "a"], route_propensity=1.0),
        "column 'route' has 1 null value(s) (e.g. rows 2)",
    ),
    "attempt_below_1": (_at("t1", "attempt", 0), "'attempt' has 1 value(s) below 1"),
    "domains": (_at("t1", "initiator", "cit"), "outside ['CIT', 'MIT']: ['cit']"),
    "formats": (_at("t1", "currency", "eur"), "not three upper-case letters"),
    "duplicated_txn_ids": (_at("t6", "txn_id", "t5"), "1 duplicated id(s) on 2 rows"),
    "shared_attempt_numbers": (_at("t3", "attempt", 1), "share a (payment_id, attempt) pair"),
    "payments_mixing_cards": (_at("t3", "card_id", "c9"), "mix several card_id values"),
    "payments_mixing_merchants": (_at("t3", "merchant_id", "m9"), "mix several merchant_id"),
    "retries_before_previous": (
        _at("t3", "ts", pd.Timestamp("2026-03-01T10:04:59Z")),
        "1 retries are timed before the previous attempt",
    ),
    "ignored_columns": (lambda df: df.assign(note="x"), "1 extra column(s) ignored: note"),
    "route_without_propensity": (
        lambda df: df.assign(route="a"),
        "column 'route' without 'route_propensity'",
    ),
    "naive_ts": (lambda df: df.assign(ts=df["ts"].dt.tz_localize(None)), "no time zone"),
    "unknown_codes": (_at("t2", "response_code", "Z9"), "response codes this project does not"),
    "unknown_advice_codes": (_at("t2", "advice_code", "99"), "unknown merchant advice code"),
    "stray_advice_codes": (_at("t1", "advice_code", "03"), "advice code(s) on approvals"),
    "payments_without_attempt_1": (_at("t6", "attempt", 2), "payment(s) have no attempt 1"),
    "payments_skipping_attempts": (_at("t3", "attempt", 3), "skip attempt numbers (e.g. p2)"),
    "cards_changing": (_at("t1", "card_type", "credit"), "several card_type values (e.g. c1)"),
    "unsorted": (lambda df: df.iloc[::-1], "rows were not sorted by time"),
}
PROBLEM_CHECKS = [check.name for stage in PROBLEM_STAGES for check in stage]


def test_the_clean_log_passes_every_check_silently() -> None:
    assert validate(clean_rows()).warnings == []


def test_every_check_in_the_table_has_a_log_that_breaks_it() -> None:
    names = [*PROBLEM_CHECKS, *(check.name for check in WARNING_CHECKS)]
    assert len(names) == len(set(names))
    assert set(names) == set(BREAKS)


@pytest.mark.parametrize("name", list(BREAKS))
def test_every_check_fires_on_a_log_built_to_break_it(name: str) -> None:
    breaks, phrase = BREAKS[name]
    broken = breaks(clean_rows())
    if name in PROBLEM_CHECKS:
        with pytest.raises(LogValidationError) as info:
            validate(broken)
        messages = info.value.problems
    else:
        messages = validate(broken).warnings
    assert [m for m in messages if phrase in m], messages


def test_value_problems_come_in_the_order_of_the_table() -> None:
    df = handmade_rows()
    df["ts"] = df["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").astype(object)
    df.loc[0, "ts"] = "yesterday"
    df.loc[5, "ts"] = None
    df.loc[0, "amount"] = -5.0
    df.loc[1, "amount"] = np.inf
    df.loc[4, "amount"] = 1e300
    df.loc[2, "txn_id"] = "t1"
    df.loc[3, "card_id"] = None
    df.loc[4, "issuer_id"] = " "
    df.loc[1, "merchant_id"] = ""
    df.loc[2, "card_id"] = "c9"
    df.loc[5, "payment_id"] = "p4"
    df.loc[4, "network"] = "amex"
    df.loc[3, "card_type"] = "gold"
    df.loc[2, "initiator"] = "x"
    df.loc[5, "mcc"] = "54"
    df.loc[0, "currency"] = "eu"
    df.loc[1, "issuer_country"] = "deu"
    df.loc[1, "merchant_country"] = "D"
    df.loc[2, "response_code"] = "5"
    df["advice_code"] = np.where(df["txn_id"] == "t2", "1", None)
    df.loc[0, "attempt"] = 0
    df["policy_propensity"] = [0.5, 0.0, "x", None, 1.0, 1.5]
    with pytest.raises(LogValidationError) as info:
        validate(df)
    assert info.value.problems == [
        "column 'ts' has 1 null value(s) (e.g. rows 5)",
        "column 'card_id' has 1 null value(s) (e.g. rows 3)",
        "column 'ts' has 1 unparseable timestamp(s): row 0: 'yesterday'",
        "column 'amount' has 1 non-finite value(s): row 1: inf",
        "column 'amount' has 1 negative value(s): row 0: -5.0",
        "column 'amount' has 2 value(s) above 1e+09 (major units; the scorer refuses them too): "
        "row 1: inf; row 4: 1e+300",
        "column 'issuer_id' has 1 empty id(s) (e.g. rows 4)",
        "column 'merchant_id' has 1 empty id(s) (e.g. rows 1)",
        "column 'policy_propensity' has 3 value(s) outside (0, 1]: row 1: 0.0; row 2: 'x'; "
        "row 5: 1.5",
        "column 'attempt' has 1 value(s) below 1: row 0: 0",
        "column 'network' has 1 value(s) outside ['visa', 'mastercard']: ['amex']",
        "column 'card_type' has 1 value(s) outside ['debit', 'credit', 'prepaid']: ['gold']",
        "column 'initiator' has 1 value(s) outside ['CIT', 'MIT']: ['x']",
        "column 'issuer_country' has 1 value(s) that are not two upper-case letters: row 1: 'deu'",
        "column 'merchant_country' has 1 value(s) that are not two upper-case letters: row 1: 'D'",
        "column 'mcc' has 1 value(s) that are not four digits: row 5: '54'",
        "column 'currency' has 1 value(s) that are not three upper-case letters: row 0: 'eu'",
        "column 'response_code' has 1 value(s) that are not two characters, digits or "
        "upper-case letters: row 2: '5'",
        "column 'advice_code' has 1 value(s) that are not two digits: row 1: '1'",
        "column 'txn_id' has 1 duplicated id(s) on 2 rows: row 0: 't1'; row 2: 't1'",
        "2 rows share a (payment_id, attempt) pair: row 4: 'p4'; row 5: 'p4'",
        "2 payment(s) mix several card_id values across their attempts: row 1: 'p2'; "
        "row 2: 'p2'; row 4: 'p4'",
        "1 payment(s) mix several merchant_id values across their attempts: row 1: 'p2'; "
        "row 2: 'p2'",
    ]


def test_warnings_come_in_the_order_of_the_table() -> None:
    df = handmade_rows()
    df["ts"] = df["ts"].dt.tz_localize(None)
    df.loc[df["txn_id"] == "t3", "attempt"] = 3
    df.loc[df["txn_id"] == "t6", "attempt"] = 4
    df.loc[df["txn_id"] == "t1", ["network", "card_type"]] = ["mastercard", "credit"]
    df.loc[df["txn_id"] == "t4", "issuer_id"] = "i9"
    df["advice_code"] = np.select([df["txn_id"] == "t1", df["txn_id"] == "t2"], ["03", "99"], None)
    df["zzz"], df["aaa"] = 0, 1
    assert validate(df).warnings == [
        "2 extra column(s) ignored: zzz, aaa",
        "column 'ts' has no time zone: read as UTC (a log in local time would shift hours, days "
        "and retry gaps)",
        "1 attempt(s) have response codes this project does not know; they are kept as cause "
        "'other': {'Z9': 1}",
        "1 unknown merchant advice code(s) kept: {'99': 1}",
        "2 advice code(s) on approvals or on Visa attempts (merchant advice codes come with "
        "Mastercard declines): kept as given",
        "1 payment(s) have no attempt 1 in the log (their first logged attempt is a retry whose "
        "earlier attempts are missing; e.g. p5)",
        "1 payment(s) skip attempt numbers (e.g. p2)",
        "1 card(s) appear with several network values (e.g. c1)",
        "1 card(s) appear with several card_type values (e.g. c1)",
        "1 card(s) appear with several issuer_id values (e.g. c2)",
        "rows were not sorted by time; sorted by ts (stable)",
    ]


def test_nulls_in_nullable_integer_and_boolean_columns_are_reported_with_the_rest() -> None:
    """Parquet's nullable Int64 / boolean columns: a null is named, never a crash, and the
    log's other problems are still reported beside it (and none is made up by the null)."""
    df = handmade_rows()
    df["attempt"] = pd.array([1, None, 1, 2, 1, 1], dtype="Int64")
    df["three_ds"] = pd.array([True, None, False, True, True, False], dtype="boolean")
    df.loc[0, "amount"] = -1.0
    with pytest.raises(LogValidationError) as err:
        validate(df)
    assert err.value.problems == [
        "column 'attempt' has 1 null value(s) (e.g. rows 1)",
        "column 'three_ds' has 1 null value(s) (e.g. rows 1)",
        "column 'amount' has 1 negative value(s): row 0: -1.0",
    ]


# --------------------------------------------------------------------------------------------
# Routes: the optional `route` and `route_propensity` columns
# --------------------------------------------------------------------------------------------


def routed_rows() -> pd.DataFrame:
    """The clean log sent through two routes, with the logging policy's propensities."""
    df = clean_rows()
    df["route"] = ["eu_domestic", "global_a", "global_a", "eu_domestic", "eu_domestic", "global_a"]
    df["route_propensity"] = [0.9, 0.1, 0.6, 0.9, 0.9, 0.1]
    return df


def test_a_log_with_routes_passes_and_keeps_them() -> None:
    vlog = validate(routed_rows(), routes=["eu_domestic", "global_a", "global_b"])
    assert vlog.warnings == []
    assert list(vlog.frame["route"]) == list(routed_rows()["route"])
    assert vlog.frame["route_propensity"].dtype == np.float64
    assert summarize(vlog)["route_mix"] == {"eu_domestic": 0.5, "global_a": 0.5}
    # with no declared list any names go; without the columns the log is one route
    assert validate(routed_rows().assign(route="x")).warnings == []
    assert "route_mix" not in summarize(validate(clean_rows()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"route": [1, 2, 1, 1, 1, 2]},
            "column 'route' has type int64, expected string: the acquirer connection (route)",
        ),
        (
            {"route_propensity": [0.9, 0.0, 0.6, 0.9, 1.2, 0.1]},
            "column 'route_propensity' has 2 value(s) outside (0, 1]: row 1: 0.0; row 4: 1.2",
        ),
        (
            {"route_propensity": [0.9, None, 0.6, 0.9, 0.9, 0.1]},
            "column 'route_propensity' has 1 null value(s) (e.g. rows 1): in a log with routes "
            "every attempt has one",
        ),
        (
            {"route_propensity": [0.9, "high", 0.6, 0.9, 0.9, 0.1]},
            "column 'route_propensity' has 1 value(s) outside (0, 1]: row 1: 'high'",
        ),
        (
            {"route": ["eu_domestic", " ", "global_a", "eu_domestic", "eu_domestic", "global_a"]},
            "column 'route' has 1 empty route name(s): row 1: ' '",
        ),
        (
            {"route": ["eu_domestic", "acq_x", "acq_x", "eu_domestic", "acq_y", "global_a"]},
            "column 'route' has 3 value(s) outside the declared routes ['eu_domestic', "
            "'global_a']: ['acq_x', 'acq_y']; row 1: 'acq_x'; row 2: 'acq_x'; row 4: 'acq_y'",
        ),
    ],
)
def test_route_problems_name_the_column_and_rows(change: dict[str, list], message: str) -> None:
    df = routed_rows().assign(**change)
    with pytest.raises(LogValidationError) as info:
        validate(df, routes=["eu_domestic", "global_a"])
    assert info.value.problems == [message]


def test_a_route_propensity_needs_a_route() -> None:
    df = clean_rows().assign(route_propensity=0.5)
    with pytest.raises(LogValidationError) as info:
        validate(df)
    assert info.value.problems == [
        "column 'route_propensity' is present without column 'route' (a propensity is the "
        "probability of the route the attempt went through)"
    ]


def test_load_log_takes_the_declared_routes_from_meta_json(tmp_path: Path) -> None:
    routed_rows().to_parquet(tmp_path / "transactions.parquet")
    meta = {"routes": [{"name": "eu_domestic", "region": "EU", "fee": 0.04}]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LogValidationError, match="outside the declared routes"):
        load_log(tmp_path)
    assert len(load_log(tmp_path, routes=["eu_domestic", "global_a"]).frame) == 6
    (tmp_path / "meta.json").write_text(json.dumps({"routes": None}))
    assert len(load_log(tmp_path).frame) == 6
    (tmp_path / "meta.json").write_text(json.dumps({"routes": ["eu_domestic"]}))
    with pytest.raises(IssuerSeqError, match="'routes' must be a list of objects with a 'name'"):
        load_log(tmp_path)
    exe = [sys.executable, "-m", "issuer_seq.cli", "validate", f"data_dir={tmp_path}"]
    (tmp_path / "meta.json").unlink()
    fail = subprocess.run([*exe, "routes=[global_a]"], capture_output=True, text=True)
    assert fail.returncode == 2
    assert "outside the declared routes ['global_a']: ['eu_domestic']" in fail.stdout + fail.stderr
    assert subprocess.run(exe, capture_output=True, text=True).returncode == 0
