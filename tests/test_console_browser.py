"""The console in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromedriver.

A person's path: sign in with a key, find a customer, open its draft invoice, finalize it (accepting the console's
confirmation), read the number, download the PDF (the bytes the API serves); another tenant's session gets a 404 for
that invoice. And the usage explorer: group by a dimension, and the chart's values are the API's.
With ``METER_UPDATE_SCREENSHOTS=1`` it saves the README's screenshots of the pages it visits.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from http_server import Server
from test_console import CONSOLE, api_usage, billed_tenant, chart_labels, usage_tenant

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver") or shutil.which("chromedriver", path="/usr/bin:/usr/lib/chromium")
SCREENSHOTS = Path(__file__).parents[1] / "docs" / "images"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no Chromium here: `make test` installs Debian's chromium and chromium-driver (apt)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("console-browser"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(15)
    yield driver
    driver.quit()


def screenshot(browser: Any, name: str) -> None:
    if os.environ.get("METER_UPDATE_SCREENSHOTS") == "1":
        browser.save_screenshot(str(SCREENSHOTS / name))


def sign_in(browser: Any, server: Server, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.delete_all_cookies()
    browser.get(f"{server.url}{CONSOLE}/sign-in")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "form.card button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(f"{CONSOLE}/customers"))


def test_a_person_finalizes_an_invoice_and_downloads_its_pdf(browser: Any, server: Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    acme = billed_tenant(server, "acme", customers=12)
    sign_in(browser, server, acme["key"])
    assert "12 of 12 customers" in browser.page_source
    screenshot(browser, "console-customers.png")

    search = browser.find_element(By.ID, "q")
    search.send_keys("customer 0")
    search.submit()
    # Each click waits for the page it opens: the page before has the same links, and they go stale under it.
    WebDriverWait(browser, 30).until(lambda b: "q=customer" in b.current_url)
    browser.find_element(By.LINK_TEXT, "acme-c0").click()
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(f"{CONSOLE}/customers/acme-c0"))
    assert "Acme customer 0" in browser.find_element(By.TAG_NAME, "h1").text

    browser.find_element(By.LINK_TEXT, acme["draft"]["id"]).click()
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(f"{CONSOLE}/invoices/{acme['draft']['id']}"))
    browser.find_element(By.ID, "finalize").click()
    WebDriverWait(browser, 30).until(expected_conditions.alert_is_present()).accept()  # the console asks first
    WebDriverWait(browser, 30).until(lambda b: "was finalized" in b.page_source)
    api = server.client(acme["key"])
    invoice = api.get(f"/v1/invoices/{acme['draft']['id']}").json()
    assert invoice["status"] == "open" and invoice["number"] in browser.find_element(By.TAG_NAME, "h1").text
    screenshot(browser, "console-invoice.png")

    # The PDF link serves the document the API serves, to this session (its cookie) only.
    link = browser.find_element(By.ID, "pdf").get_attribute("href")
    cookie = browser.get_cookie("meter_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with httpx.Client(cookies={"meter_console": cookie["value"]}, timeout=30) as session:
        pdf = session.get(link)
        assert pdf.content == api.get(f"/v1/invoices/{acme['draft']['id']}/pdf").content
        # The same session, without the form's CSRF token, changes nothing.
        assert session.post(link.replace("/pdf", "/void"), data={}).status_code == 403
    assert api.get(f"/v1/invoices/{acme['draft']['id']}").json()["status"] == "open"

    # The revenue page draws its charts (images the browser loads) over the same reports as the API.
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert api.post("/v1/revenue/recognize", params={"through": yesterday.isoformat()}).status_code == 200
    browser.find_element(By.LINK_TEXT, "Revenue").click()
    loaded = (
        "const c = document.getElementById('mrr-chart');"
        " return document.readyState == 'complete' && !!c && c.naturalWidth > 0"
    )
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(loaded))
    screenshot(browser, "console-revenue.png")

    # Another tenant, signed in in the same browser, gets a 404 for Acme's invoice.
    globex = billed_tenant(server, "globex")
    sign_in(browser, server, globex["key"])
    browser.get(f"{server.url}{CONSOLE}/invoices/{acme['draft']['id']}")
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text and invoice["number"] not in browser.page_source


def test_a_person_explores_usage_and_the_chart_says_what_the_api_says(browser: Any, server: Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    key, query = usage_tenant(server)
    expected = api_usage(server, key, query)
    sign_in(browser, server, key)
    browser.find_element(By.LINK_TEXT, "Usage").click()
    browser.get(f"{server.url}{CONSOLE}/usage?{urlencode({k: v for k, v in query.items() if k != 'group_by'})}")
    Select(browser.find_element(By.ID, "group_by")).select_by_value("model")  # applies on change (console.js)
    WebDriverWait(browser, 30).until(lambda b: "group_by=model" in b.current_url)
    loaded = (
        "const c = document.getElementById('chart');"
        " return document.readyState == 'complete' && !!c && c.naturalWidth > 0"
    )
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(loaded))
    chart = browser.find_element(By.ID, "chart")
    screenshot(browser, "console-usage.png")
    cookie = browser.get_cookie("meter_console")
    assert cookie is not None
    with httpx.Client(cookies={"meter_console": cookie["value"]}, timeout=30) as session:
        svg = session.get(chart.get_attribute("src")).text
    assert sorted(chart_labels(svg)) == sorted(row["value"] for row in expected)
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#usage tbody td.num")]
    assert cells[0::2] == [row["value"] for row in expected]
