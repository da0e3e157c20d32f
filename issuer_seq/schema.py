"""The input contract: reading a transaction log and validating it.

One row per authorization attempt (see docs/data_contract.md). `load_log` is what every
command calls: it reads Parquet or CSV, checks every rule of the contract, collects *all*
problems before failing (so a user fixes a log in one pass), sorts by time, and returns the
normalised frame with its warnings. Nothing is silently dropped: a row is either kept or the
whole log is rejected with a message that names the column, the count and examples.

The rules are a table of named checks (`PROBLEM_STAGES`, then `WARNING_CHECKS`), each a small
function that returns its messages; they run, and report, in the table's order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.typing import DataFrameGroupBy

from issuer_seq.errors import IssuerSeqError
from issuer_seq.rules import APPROVED_CODE, MAC_MEANINGS, MAX_AMOUNT, causes, is_known_code

log = logging.getLogger(__name__)

NETWORKS = ("visa", "mastercard")
CARD_TYPES = ("debit", "credit", "prepaid")
INITIATORS = ("CIT", "MIT")

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
#: Optional columns kept when present: name -> (kind, description shown in errors).
#: `policy_propensity`: the logging policy's probability of the retry delay it chose (written
#: by the simulator; a user's log may carry its own), on retry rows. `route`: the acquirer
#: connection the attempt went through (a log without it is one route); `route_propensity`:
#: the probability with which the logging policy chose that route, on every row.
OPTIONAL: dict[str, tuple[str, str]] = {
    "policy_propensity": (FLOAT, "float in (0, 1], on retry rows"),
    "route": (STR, "string: the acquirer connection (route)"),
    "route_propensity": (FLOAT, "float in (0, 1]: P(the logging policy chose this route)"),
}
OPTIONAL_COLUMNS = tuple(OPTIONAL)
_PROPENSITY_COLUMNS = ("policy_propensity", "route_propensity")
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


def load_log(path: str | Path, routes: Sequence[str] | None = None) -> ValidatedLog:
    """Read and validate: what every command uses to take in a log.

    `routes`: the route names the log may use; by default those a `meta.json` beside the log
    declares (the simulator writes one), else any."""
    p = resolve_log_path(path)
    if routes is None:
        routes = declared_routes(p.parent / "meta.json")
    return validate(read_log(p), source=str(p), routes=routes)


def declared_routes(meta_path: str | Path) -> list[str] | None:
    """Route names a meta.json declares (`routes`: a list of {name, ...}), or None."""
    p = Path(meta_path)
    if not p.is_file():
        return None
    try:
        declared = json.loads(p.read_text()).get("routes")
    except (OSError, ValueError, AttributeError) as exc:
        raise IssuerSeqError(f"{p}: not a readable JSON object ({exc})") from exc
    if declared is None:
        return None
    try:
        return [str(r["name"]) for r in declared]
    except (TypeError, KeyError) as exc:
        raise IssuerSeqError(
            f"{p}: 'routes' must be a list of objects with a 'name' ({exc!r})"
        ) from exc


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


def _to_utc(ts: pd.Series) -> pd.Series:
    """Tz-aware timestamps converted to UTC; naive ones taken as UTC, as the contract says;
    strings parsed as ISO 8601 (one that does not parse becomes NaT: `_unparseable_ts`)."""
    if pd.api.types.is_datetime64_any_dtype(ts.dtype):
        ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    else:
        ts = pd.to_datetime(ts, utc=True, errors="coerce", format="ISO8601")
    return ts.astype("datetime64[us, UTC]")


def _normalise(given: pd.DataFrame) -> pd.DataFrame:
    """The contract's dtypes: ts in UTC, amount float64, text as strings, flags as bool."""
    df = given.copy(deep=False)  # copy-on-write: `given` keeps its values for the messages
    df["ts"] = _to_utc(given["ts"])
    df["amount"] = given["amount"].astype("float64")
    for c in _PROPENSITY_COLUMNS:
        if c in df.columns:
            # Text that is not a number becomes NaN, which `_propensity` reports.
            df[c] = pd.to_numeric(given[c], errors="coerce").astype("float64")
    if "route" in df.columns:
        df["route"] = _to_str(given["route"])
    # Nulls (reported by `_nulls`) stay missing in nullable dtypes, so that every other check
    # still runs and the log's problems are reported at once.
    df["attempt"] = given["attempt"].astype("Int64" if given["attempt"].hasnans else "int64")
    for c in _STRING_COLUMNS:
        df[c] = _to_str(given[c])
    for c in ("is_recurring", "three_ds"):
        df[c] = given[c].astype("boolean" if given[c].hasnans else bool)
    return df


