"""The input contract: reading a transaction log and validating it.

One row per authorization attempt (see docs/data_contract.md). `load_log` is what every
command calls: it reads Parquet or CSV, checks every rule of the contract, collects *all*
problems before failing (so a user fixes a log in one pass), sorts by time, and returns the
normalised frame with its warnings. Nothing is silently dropped: a row is either kept or the
whole log is rejected with a message that names the column, the count and examples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from issuer_seq.errors import IssuerSeqError
from issuer_seq.rules import MAC_MEANINGS, MAX_AMOUNT, causes, is_known_code

log = logging.getLogger(__name__)

NETWORKS = ("visa", "mastercard")
CARD_TYPES = ("debit", "credit", "prepaid")
INITIATORS = ("CIT", "MIT")
APPROVED_CODE = "00"

# Column kinds. An "id" may be int64 or string (users bring their own tokens).
ID, INT, TIMESTAMP, STR, FLOAT, BOOL = "id", "int", "timestamp", "string", "float", "bool"

#: name -> (kind, nullable, description shown in errors)
COLUMNS: dict[str, tuple[str, bool, str]] = {
    "txn_id": (ID, False, "int64 or string, unique"),
    "payment_id": (ID, False, "int64 or string"),
    "attempt": (INT, False, "integer >= 1"),
    "ts": (TIMESTAMP, False, "timestamp (UTC)"),
    "card_id": (ID, False, "int64 or string"),
    "issuer_id": (ID, False, "int64 or string"),
    "network": (STR, False, "string: visa | mastercard"),
    "card_type": (STR, False, "string: debit | credit | prepaid"),
    "issuer_country": (STR, False, "string, ISO 3166 alpha-2"),
    "merchant_id": (ID, False, "int64 or string"),
    "mcc": (STR, False, "string of 4 digits"),
    "merchant_country": (STR, False, "string, ISO 3166 alpha-2"),
    "amount": (FLOAT, False, "float64, major units, finite and >= 0"),
    "currency": (STR, False, "string, ISO 4217"),
    "initiator": (STR, False, "string: CIT | MIT"),
    "is_recurring": (BOOL, False, "bool"),
    "three_ds": (BOOL, False, "bool"),
    "response_code": (STR, False, "string, ISO 8583 field 39 ('00' = approved)"),
    "advice_code": (STR, True, "string or null (Mastercard merchant advice code)"),
}
REQUIRED_COLUMNS = tuple(COLUMNS)
#: Optional columns kept when present: the logging policy's probability of the retry delay it
#: chose (written by the simulator; a user's log may carry its own), on retry rows.
OPTIONAL_COLUMNS = ("policy_propensity",)
_STRING_COLUMNS = [c for c, (kind, _, _) in COLUMNS.items() if kind == STR]

#: value formats: column -> (regex, what it should look like)
_FORMATS = {
    "issuer_country": (r"[A-Z]{2}", "two upper-case letters"),
    "merchant_country": (r"[A-Z]{2}", "two upper-case letters"),
    "mcc": (r"\d{4}", "four digits"),
    "currency": (r"[A-Z]{3}", "three upper-case letters"),
    "response_code": (r"[0-9A-Z]{2}", "two characters, digits or upper-case letters"),
    "advice_code": (r"\d{2}", "two digits"),
}
_DOMAINS = {"network": NETWORKS, "card_type": CARD_TYPES, "initiator": INITIATORS}


class LogValidationError(IssuerSeqError):
    """The log breaks the contract; `problems` lists every violation found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) with the transaction log:\n{lines}")


@dataclass
class ValidatedLog:
    """A log that meets the contract: sorted by ts (stable), dtypes normalised."""

    frame: pd.DataFrame
    source: str
    warnings: list[str] = field(default_factory=list)


def resolve_log_path(path: str | Path) -> Path:
    """A directory means its `transactions.parquet` (or `.csv`)."""
    p = Path(path)
    if p.is_dir():
        for name in ("transactions.parquet", "transactions.csv"):
            if (p / name).exists():
                return p / name
        raise IssuerSeqError(f"{p}: no transactions.parquet or transactions.csv in this directory")
    if not p.exists():
        raise IssuerSeqError(f"{p}: no such file or directory")
    return p


def read_log(path: str | Path) -> pd.DataFrame:
    """Read a log from Parquet or CSV without changing its types (validation judges them)."""
    p = resolve_log_path(path)
    suffix = p.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".gz"):
        raise IssuerSeqError(f"{p}: unsupported file type {suffix!r} (use .parquet or .csv)")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        # String columns are read as strings so that '05' and '0742' keep their leading zeros.
        return pd.read_csv(
            p, dtype={c: str for c in _STRING_COLUMNS}, keep_default_na=True, na_values=[""]
        )
    except (OSError, ValueError, pa.ArrowException) as exc:  # empty, truncated, not that format
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise IssuerSeqError(f"{p}: not a readable {kind} file ({exc})") from exc


