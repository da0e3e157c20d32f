"""The one timestamp parser: what the API, the scorer and the tools accept as `ts`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from issuer_seq.timestamps import epoch_seconds, to_utc

T = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-02T09:30:00Z",
        "2026-03-02T09:30:00",  # naive = UTC, as in the log
        "2026-03-02T10:30:00+01:00",
        T.timestamp(),
        int(T.timestamp()),
        datetime(2026, 3, 2, 9, 30),
        datetime(2026, 3, 2, 4, 30, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_every_accepted_form_is_the_same_instant(value: object) -> None:
    assert to_utc(value) == T
    assert to_utc(value).tzinfo == UTC
    assert epoch_seconds(value) == int(T.timestamp())


def test_epoch_seconds_floors() -> None:
    assert epoch_seconds(1_700_000_000.9) == 1_700_000_000
    assert epoch_seconds("2026-03-02T09:30:00.999Z") == int(T.timestamp())


@pytest.mark.parametrize(
    "value", [True, None, float("nan"), float("inf"), "yesterday", 1.7e12, -1.0, [1, 2]]
)
def test_bad_values_are_rejected_without_echo(value: object) -> None:
    with pytest.raises(ValueError) as err:
        to_utc(value)
    assert "yesterday" not in str(err.value)
