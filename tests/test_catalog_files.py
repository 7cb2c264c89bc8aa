"""Catalog files (YAML or JSON): read exactly, checked whole before anything is written, errors one line each.

The end-to-end tests run ``meter catalog put`` and ``meter catalog load`` against the real server, and load the
README's example catalog file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec
import pytest
from click.testing import CliRunner, Result
from http_server import Server
from meter.catalog.billing import Customer, PlanBody
from meter.catalog.files import CatalogFileError, load_catalog, load_items, read_yaml
from meter.catalog.keys import new_key
from meter.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_catalog() -> str:
    """The YAML block of the README's "Catalog files" section."""
    section = README.read_text().split("### Catalog files", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert found, "the README's Catalog files section has no ```yaml block"
    return found.group(1)


def test_yaml_keeps_numbers_times_and_text_as_written() -> None:
    data = read_yaml(
        "a: 0.1\nb: 12345678901234567.25\nc: 017\nd: 0x1F\ne: 1_000\nf: NO\ng: true\n"
        "h: 2026-11-01T00:00:00Z\ni: 2026-11-01\nj: .nan\nk: 7\n"
    )
    assert data.pop("j").is_nan()  # then refused by the catalog, naming the field
    assert data == {
        "a": Decimal("0.1"),
        "b": Decimal("12345678901234567.25"),
        "c": "017",
        "d": "0x1F",
        "e": 1000,
        "f": "NO",
        "g": True,
        "h": "2026-11-01T00:00:00Z",
        "i": "2026-11-01",
        "k": 7,
    }


def test_a_key_given_twice_is_an_error() -> None:
    with pytest.raises(CatalogFileError, match="prices.yaml line 2 column 1: .*the key 'amount' is given twice"):
        read_yaml("amount: 1\namount: 2\n", "prices.yaml")


def test_every_item_is_checked_and_every_problem_is_one_line() -> None:
    text = b"""
- {id: c1, name: One, currency: EUR}
- {id: c2, name: Two, currency: XYZ}
- {id: c3, name: Three, currency: EUR, timezone: UTC, extra: 1}
- {id: c1, name: Again, currency: EUR}
"""
    with pytest.raises(CatalogFileError) as e:
        load_items(text, "customers", "customers.yaml")
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("customers.yaml: customers[1] (id 'c2'): `currency` is 'XYZ'")
    assert problems[1].startswith("customers.yaml: customers[2] (id 'c3'): Object contains unknown field `extra`")
    assert problems[2] == "customers.yaml: customers: the id 'c1' is given twice"
    assert all("\n" not in p for p in problems)


def test_an_unquoted_date_or_amount_is_exact_or_refused_never_a_traceback() -> None:
    plan = b"""
id: pro
name: Pro
versions:
  - effective_from: 2026-01-01
    prices:
      - {id: base, currency: EUR, model: flat, amount: 0.1}
"""
    with pytest.raises(CatalogFileError) as e:
        load_items(plan, "plans", "plans.yaml")
    [problem] = e.value.problems
    assert problem.startswith("plans.yaml: plans[0] (id 'pro'): ")
    assert "$.versions[0].effective_from" in problem and "2026-11-01T00:00:00Z" in problem
    [loaded] = load_items(plan.replace(b"2026-01-01", b"2026-01-01T00:00:00Z"), "plans")
    assert isinstance(loaded, PlanBody)
    assert loaded.versions[0].prices[0].amount == Decimal("0.1")


def test_prices_are_checked_whole_before_writing() -> None:
    plan = b"""
id: pro
name: Pro
versions:
  - effective_from: 2026-01-01T00:00:00Z
    prices:
      - id: seats
        currency: EUR
        model: graduated
        meter: seats
        tiers: [{from: 0, up_to: 10, unit_price: 1}, {from: 20, unit_price: 1}]
"""
    with pytest.raises(CatalogFileError, match="plans\\[0\\] \\(id 'pro'\\): price 'seats': tier 2 starts at 20"):
        load_items(plan, "plans")


def test_json_files_are_exact_too() -> None:
    [customer] = load_items(b'{"id": "c1", "name": "One", "currency": "EUR"}', "customers", yaml_format=False)
    assert customer == Customer(id="c1", name="One", currency="EUR")
    sections = load_catalog(
        b'{"plans": [{"id": "p", "name": "P", "versions": [{"effective_from": '
        b'"2026-01-01T00:00:00Z", "prices": [{"id": "f", "currency": "EUR", "model": "flat", '
        b'"amount": 12345678901234567.25}]}]}]}',
        yaml_format=False,
    )
    assert sections["plans"][0].versions[0].prices[0].amount == Decimal("12345678901234567.25")
    with pytest.raises(CatalogFileError, match="unknown section 'customer'"):
        load_catalog(b"customer: []\n")


def test_the_readme_example_catalog_is_valid() -> None:
    sections = load_catalog(readme_catalog().encode(), "README.md")
    assert {k: len(v) for k, v in sections.items()} == {"customers": 2, "products": 2, "plans": 1, "subscriptions": 2}
    models = {p.model for v in sections["plans"][0].versions for p in v.prices}
    assert models == {"flat", "per_unit", "graduated", "volume", "matrix"}


# End to end: the CLI against the real server.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("catalog-files") / "data", admin_key=new_key())
    yield s
    s.stop()


def tenant(server: Server, name: str, meters: dict[str, dict[str, str]]) -> tuple[str, httpx.Client]:
    key = server.tenant_key(name, ["read", "admin"])
    client = server.client(key)
    for slug, group_by in meters.items():
        r = client.post(
            "/v1/meters",
            json={
                "slug": slug,
                "event_type": "llm",
                "aggregation": "sum",
                "value_property": f"$.{slug}",
                "group_by": group_by,
            },
        )
        assert r.status_code == 201, r.text
    return key, client


def cli(server: Server, key: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "200"})