def load_log(path: str | Path) -> ValidatedLog:
    """Read and validate: what every command uses to take in a log."""
    p = resolve_log_path(path)
    return validate(read_log(p), source=str(p))


def _examples(frame: pd.DataFrame, mask: np.ndarray | pd.Series, column: str, n: int = 3) -> str:
    rows = frame.loc[np.asarray(mask)]
    parts = []
    for idx, value in zip(rows.index[:n], rows[column].iloc[:n], strict=False):
        parts.append(f"row {idx}: {value!r}")
    return "; ".join(parts)


def _is_string_like(s: pd.Series) -> bool:
    if pd.api.types.is_string_dtype(s.dtype):
        return True
    if s.dtype.kind == "O":
        values = s.dropna()
        return bool(values.map(lambda v: isinstance(v, str)).all())
    return False


def _check_type(name: str, kind: str, s: pd.Series) -> str | None:
    """Return a message if the column's dtype cannot hold the contract's type."""
    dt = s.dtype
    ok: bool
    if kind == ID:
        ok = pd.api.types.is_integer_dtype(dt) or _is_string_like(s)
    elif kind == INT:
        ok = pd.api.types.is_integer_dtype(dt)
    elif kind == FLOAT:
        ok = pd.api.types.is_float_dtype(dt) or pd.api.types.is_integer_dtype(dt)
    elif kind == BOOL:
        ok = pd.api.types.is_bool_dtype(dt) or (
            dt.kind == "O" and s.dropna().map(lambda v: isinstance(v, bool | np.bool_)).all()
        )
    elif kind == TIMESTAMP:
        ok = pd.api.types.is_datetime64_any_dtype(dt) or _is_string_like(s)
    else:
        ok = _is_string_like(s) or (s.isna().all() and COLUMNS[name][1])
    if ok:
        return None
    return f"column '{name}' has type {dt}, expected {COLUMNS[name][2]}"


def _to_str(s: pd.Series) -> pd.Series:
    """Text columns as pandas' string dtype (missing values stay missing)."""
    return s if isinstance(s.dtype, pd.StringDtype) else s.astype(pd.StringDtype(na_value=np.nan))