class _Log:
    """A log under validation, as given and, once its columns pass, normalised.

    `frame` is what the user gave (all columns). `given` holds the contract's columns with rows
    numbered 0..n-1, as messages quote them; `df` is `given` normalised. Both are built on
    first use, so no check relies on the columns' types before the column checks pass.
    """

    def __init__(self, frame: pd.DataFrame, routes: Sequence[str] | None = None) -> None:
        self.frame = frame
        self.routes = None if routes is None else [str(r) for r in routes]

    @cached_property
    def given(self) -> pd.DataFrame:
        optional = [c for c in OPTIONAL_COLUMNS if c in self.frame.columns]
        given = self.frame[[*REQUIRED_COLUMNS, *optional]].copy()
        given.index = pd.RangeIndex(len(given))
        return given

    @cached_property
    def df(self) -> pd.DataFrame:
        return _normalise(self.given)

    @cached_property
    def by_payment(self) -> DataFrameGroupBy:
        return self.df.groupby("payment_id", sort=False)

    @cached_property
    def shared_attempts(self) -> pd.Series:
        """Rows whose (payment_id, attempt) pair another row has too."""
        return self.df.duplicated(["payment_id", "attempt"], keep=False)


@dataclass(frozen=True)
class Check:
    """One rule of the contract: `find` returns its messages, none when the log keeps it."""

    name: str
    rule: str
    find: Callable[[_Log], list[str]]


def _flagged(
    frame: pd.DataFrame, mask: np.ndarray | pd.Series, column: str, what: str
) -> list[str]:
    """The message "column 'c' has N <what>: row i: value; ..." when `mask` flags any row."""
    # a missing value (NA, reported by `_nulls`) flags nothing here
    mask = np.asarray(pd.Series(mask).fillna(False), dtype=bool)
    if not mask.any():
        return []
    return [f"column '{column}' has {int(mask.sum())} {what}: " + _examples(frame, mask, column)]


def _first_rows(mask: pd.Series) -> str:
    return ", ".join(map(str, mask.index[mask][:3]))


def _missing_columns(log: _Log) -> list[str]:
    return [
        f"missing required column '{c}' ({COLUMNS[c][2]})"
        for c in REQUIRED_COLUMNS
        if c not in log.frame.columns
    ]


def _column_types(log: _Log) -> list[str]:
    present = [c for c in REQUIRED_COLUMNS if c in log.frame.columns]
    found = [_check_type(c, COLUMNS[c][0], log.frame[c]) for c in present]
    if "route" in log.frame.columns:
        route = log.frame["route"]
        if not (_is_string_like(route) or route.isna().all()):
            found.append(f"column 'route' has type {route.dtype}, expected {OPTIONAL['route'][1]}")
    return [msg for msg in found if msg]


def _no_rows(log: _Log) -> list[str]:
    return ["the log has no rows"] if len(log.frame) == 0 else []


def _nulls(log: _Log) -> list[str]:
    out = []
    for c in (c for c, (_, nullable, _) in COLUMNS.items() if not nullable):
        nulls = log.given[c].isna()
        if nulls.any():
            out.append(
                f"column '{c}' has {int(nulls.sum())} null value(s) (e.g. rows "
                f"{_first_rows(nulls)})"
            )
    return out


def _unparseable_ts(log: _Log) -> list[str]:
    bad = log.df["ts"].isna() & log.given["ts"].notna()
    return _flagged(log.given, bad, "ts", "unparseable timestamp(s)")


def _non_finite_amounts(log: _Log) -> list[str]:
    amount = log.df["amount"]
    bad = ~np.isfinite(amount.to_numpy()) & amount.notna().to_numpy()
    return _flagged(log.given, bad, "amount", "non-finite value(s)")


def _negative_amounts(log: _Log) -> list[str]:
    return _flagged(log.given, log.df["amount"] < 0, "amount", "negative value(s)")


def _huge_amounts(log: _Log) -> list[str]:
    what = f"value(s) above {MAX_AMOUNT:g} (major units; the scorer refuses them too)"
    return _flagged(log.given, log.df["amount"] > MAX_AMOUNT, "amount", what)