def test_an_unquoted_date_leaves_nothing_behind_and_a_rerun_works(server: Server, tmp_path: Path) -> None:
    key, client = tenant(server, "yaml-dates", {"tokens": {}})
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "id: pro\nname: Pro\nversions:\n  - effective_from: 2026-01-01\n    prices:\n"
        "      - {id: tokens, currency: EUR, model: per_unit, meter: tokens, unit_price: 0.002}\n"
    )
    result = cli(server, key, "catalog", "put", "plans", str(plans))
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "nothing was written" in result.output
    assert "plans[0] (id 'pro')" in result.output and "effective_from" in result.output
    assert client.get("/v1/plans").json() == []

    plans.write_text(plans.read_text().replace("2026-01-01", "2026-01-01T00:00:00Z"))
    result = cli(server, key, "catalog", "put", "plans", str(plans))
    assert result.exit_code == 0 and "plan pro: saved with 1 versions" in result.output, result.output
    result = cli(server, key, "catalog", "put", "plans", str(plans))
    assert result.exit_code == 0 and "plan pro: unchanged (1 versions)" in result.output, result.output
    with plans.open("a") as f:
        f.write(
            "  - effective_from: 2026-02-01T00:00:00Z\n    prices:\n"
            "      - {id: tokens, currency: EUR, model: per_unit, meter: tokens, unit_price: 0.003}\n"
        )
    result = cli(server, key, "catalog", "put", "plans", str(plans))
    assert result.exit_code == 0 and "plan pro: 1 versions added" in result.output, result.output
    assert [v["prices"][0]["unit_price"] for v in client.get("/v1/plans/pro").json()["versions"]] == ["0.002", "0.003"]


def test_unquoted_amounts_arrive_exact(server: Server, tmp_path: Path) -> None:
    key, client = tenant(server, "yaml-amounts", {})
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "id: big\nname: Big\nversions:\n  - effective_from: 2026-01-01T00:00:00Z\n    prices:\n"
        "      - {id: fee, currency: EUR, model: flat, amount: 12345678901234567.25}\n"
    )
    result = cli(server, key, "catalog", "put", "plans", str(plans))
    assert result.exit_code == 0, result.output
    assert client.get("/v1/plans/big").json()["versions"][0]["prices"][0]["amount"] == "12345678901234567.25"


def test_a_server_side_refusal_names_the_item_and_says_what_was_saved(server: Server, tmp_path: Path) -> None:
    key, client = tenant(server, "yaml-refs", {})
    subs = tmp_path / "subscriptions.yaml"
    subs.write_text("- {id: s1, customer: nobody, plan: pro, version: 1, start: 2026-01-01T00:00:00Z}\n")
    result = cli(server, key, "catalog", "put", "subscriptions", str(subs))
    assert result.exit_code == 1
    assert "subscription s1: HTTP 400 invalid_catalog" in result.output
    assert "customer 'nobody' does not exist" in result.output


def test_the_readme_example_catalog_loads(server: Server, tmp_path: Path) -> None:
    key, client = tenant(server, "readme-catalog", {"tokens": {"model": "$.model"}, "seats": {}})
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(readme_catalog())
    result = cli(server, key, "catalog", "load", str(catalog))
    assert result.exit_code == 0, result.output
    assert "subscription globex-pro: saved" in result.output
    sub = msgspec.json.decode(client.get("/v1/subscriptions/acme-pro").content)
    assert sub["threshold"] == "500.00" and sub["commits"][0]["amount"] == "1200.00"
    again = cli(server, key, "catalog", "load", str(catalog))
    assert again.exit_code == 0 and "plan pro: unchanged (2 versions)" in again.output, again.output
