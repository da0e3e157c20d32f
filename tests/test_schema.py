"""The input contract (docs/data_contract.md): every rule of it, with clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from issuer_seq.schema import LogValidationError, load_log, summarize, validate
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