def _blank_ids(log: _Log) -> list[str]:
    out = []
    for c in (c for c, (kind, _, _) in COLUMNS.items() if kind == ID):
        ids = log.given[c]
        if not _is_string_like(ids):
            continue
        blank = ids.notna() & (ids.astype(str).str.strip() == "")
        if blank.any():
            out.append(
                f"column '{c}' has {int(blank.sum())} empty id(s) (e.g. rows {_first_rows(blank)})"
            )
    return out


def _propensity(log: _Log) -> list[str]:
    out = []
    for c in (c for c in _PROPENSITY_COLUMNS if c in log.given.columns):
        prop = log.df[c]
        outside = prop.notna() & ~prop.between(0, 1, inclusive="right")
        not_a_number = prop.isna() & log.given[c].notna()
        out += _flagged(log.given, outside | not_a_number, c, "value(s) outside (0, 1]")
    return out


def _routes(log: _Log) -> list[str]:
    """Every attempt of a log with routes names its route, and a propensity where the log has
    them; routes are among those declared (meta.json or the caller), when declared."""
    cols = log.given.columns
    if "route" not in cols:
        if "route_propensity" in cols:
            return [
                "column 'route_propensity' is present without column 'route' (a propensity "
                "is the probability of the route the attempt went through)"
            ]
        return []
    out = []
    route = log.df["route"]
    for c in ("route", "route_propensity"):
        if c in cols and (nulls := log.given[c].isna()).any():
            out.append(
                f"column '{c}' has {int(nulls.sum())} null value(s) (e.g. rows "
                f"{_first_rows(nulls)}): in a log with routes every attempt has one"
            )
    out += _flagged(
        log.given, route.notna() & (route.str.strip() == ""), "route", "empty route name(s)"
    )
    if log.routes is not None:
        unknown = route.notna() & (route.str.strip() != "") & ~route.isin(log.routes)
        if unknown.any():
            shown = sorted(map(str, route[unknown].unique()))[:5]
            out.append(
                f"column 'route' has {int(unknown.sum())} value(s) outside the declared "
                f"routes {log.routes}: {shown}; " + _examples(log.given, unknown, "route")
            )
    return out


def _attempt_below_1(log: _Log) -> list[str]:
    return _flagged(log.given, log.df["attempt"] < 1, "attempt", "value(s) below 1")


def _domains(log: _Log) -> list[str]:
    out = []
    for c, allowed in _DOMAINS.items():
        values = log.df[c]
        bad = values.notna() & ~values.isin(allowed)
        if bad.any():
            shown = sorted(map(str, values[bad].unique()))[:5]
            out.append(
                f"column '{c}' has {int(bad.sum())} value(s) outside {list(allowed)}: {shown}"
            )
    return out


def _formats(log: _Log) -> list[str]:
    out = []
    for c, (pattern, what) in _FORMATS.items():
        values = log.df[c]
        bad = values.notna() & ~values.astype(str).str.fullmatch(pattern)
        out += _flagged(log.df, bad, c, f"value(s) that are not {what}")
    return out


def _duplicated_txn_ids(log: _Log) -> list[str]:
    df = log.df
    dup = df["txn_id"].duplicated(keep=False)
    if not dup.any():
        return []
    return [
        f"column 'txn_id' has {int(df.loc[dup, 'txn_id'].nunique())} duplicated id(s) on "
        f"{int(dup.sum())} rows: " + _examples(df, dup, "txn_id")
    ]


def _shared_attempt_numbers(log: _Log) -> list[str]:
    shared = log.shared_attempts
    if not shared.any():
        return []
    return [
        f"{int(shared.sum())} rows share a (payment_id, attempt) pair: "
        + _examples(log.df, shared, "payment_id")
    ]


def _payments_mixing(column: str) -> Callable[[_Log], list[str]]:
    def find(log: _Log) -> list[str]:
        mixed = log.by_payment[column].transform("nunique") > 1
        if not mixed.any():
            return []
        return [
            f"{int(log.df.loc[mixed, 'payment_id'].nunique())} payment(s) mix several {column} "
            f"values across their attempts: " + _examples(log.df, mixed, "payment_id")
        ]

    return find