def validate(frame: pd.DataFrame, source: str = "<frame>") -> ValidatedLog:
    """Check `frame` against the contract; raise LogValidationError listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    for c in missing:
        problems.append(f"missing required column '{c}' ({COLUMNS[c][2]})")
    present = [c for c in REQUIRED_COLUMNS if c in frame.columns]
    for c in present:
        msg = _check_type(c, COLUMNS[c][0], frame[c])
        if msg:
            problems.append(msg)
    if problems:
        raise LogValidationError(source, problems)
    if len(frame) == 0:
        raise LogValidationError(source, ["the log has no rows"])

    optional = [c for c in OPTIONAL_COLUMNS if c in frame.columns]
    extra = [c for c in frame.columns if c not in COLUMNS and c not in optional]
    df = frame[[*REQUIRED_COLUMNS, *optional]].copy()
    df.index = pd.RangeIndex(len(df))
    if extra:
        warnings.append(f"{len(extra)} extra column(s) ignored: {', '.join(map(str, extra[:10]))}")

    for c, (_, nullable, _) in COLUMNS.items():
        nulls = df[c].isna()
        if not nullable and nulls.any():
            problems.append(
                f"column '{c}' has {int(nulls.sum())} null value(s) (e.g. rows "
                f"{', '.join(map(str, df.index[nulls][:3]))})"
            )

    # Timestamps: tz-aware ones are converted to UTC; naive ones are taken as UTC, as the
    # contract says, and strings are parsed (ISO 8601).
    ts = df["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts.dtype):
        if getattr(ts.dt, "tz", None) is None:
            warnings.append(
                "column 'ts' has no time zone: read as UTC (a log in local time would shift "
                "hours, days and retry gaps)"
            )
            ts = ts.dt.tz_localize("UTC")
        else:
            ts = ts.dt.tz_convert("UTC")
    else:
        parsed = pd.to_datetime(ts, utc=True, errors="coerce", format="ISO8601")
        bad = parsed.isna() & ts.notna()
        if bad.any():
            problems.append(
                f"column 'ts' has {int(bad.sum())} unparseable timestamp(s): "
                + _examples(df, bad, "ts")
            )
        ts = parsed
    df["ts"] = ts.astype("datetime64[us, UTC]")

    amount = df["amount"].astype("float64")
    bad = ~np.isfinite(amount.to_numpy()) & df["amount"].notna().to_numpy()
    if bad.any():
        problems.append(
            f"column 'amount' has {int(bad.sum())} non-finite value(s): "
            + _examples(df, bad, "amount")
        )
    neg = (amount < 0).to_numpy()
    if neg.any():
        problems.append(
            f"column 'amount' has {int(neg.sum())} negative value(s): "
            + _examples(df, neg, "amount")
        )
    huge = (amount > MAX_AMOUNT).to_numpy()
    if huge.any():
        problems.append(
            f"column 'amount' has {int(huge.sum())} value(s) above {MAX_AMOUNT:g} (major units; "
            "the scorer refuses them too): " + _examples(df, huge, "amount")
        )
    for c in (c for c, (kind, _, _) in COLUMNS.items() if kind == ID):
        if not _is_string_like(df[c]):
            continue
        blank = df[c].notna() & (df[c].astype(str).str.strip() == "")
        if blank.any():
            problems.append(
                f"column '{c}' has {int(blank.sum())} empty id(s) (e.g. rows "
                f"{', '.join(map(str, df.index[blank][:3]))})"
            )
    df["amount"] = amount

    if "policy_propensity" in df.columns:
        prop = pd.to_numeric(df["policy_propensity"], errors="coerce")
        bad = (prop.notna() & ~prop.between(0, 1, inclusive="right")) | (
            prop.isna() & df["policy_propensity"].notna()
        )
        if bad.any():
            problems.append(
                f"column 'policy_propensity' has {int(bad.sum())} value(s) outside (0, 1]: "
                + _examples(df, bad.to_numpy(), "policy_propensity")
            )
        df["policy_propensity"] = prop.astype("float64")

    bad_attempt = (df["attempt"] < 1).to_numpy()
    if bad_attempt.any():
        problems.append(
            f"column 'attempt' has {int(bad_attempt.sum())} value(s) below 1: "
            + _examples(df, bad_attempt, "attempt")
        )
    df["attempt"] = df["attempt"].astype("int64")

    for c in _STRING_COLUMNS:
        df[c] = _to_str(df[c])
    for c, allowed in _DOMAINS.items():
        bad = df[c].notna() & ~df[c].isin(allowed)
        if bad.any():
            values = sorted(map(str, df.loc[bad, c].unique()))[:5]
            problems.append(
                f"column '{c}' has {int(bad.sum())} value(s) outside {list(allowed)}: {values}"
            )
    for c, (pattern, what) in _FORMATS.items():
        s = df[c]
        bad = s.notna() & ~s.astype(str).str.fullmatch(pattern)
        if bad.any():
            problems.append(
                f"column '{c}' has {int(bad.sum())} value(s) that are not {what}: "
                + _examples(df, bad.to_numpy(), c)
            )
    for c in ("is_recurring", "three_ds"):
        df[c] = df[c].astype(bool)

    _check_ids(df, problems)
    if problems:
        raise LogValidationError(source, problems)

    codes = df["response_code"]
    unknown = ~codes.isin([c for c in codes.unique() if is_known_code(c)])
    if unknown.any():
        top = df.loc[unknown, "response_code"].value_counts().head(5).to_dict()
        warnings.append(
            f"{int(unknown.sum())} attempt(s) have response codes this project does not know; "
            f"they are kept as cause 'other': {top}"
        )
    mac = df["advice_code"]
    unknown_mac = mac.notna() & ~mac.isin(list(MAC_MEANINGS))
    if unknown_mac.any():
        top = mac[unknown_mac].value_counts().head(5).to_dict()
        warnings.append(f"{int(unknown_mac.sum())} unknown merchant advice code(s) kept: {top}")
    stray = mac.notna() & ((codes == APPROVED_CODE) | (df["network"] != "mastercard"))
    if stray.any():
        warnings.append(
            f"{int(stray.sum())} advice code(s) on approvals or on Visa attempts (merchant "
            "advice codes come with Mastercard declines): kept as given"
        )

    warnings += _payment_warnings(df)
    if not df["ts"].is_monotonic_increasing:
        # Stable: attempts with equal timestamps keep the order the log gave them.
        order = np.argsort(df["ts"].astype("int64").to_numpy(), kind="stable")
        warnings.append("rows were not sorted by time; sorted by ts (stable)")
        df = df.iloc[order].reset_index(drop=True)
    for w in warnings:
        log.warning("%s: %s", source, w)
    return ValidatedLog(frame=df, source=source, warnings=warnings)


def _payment_warnings(df: pd.DataFrame) -> list[str]:
    """What a log may legitimately hold but the user should know: payments whose first
    attempts are missing (begun before the log, or lost), gaps in attempt numbers, and cards
    seen with several networks, card types or issuers."""
    out = []
    by_payment = df.groupby("payment_id", sort=False)["attempt"]
    first, count, last = by_payment.min(), by_payment.size(), by_payment.max()
    late = first > 1
    if late.any():
        out.append(
            f"{int(late.sum())} payment(s) have no attempt 1 in the log (their first logged "
            f"attempt is a retry whose earlier attempts are missing; e.g. "
            f"{', '.join(map(str, late[late].index[:3]))})"
        )
    gaps = (last - first + 1) > count
    if gaps.any():
        out.append(
            f"{int(gaps.sum())} payment(s) skip attempt numbers (e.g. "
            f"{', '.join(map(str, gaps[gaps].index[:3]))})"
        )
    by_card = df.groupby("card_id", sort=False)
    for col in ("network", "card_type", "issuer_id"):
        several = by_card[col].nunique() > 1
        if several.any():
            out.append(
                f"{int(several.sum())} card(s) appear with several {col} values (e.g. "
                f"{', '.join(map(str, several[several].index[:3]))})"
            )
    return out


def _check_ids(df: pd.DataFrame, problems: list[str]) -> None:
    """Uniqueness of attempts and consistency of the attempts of one payment."""
    dup = df["txn_id"].duplicated(keep=False)
    if dup.any():
        problems.append(
            f"column 'txn_id' has {int(df.loc[dup, 'txn_id'].nunique())} duplicated id(s) on "
            f"{int(dup.sum())} rows: " + _examples(df, dup, "txn_id")
        )
    dup_pa = df.duplicated(["payment_id", "attempt"], keep=False)
    if dup_pa.any():
        problems.append(
            f"{int(dup_pa.sum())} rows share a (payment_id, attempt) pair: "
            + _examples(df, dup_pa, "payment_id")
        )
    by_payment = df.groupby("payment_id", sort=False)
    checks: list[tuple[str, Callable[[], pd.Series]]] = [
        ("card_id", lambda: by_payment["card_id"].transform("nunique") > 1),
        ("merchant_id", lambda: by_payment["merchant_id"].transform("nunique") > 1),
    ]
    for col, mask_fn in checks:
        mask = mask_fn()
        if mask.any():
            problems.append(
                f"{int(df.loc[mask, 'payment_id'].nunique())} payment(s) mix several {col} "
                f"values across their attempts: " + _examples(df, mask, "payment_id")
            )
    if not dup_pa.any():
        ordered = df.sort_values(["payment_id", "attempt"], kind="stable")
        earlier = ordered.groupby("payment_id", sort=False)["ts"].diff() < pd.Timedelta(0)
        if earlier.any():
            idx = ordered.index[earlier.to_numpy()]
            problems.append(
                f"{int(earlier.sum())} retries are timed before the previous attempt of their "
                f"payment: " + _examples(df, df.index.isin(idx), "payment_id")
            )


def summarize(vlog: ValidatedLog) -> dict[str, object]:
    """The numbers a user checks first: size, time span, entities, approval and code mix."""
    df = vlog.frame
    approved = df["response_code"] == APPROVED_CODE
    declines = df.loc[~approved]
    cause = pd.Series(causes(declines["response_code"].to_numpy(), declines["network"].to_numpy()))
    return {
        "source": vlog.source,
        "rows": int(len(df)),
        "first_ts": df["ts"].min().isoformat(),
        "last_ts": df["ts"].max().isoformat(),
        "cards": int(df["card_id"].nunique()),
        "issuers": int(df["issuer_id"].nunique()),
        "merchants": int(df["merchant_id"].nunique()),
        "payments": int(df["payment_id"].nunique()),
        "approval_rate": round(float(approved.mean()), 4),
        "retry_share": round(float((df["attempt"] > 1).mean()), 4),
        "mit_share": round(float((df["initiator"] == "MIT").mean()), 4),
        "network_mix": _shares(df["network"]),
        "decline_codes": _shares(declines["response_code"], top=12),
        "decline_causes": _shares(cause),
        "warnings": list(vlog.warnings),
    }


def _shares(s: pd.Series, top: int | None = None) -> dict[str, float]:
    vc = s.value_counts(normalize=True)
    if top is not None:
        vc = vc.head(top)
    return {str(k): round(float(v), 4) for k, v in vc.items()}
