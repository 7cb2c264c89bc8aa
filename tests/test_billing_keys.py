"""Invoice line keys (meter.billing.keys): one text per key, read back as the same key, as stored invoices hold it."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from meter.billing.keys import (
    ChargeKey,
    CommitKey,
    GrantKey,
    charge_key_expr,
    parse_grant_key,
    parse_line_key,
)
from meter.exceptions import InvalidInput

NOV, DEC = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
# Ids as the catalog takes them: no '|' (nor '/' or control characters); anything else, quotes and spaces included.
IDS = st.text(st.characters(blacklist_characters="|/", blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20)
TIMES = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(8999, 12, 31), timezones=st.just(UTC))


def test_the_stored_texts_are_the_ones_invoices_always_held() -> None:
    assert (
        ChargeKey("s1", "base", 1, NOV, DEC).text() == "s1|base|1|2026-11-01T00:00:00+00:00|2026-12-01T00:00:00+00:00"
    )
    assert ChargeKey("s1", "base", 2, NOV, DEC, part=2).text().endswith("+00:00|2")
    assert CommitKey("s1", "commit", "c1").text() == "s1|commit|c1"
    assert CommitKey("s1", "shortfall", "c1").text() == "s1|shortfall|c1"
    assert GrantKey("s1", "g1").text() == "s1|g1"


@given(sub=IDS, price=IDS, version=st.integers(1, 10**6), start=TIMES, end=TIMES, part=st.integers(1, 5))
def test_a_charge_key_round_trips(
    sub: str, price: str, version: int, start: datetime, end: datetime, part: int
) -> None:
    key = ChargeKey(sub, price, version, start, end, part)
    assert parse_line_key(key.text()) == key
    assert parse_line_key(key.text()).text() == key.text()


@given(sub=IDS, commit=IDS, kind=st.sampled_from(["commit", "shortfall"]))
def test_commit_and_grant_keys_round_trip(sub: str, commit: str, kind: str) -> None:
    key = CommitKey(sub, "commit" if kind == "commit" else "shortfall", commit)
    assert parse_line_key(key.text()) == key
    assert parse_grant_key(GrantKey(sub, commit).text()) == GrantKey(sub, commit)


def test_keys_stored_before_they_named_the_cycle_read_as_a_segment() -> None:
    mid = datetime(2026, 11, 16, tzinfo=UTC)
    legacy = f"s1|base|1|{mid.isoformat()}|{DEC.isoformat()}"
    assert parse_line_key(legacy) == ChargeKey("s1", "base", 1, mid, DEC)
    assert parse_line_key(legacy) != ChargeKey("s1", "base", 1, NOV, DEC)


def test_a_part_holding_the_separator_is_refused_rather_than_misread() -> None:
    with pytest.raises(InvalidInput) as e:
        ChargeKey("s|1", "base", 1, NOV, DEC).text()
    assert e.value.code == "invalid_line_key"
    with pytest.raises(InvalidInput):
        GrantKey("s1", "g|1").text()


@pytest.mark.parametrize(
    "text",
    ["", "s1", "s1|base", "s1|base|x|2026-11-01T00:00:00+00:00|2026-12-01T00:00:00+00:00", "s1|base|01|a|b", "s1|c|c1"],
)
def test_what_is_not_a_key_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_line_key(text)


def test_the_columnar_run_writes_the_same_text() -> None:
    keys = [ChargeKey("s1", "base", 1, NOV, DEC), ChargeKey("a b", 'q"x', 12, DEC, datetime(2027, 1, 1, tzinfo=UTC))]
    frame = pl.DataFrame(
        {
            "sub": [k.subscription for k in keys],
            "price": [k.price for k in keys],
            "version": [str(k.version) for k in keys],
            "start": [k.cycle_start.isoformat() for k in keys],
            "end": [k.cycle_end.isoformat() for k in keys],
        }
    )
    texts = frame.select(charge_key_expr(*(pl.col(c) for c in frame.columns))).to_series().to_list()
    assert texts == [k.text() for k in keys]