def _retries_before_previous(log: _Log) -> list[str]:
    if log.shared_attempts.any():
        return []  # the order of a payment's attempts is not defined (reported above)
    df = log.df[log.df["attempt"].notna()]  # a missing number orders nothing (`_nulls`)
    ordered = df.sort_values(["payment_id", "attempt"], kind="stable")
    earlier = ordered.groupby("payment_id", sort=False)["ts"].diff() < pd.Timedelta(0)
    if not earlier.any():
        return []
    rows = df.index.isin(ordered.index[earlier.to_numpy()])
    return [
        f"{int(earlier.sum())} retries are timed before the previous attempt of their "
        f"payment: " + _examples(df, rows, "payment_id")
    ]


def _ignored_columns(log: _Log) -> list[str]:
    extra = [c for c in log.frame.columns if c not in COLUMNS and c not in OPTIONAL_COLUMNS]
    if not extra:
        return []
    return [f"{len(extra)} extra column(s) ignored: {', '.join(map(str, extra[:10]))}"]


def _route_without_propensity(log: _Log) -> list[str]:
    cols = log.given.columns
    if "route" not in cols or "route_propensity" in cols:
        return []
    return [
        "column 'route' without 'route_propensity': off-policy estimates of routing policies "
        "need the logging policy's probability of each chosen route"
    ]


def _naive_ts(log: _Log) -> list[str]:
    ts = log.given["ts"]
    if not pd.api.types.is_datetime64_any_dtype(ts.dtype) or ts.dt.tz is not None:
        return []
    return [
        "column 'ts' has no time zone: read as UTC (a log in local time would shift "
        "hours, days and retry gaps)"
    ]


def _unknown_codes(log: _Log) -> list[str]:
    codes = log.df["response_code"]
    unknown = ~codes.isin([c for c in codes.unique() if is_known_code(c)])
    if not unknown.any():
        return []
    top = codes[unknown].value_counts().head(5).to_dict()
    return [
        f"{int(unknown.sum())} attempt(s) have response codes this project does not know; "
        f"they are kept as cause 'other': {top}"
    ]


def _unknown_advice_codes(log: _Log) -> list[str]:
    mac = log.df["advice_code"]
    unknown = mac.notna() & ~mac.isin(list(MAC_MEANINGS))
    if not unknown.any():
        return []
    top = mac[unknown].value_counts().head(5).to_dict()
    return [f"{int(unknown.sum())} unknown merchant advice code(s) kept: {top}"]


def _stray_advice_codes(log: _Log) -> list[str]:
    df = log.df
    on_approval = df["response_code"] == APPROVED_CODE
    stray = df["advice_code"].notna() & (on_approval | (df["network"] != "mastercard"))
    if not stray.any():
        return []
    return [
        f"{int(stray.sum())} advice code(s) on approvals or on Visa attempts (merchant "
        "advice codes come with Mastercard declines): kept as given"
    ]


def _payments_without_attempt_1(log: _Log) -> list[str]:
    late = log.by_payment["attempt"].min() > 1
    if not late.any():
        return []
    return [
        f"{int(late.sum())} payment(s) have no attempt 1 in the log (their first logged "
        f"attempt is a retry whose earlier attempts are missing; e.g. "
        f"{', '.join(map(str, late[late].index[:3]))})"
    ]


def _payments_skipping_attempts(log: _Log) -> list[str]:
    attempts = log.by_payment["attempt"]
    gaps = (attempts.max() - attempts.min() + 1) > attempts.size()
    if not gaps.any():
        return []
    return [
        f"{int(gaps.sum())} payment(s) skip attempt numbers (e.g. "
        f"{', '.join(map(str, gaps[gaps].index[:3]))})"
    ]


def _cards_changing(log: _Log) -> list[str]:
    by_card = log.df.groupby("card_id", sort=False)
    out = []
    for col in ("network", "card_type", "issuer_id"):
        several = by_card[col].nunique() > 1
        if several.any():
            out.append(
                f"{int(several.sum())} card(s) appear with several {col} values (e.g. "
                f"{', '.join(map(str, several[several].index[:3]))})"
            )
    return out


def _unsorted(log: _Log) -> list[str]:
    if log.df["ts"].is_monotonic_increasing:
        return []
    return ["rows were not sorted by time; sorted by ts (stable)"]


