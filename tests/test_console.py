"""The web console over HTTP: signing in, the session cookie, CSRF, the security headers, tenant isolation, pages.

What a browser does is in ``test_console_browser.py``; here every request is made by hand, so that each refusal is
seen exactly (a form without its token, a session of another tenant, a key in the wrong place).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from http_server import Server

CONSOLE = "/console"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("console"))
    yield s
    s.stop()


def billed_tenant(server: Server, tenant: str, customers: int = 3) -> dict[str, Any]:
    """A tenant with customers, one subscription and one draft invoice; its admin key and the draft."""
    key = server.tenant_key(tenant, ["ingest", "read", "admin"])
    c = server.client(key)
    for i in range(customers):
        body = {"id": f"{tenant}-c{i}", "name": f"{tenant.title()} customer {i}", "currency": "EUR"}
        assert c.post("/v1/customers", json=body | {"email": f"ap{i}@{tenant}.example"}).status_code == 200
    assert c.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    meter = {"slug": "calls", "event_type": "api", "aggregation": "count"}
    assert c.post("/v1/meters", json=meter).status_code == 201
    prices = [
        {"id": "base", "currency": "EUR", "model": "flat", "amount": "20", "cadence": "in_advance"},
        {"id": "calls", "currency": "EUR", "model": "per_unit", "meter": "calls", "unit_price": "0.5"},
    ]
    assert (
        c.post("/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": prices}).status_code
        == 201
    )
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (this_month - timedelta(days=1)).replace(day=1)
    sub = {"id": f"{tenant}-s", "customer": f"{tenant}-c0", "plan": "pro", "version": 1, "start": start.isoformat()}
    assert c.post("/v1/subscriptions", json=sub).status_code == 200
    calls = [
        {"specversion": "1.0", "id": f"call-{i}", "source": "gw", "type": "api", "subject": f"{tenant}-c0",
         "time": (this_month - timedelta(hours=3 + i)).isoformat()}
        for i in range(5)
    ]  # fmt: skip
    assert c.post("/v1/events", json=calls).status_code == 200
    [draft] = c.post("/v1/invoices/run", json={"period": f"{this_month:%Y-%m}"}).json()["invoices"]
    return {"key": key, "draft": draft}


@pytest.fixture(scope="module")
def acme(server: Server) -> dict[str, Any]:
    return billed_tenant(server, "acme")


@pytest.fixture(scope="module")
def globex(server: Server) -> dict[str, Any]:
    return billed_tenant(server, "globex")


_clients: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def browser_like(server: Server) -> httpx.Client:
    """A client that keeps cookies, as a browser does; closed after the test."""
    client = httpx.Client(base_url=server.url, timeout=30)
    _clients.append(client)
    return client


def signed_in(server: Server, key: str) -> httpx.Client:
    """A client whose cookies hold a console session of ``key`` (the sign-in form filled in as a browser does)."""
    client = browser_like(server)
    form = client.get(f"{CONSOLE}/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf, form.text
    done = client.post(f"{CONSOLE}/sign-in", data={"csrf": csrf.group(1), "key": key})
    assert done.status_code == 303 and done.headers["location"] == f"{CONSOLE}/customers", done.text
    return client


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_signing_in_sets_a_strict_http_only_cookie_and_no_key_in_any_url(server: Server, acme: dict[str, Any]) -> None:
    client = browser_like(server)
    assert client.get(f"{CONSOLE}/customers").headers["location"] == f"{CONSOLE}/sign-in", "signed out: sign in"
    form = client.get(f"{CONSOLE}/sign-in")
    done = client.post(f"{CONSOLE}/sign-in", data={"csrf": csrf_of(form), "key": acme["key"]})
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie, "plain HTTP here; Secure when served over TLS"
    assert acme["key"] not in cookie and acme["key"] not in done.headers.get("location", "")
    page = client.get(f"{CONSOLE}/customers")
    assert page.status_code == 200 and "Acme customer 2" in page.text and acme["key"] not in page.text


def test_a_bad_key_or_a_missing_token_is_refused(server: Server, acme: dict[str, Any]) -> None:
    client = browser_like(server)
    form = client.get(f"{CONSOLE}/sign-in")
    assert client.post(f"{CONSOLE}/sign-in", data={"csrf": csrf_of(form), "key": "mk_live_nope"}).status_code == 401
    assert client.post(f"{CONSOLE}/sign-in", data={"key": acme["key"]}).status_code == 403, "no sign-in token"
    ingest_only = server.tenant_key("acme", ["ingest"])
    assert client.post(f"{CONSOLE}/sign-in", data={"csrf": csrf_of(form), "key": ingest_only}).status_code == 401


def test_every_page_has_a_policy_without_inline_scripts(server: Server, acme: dict[str, Any]) -> None:
    client = signed_in(server, acme["key"])
    for path in ("/customers", "/customers/acme-c0", "/invoices", f"/invoices/{acme['draft']['id']}", "/sign-in"):
        page = client.get(CONSOLE + path)
        assert page.status_code == 200, (path, page.text)
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text and re.search(r"<[^>]+\son[a-z]+=", page.text) is None, "no inline script"
    assert client.get(f"{CONSOLE}/static/console.js").headers["content-type"].startswith("text/javascript")


def test_a_form_without_its_csrf_token_changes_nothing(server: Server, acme: dict[str, Any]) -> None:
    client = signed_in(server, acme["key"])
    draft = acme["draft"]["id"]
    refused = client.post(f"{CONSOLE}/invoices/{draft}/finalize", data={})
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = client.post(f"{CONSOLE}/invoices/{draft}/finalize", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    assert server.client(acme["key"]).get(f"/v1/invoices/{draft}").json()["status"] == "draft"


def test_a_tenant_never_sees_another_tenants_pages(
    server: Server, acme: dict[str, Any], globex: dict[str, Any]
) -> None:
    client = signed_in(server, globex["key"])
    assert "Acme" not in client.get(f"{CONSOLE}/customers").text
    assert "Acme" not in client.get(f"{CONSOLE}/customers", params={"q": "acme"}).text
    assert client.get(f"{CONSOLE}/customers/acme-c0").status_code == 404
    assert client.get(f"{CONSOLE}/invoices/{acme['draft']['id']}").status_code == 404
    assert acme["draft"]["id"] not in client.get(f"{CONSOLE}/invoices").text
    page = client.get(f"{CONSOLE}/invoices/{globex['draft']['id']}")
    # Globex's own session and token cannot act on Acme's invoice either.
    assert (
        client.post(f"{CONSOLE}/invoices/{acme['draft']['id']}/finalize", data={"csrf": csrf_of(page)}).status_code
        == 404
    )


def test_revoking_the_key_ends_its_session(server: Server, acme: dict[str, Any]) -> None:
    key = server.tenant_key("acme", ["read"])
    client = signed_in(server, key)
    assert client.get(f"{CONSOLE}/customers").status_code == 200
    admin = server.client(acme["key"])
    key_id = next(k["id"] for k in admin.get("/v1/keys").json() if k["display"] == key[:12])
    assert admin.delete(f"/v1/keys/{key_id}").status_code in (200, 204)
    assert client.get(f"{CONSOLE}/customers").headers["location"] == f"{CONSOLE}/sign-in"


def test_a_read_key_cannot_act(server: Server, acme: dict[str, Any]) -> None:
    client = signed_in(server, server.tenant_key("acme", ["read"]))
    page = client.get(f"{CONSOLE}/invoices/{acme['draft']['id']}")
    assert 'id="finalize"' not in page.text, "no action offered"
    refused = client.post(f"{CONSOLE}/invoices/{acme['draft']['id']}/finalize", data={"csrf": csrf_of(page)})
    assert refused.status_code == 403 and "admin" in refused.text


def test_finalize_credit_and_pdf_from_the_invoice_page(server: Server, acme: dict[str, Any]) -> None:
    client = signed_in(server, acme["key"])
    path = f"{CONSOLE}/invoices/{acme['draft']['id']}"
    done = client.post(f"{path}/finalize", data={"csrf": csrf_of(client.get(path))})
    assert done.status_code == 303 and done.headers["location"].endswith("?done=finalized")
    page = client.get(done.headers["location"])
    invoice = server.client(acme["key"]).get(f"/v1/invoices/{acme['draft']['id']}").json()
    assert invoice["status"] == "open" and invoice["number"] in page.text and "was finalized" in page.text
    pdf = client.get(f"{path}/pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content == server.client(acme["key"]).get(f"/v1/invoices/{acme['draft']['id']}/pdf").content
    bad = client.post(f"{path}/credit", data={"csrf": csrf_of(page), "amount": "ten", "reason": "x"})
    assert bad.status_code == 400 and "decimal" in bad.text
    credited = client.post(f"{path}/credit", data={"csrf": csrf_of(page), "amount": "5", "reason": "outage"})
    assert credited.status_code == 303
    assert "CN-" in client.get(credited.headers["location"]).text


def test_customers_are_searched_and_paged(server: Server) -> None:
    key = server.tenant_key("initech", ["read", "admin"])
    c = server.client(key)
    for i in range(120):
        body = {"id": f"i{i:03d}", "name": f"Initech {i:03d}", "currency": "USD"}
        assert c.post("/v1/customers", json=body).status_code == 200
    client = signed_in(server, key)
    first = client.get(f"{CONSOLE}/customers")
    assert "120 of 120 customers" in first.text and "page 1 of 3" in first.text and "Initech 049" in first.text
    assert "Initech 050" not in first.text and 'rel="next"' in first.text
    found = client.get(f"{CONSOLE}/customers", params={"q": "initech 11"})
    assert "10 of 120 customers" in found.text
    escaped = client.get(f"{CONSOLE}/customers", params={"q": "<script>alert(1)</script>"})
    assert "<script>alert(1)</script>" not in escaped.text and "&lt;script&gt;" in escaped.text


def usage_tenant(server: Server) -> tuple[str, dict[str, Any]]:
    """A tenant with a meter grouped by model and events over the last three days; its key and the usage query."""
    key = server.tenant_key("umbrella", ["ingest", "read", "admin"])
    c = server.client(key)
    meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens",
             "group_by": {"model": "$.model"}}  # fmt: skip
    assert c.post("/v1/meters", json=meter).status_code in (201, 409), "made here, or by an earlier test"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    events = [
        {"specversion": "1.0", "id": f"u{i}", "source": "gw", "type": "llm", "subject": f"cust-{i % 3}",
         "time": (now - timedelta(hours=7 * i)).isoformat(), "data": {"tokens": f"{i}.25", "model": ["a", "b"][i % 2]}}
        for i in range(10)
    ]  # fmt: skip
    assert c.post("/v1/events", json=events).status_code == 200
    today = now.date()
    query = {"meter": "tokens", "from": (today - timedelta(days=3)).isoformat(), "to": today.isoformat(),
             "window": "day", "group_by": "model", "tz": "UTC"}  # fmt: skip
    return key, query


def api_usage(server: Server, key: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    start = datetime.fromisoformat(query["from"]).replace(tzinfo=UTC)
    end = datetime.fromisoformat(query["to"]).replace(tzinfo=UTC) + timedelta(days=1)
    params = {"from": start.isoformat(), "to": end.isoformat(), "window_size": query["window"],
              "group_by": query["group_by"]}  # fmt: skip
    answer = server.client(key).get(f"/v1/meters/{query['meter']}/usage", params=params)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["data"]
    return rows


def chart_labels(svg: str) -> list[str]:
    """The exact values a chart's bars say (pygal writes each point's label in a <desc class="label">)."""
    return re.findall(r'<desc class="label">([^<]*)</desc>', svg)


def test_the_usage_explorer_shows_what_the_api_answers(server: Server) -> None:
    key, query = usage_tenant(server)
    expected = api_usage(server, key, query)
    assert expected, "usage to show"
    client = signed_in(server, key)
    page = client.get(f"{CONSOLE}/usage", params=query)
    assert page.status_code == 200, page.text
    table = re.findall(r'<td class="num">([^<]*)</td><td class="num">(\d+)</td>', page.text)
    assert table == [(row["value"], str(row["events"])) for row in expected], "the table is the API's rows"
    chart_src = re.search(r'<img src="([^"]+)" id="chart"', page.text)
    assert chart_src
    svg = client.get(chart_src.group(1).replace("&amp;", "&"))
    assert svg.headers["content-type"] == "image/svg+xml" and "script-src" not in svg.headers["content-security-policy"]
    assert sorted(chart_labels(svg.text)) == sorted(row["value"] for row in expected), "the chart says the same values"
    csv_link = re.search(r'<a href="([^"]+)" id="csv"', page.text)
    assert csv_link
    csv = client.get(csv_link.group(1).replace("&amp;", "&"))
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.count("\n") == len(expected) + 1
    for bad in ({"tz": "Mars/Olympus"}, {"window": "fortnight"}, {"from": "yesterday"}, {"filter": "model"}):
        refused = client.get(f"{CONSOLE}/usage", params=query | bad)
        assert refused.status_code == 400 and "<h1>400</h1>" in refused.text, refused.text


def test_the_revenue_page_shows_the_reports_of_the_api(server: Server) -> None:
    tenant = billed_tenant(server, "hooli")
    api = server.client(tenant["key"])
    assert api.post(f"/v1/invoices/{tenant['draft']['id']}/finalize").status_code == 200
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_day = this_month - timedelta(days=1)
    assert api.post("/v1/revenue/recognize", params={"through": f"{last_day:%Y-%m-%d}"}).status_code == 200
    months = {"from": f"{last_day:%Y-%m}", "to": f"{this_month + timedelta(days=40):%Y-%m}"}
    client = signed_in(server, tenant["key"])
    page = client.get(f"{CONSOLE}/revenue", params=months)
    assert page.status_code == 200, page.text
    waterfall = api.get("/v1/revenue/waterfall", params=months).json()["rows"]
    deferred = api.get("/v1/revenue/deferred", params=months).json()
    mrr = api.get("/v1/revenue/mrr", params=months).json()["months"]
    for rows, key, table in (
        (waterfall, "amount", "waterfall"),
        (deferred, "closing", "deferred"),
        (mrr, "closing", "mrr"),
    ):
        section = page.text.split(f'<table id="{table}">')[1].split("</table>")[0]
        cells = re.findall(r'<td class="num">([^<]*)</td>', section)
        shown = cells if table == "waterfall" else cells[6::7] if table == "deferred" else cells[6::8]
        assert shown == [row[key] for row in rows], (table, shown, rows)
        svg = client.get(f"{CONSOLE}/revenue/{table}.svg", params=months)
        assert svg.headers["content-type"] == "image/svg+xml"
        assert sorted(chart_labels(svg.text)) == sorted(f"{row[key]} {row['currency']}" for row in rows)
    assert sum(1 for row in mrr if row["closing"] != "0.00") >= 1, "an MRR to see"
    assert client.get(f"{CONSOLE}/revenue/nothing.svg").status_code == 404


def test_a_usage_line_links_to_the_events_behind_it(server: Server, acme: dict[str, Any]) -> None:
    client = signed_in(server, acme["key"])
    draft = acme["draft"]
    line = next(n for n, line in enumerate(draft["lines"], 1) if line.get("meter") == "calls")
    page = client.get(f"{CONSOLE}/invoices/{draft['id']}")
    link = f"{CONSOLE}/invoices/{draft['id']}/lines/{line}/events.csv"
    assert f'href="{link}"' in page.text
    csv = client.get(link)
    api = server.client(acme["key"]).get(
        f"/v1/invoices/{draft['id']}/lines/{line}/events", headers={"accept": "text/csv"}, params={"limit": 1000}
    )
    assert csv.status_code == 200 and csv.text == api.text and csv.text.count("call-") == 5


def test_the_usage_explorer_shows_one_customer(server: Server) -> None:
    key, query = usage_tenant(server)
    start = datetime.fromisoformat(query["from"]).replace(tzinfo=UTC)
    end = datetime.fromisoformat(query["to"]).replace(tzinfo=UTC) + timedelta(days=1)
    params = {"from": start.isoformat(), "to": end.isoformat(), "window_size": "day", "subject": "cust-1"}
    expected = server.client(key).get("/v1/meters/tokens/usage", params=params).json()["data"]
    client = signed_in(server, key)
    page = client.get(f"{CONSOLE}/usage", params={**query, "group_by": "", "customer": "cust-1"})
    table = re.findall(r'<td class="num">([^<]*)</td><td class="num">(\d+)</td>', page.text)
    assert table == [(row["value"], str(row["events"])) for row in expected] and expected
    customer_page = client.get(f"{CONSOLE}/customers/cust-1")
    assert customer_page.status_code == 404, "usage without a catalog customer: the explorer still shows it"


def test_signing_out_clears_the_session(server: Server, acme: dict[str, Any]) -> None:
    client = signed_in(server, acme["key"])
    page = client.get(f"{CONSOLE}/customers")
    assert client.post(f"{CONSOLE}/sign-out", data={}).status_code == 403, "sign-out is a form with its token too"
    done = client.post(f"{CONSOLE}/sign-out", data={"csrf": csrf_of(page)})
    assert done.status_code == 303 and "Max-Age=0" in done.headers["set-cookie"]
    assert client.get(f"{CONSOLE}/customers").headers["location"] == f"{CONSOLE}/sign-in"


def test_behind_a_tls_proxy_the_cookie_is_secure(server: Server, acme: dict[str, Any]) -> None:
    client = browser_like(server)
    form = client.get(f"{CONSOLE}/sign-in")
    proxied = {"x-forwarded-proto": "https"}
    done = client.post(f"{CONSOLE}/sign-in", data={"csrf": csrf_of(form), "key": acme["key"]}, headers=proxied)
    assert done.status_code == 303 and "; Secure" in done.headers["set-cookie"]