#: The contract's checks, in the order they run and report. Each stage that finds problems
#: ends validation, because the next relies on what it checks: the columns and their types,
#: then at least one row; the value checks all run, so that one pass shows every problem.
PROBLEM_STAGES: tuple[tuple[Check, ...], ...] = (
    (
        Check("missing_columns", "every required column is present", _missing_columns),
        Check("column_types", "each column's dtype can hold the contract's type", _column_types),
    ),
    (Check("no_rows", "the log has at least one row", _no_rows),),
    (
        Check("nulls", "no nulls outside the nullable columns (advice_code)", _nulls),
        Check("unparseable_ts", "ts strings parse as ISO 8601", _unparseable_ts),
        Check("non_finite_amounts", "amounts are finite", _non_finite_amounts),
        Check("negative_amounts", "amounts are >= 0", _negative_amounts),
        Check("huge_amounts", "amounts are at most MAX_AMOUNT", _huge_amounts),
        Check("blank_ids", "text ids are not blank", _blank_ids),
        Check(
            "propensity",
            "policy_propensity and route_propensity, where present, are in (0, 1]",
            _propensity,
        ),
        Check(
            "routes",
            "route has no nulls or blanks, only declared names; route_propensity needs route",
            _routes,
        ),
        Check("attempt_below_1", "attempt numbers start at 1", _attempt_below_1),
        Check("domains", "network, card_type and initiator are in their sets", _domains),
        Check("formats", "countries, MCCs, currencies and codes are well formed", _formats),
        Check("duplicated_txn_ids", "txn_id is unique", _duplicated_txn_ids),
        Check(
            "shared_attempt_numbers",
            "no two rows share a (payment_id, attempt) pair",
            _shared_attempt_numbers,
        ),
        Check(
            "payments_mixing_cards",
            "a payment's attempts share one card_id",
            _payments_mixing("card_id"),
        ),
        Check(
            "payments_mixing_merchants",
            "a payment's attempts share one merchant_id",
            _payments_mixing("merchant_id"),
        ),
        Check(
            "retries_before_previous",
            "a payment's attempts are in time order",
            _retries_before_previous,
        ),
    ),
)

#: What a log may legitimately hold but its user should know; run, in order, on a valid log.
WARNING_CHECKS: tuple[Check, ...] = (
    Check("ignored_columns", "columns outside the contract are ignored", _ignored_columns),
    Check(
        "route_without_propensity",
        "a log with routes but no route_propensity",
        _route_without_propensity,
    ),
    Check("naive_ts", "timestamps without a time zone are read as UTC", _naive_ts),
    Check("unknown_codes", "response codes outside rules.CODES are cause 'other'", _unknown_codes),
    Check("unknown_advice_codes", "advice codes outside MAC_MEANINGS", _unknown_advice_codes),
    Check(
        "stray_advice_codes",
        "advice codes on approvals or on non-Mastercard attempts",
        _stray_advice_codes,
    ),
    Check(
        "payments_without_attempt_1",
        "payments begun before the log, or whose first attempts were lost",
        _payments_without_attempt_1,
    ),
    Check(
        "payments_skipping_attempts",
        "payments with gaps in their attempt numbers",
        _payments_skipping_attempts,
    ),
    Check(
        "cards_changing", "cards seen with several networks, card types or issuers", _cards_changing
    ),
    Check("unsorted", "rows not in time order are sorted (stable)", _unsorted),
)


def validate(
    frame: pd.DataFrame, source: str = "<frame>", routes: Sequence[str] | None = None
) -> ValidatedLog:
    """Check `frame` against the contract; raise LogValidationError listing every problem.

    `routes`: the route names the log may use (None: any)."""
    checked = _Log(frame, routes)
    for stage in PROBLEM_STAGES:
        problems = [msg for check in stage for msg in check.find(checked)]
        if problems:
            raise LogValidationError(source, problems)
    warnings = [msg for check in WARNING_CHECKS for msg in check.find(checked)]
    df = checked.df
    if not df["ts"].is_monotonic_increasing:
        # Stable: attempts with equal timestamps keep the order the log gave them.
        order = np.argsort(df["ts"].astype("int64").to_numpy(), kind="stable")
        df = df.iloc[order].reset_index(drop=True)
    for w in warnings:
        log.warning("%s: %s", source, w)
    return ValidatedLog(frame=df, source=source, warnings=warnings)


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
        **({"route_mix": _shares(df["route"])} if "route" in df.columns else {}),
        "warnings": list(vlog.warnings),
    }


def _shares(s: pd.Series, top: int | None = None) -> dict[str, float]:
    vc = s.value_counts(normalize=True)
    if top is not None:
        vc = vc.head(top)
    return {str(k): round(float(v), 4) for k, v in vc.items()}
