"""Invoice PDFs: written once at finalization (and with each credit note), read back over HTTP and the CLI.

- The text extracted from the PDF (pypdf) holds the seller and buyer, the number, every line with its quantity and
  unit price, the tax by rate, and the totals, exactly as the invoice's JSON says them.
- The document never changes: new settings make the next documents, never one already issued; its SHA-256 is served.
- A rendered page (pypdfium2) is compared with a committed reference image within a tolerance, so that a layout
  change is seen (`METER_UPDATE_REFERENCE=1` writes the reference again, for a change that is meant).
- A draft has no document (409); another tenant's invoice is a 404; markup in a customer's name stays text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pypdf
import pypdfium2
import pytest
from click.testing import CliRunner
from http_server import Server
from meter.billing.invoices import Invoice, InvoiceLine, LineDetail, TaxAmount
from meter.catalog.billing import Customer
from meter.catalog.documents import DocumentSettings
from meter.catalog.tax import TaxId
from meter.catalog.types import Address
from meter.cli import main
from meter.documents.render import Parties, invoice_pdf
from PIL import Image, ImageChops, ImageDraw, ImageStat

#: The README shows it too: the sample invoice's first page.
REFERENCE = Path(__file__).parents[1] / "docs" / "images" / "invoice-sample.png"
#: The mean difference per pixel (0-255) a rendering may have from the reference: a renderer's antialiasing, not a
#: moved block or a changed word (one line of text moved is about 0.3).
TOLERANCE = 0.1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("documents"))
    yield s
    s.stop()


def logo() -> bytes:
    image = Image.new("RGB", (120, 40), "#1F4E79")
    ImageDraw.Draw(image).ellipse((4, 4, 36, 36), fill="#F2A900")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def invoice(server: Server) -> dict[str, Any]:
    """A finalized invoice of tenant acme: a tiered usage line, a flat fee, VAT at 20 %."""
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    c = server.client(key)
    settings = {
        "seller_name": "Acme AI Ltd",
        "seller_address": {"line1": "1 Rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"},
        "seller_email": "billing@acme.example",
        "logo": base64.b64encode(logo()).decode(),
        "footer": "Acme AI Ltd, RCS Paris 123 456 789",
        "payment_terms_days": 14,
    }
    assert c.put("/v1/documents/settings", json=settings).status_code == 200
    assert (
        c.put(
            "/v1/tax-settings", json={"country": "FR", "tax_ids": [{"type": "eu_vat", "value": "FR40303265045"}]}
        ).status_code
        == 200
    )
    vat = {"id": "fr", "name": "VAT", "country": "FR", "percentage": "20", "effective_from": "2026-01-01T00:00:00Z"}
    assert c.post("/v1/tax-rates", json=vat).status_code == 201
    customer = {
        "id": "c1",
        "name": "Globex #set page(fill: red) <b>",
        "currency": "EUR",
        "email": "ap@globex.example",
        "address": {"line1": "5 Quai Voltaire", "city": "Paris", "postal_code": "75007", "country": "FR"},
    }
    assert c.post("/v1/customers", json=customer).status_code == 200
    meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    assert c.post("/v1/meters", json=meter).status_code == 201
    assert c.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    prices = [
        {"id": "base", "currency": "EUR", "model": "flat", "amount": "20", "cadence": "in_advance"},
        {
            "id": "tokens",
            "currency": "EUR",
            "model": "graduated",
            "meter": "tokens",
            "tiers": [{"from": "0", "up_to": "1000", "unit_price": "0.01"}, {"from": "1000", "unit_price": "0.005"}],
        },
    ]
    r = c.post("/v1/plans/pro/versions", json={"effective_from": "2026-01-01T00:00:00Z", "prices": prices})
    assert r.status_code == 201, r.text
    # Last month's usage, billed in arrears by this month's run (within the back-dating window whatever the date).
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": last_month.isoformat()}
    assert c.post("/v1/subscriptions", json=sub).status_code == 200
    events = [
        {"specversion": "1.0", "id": f"e{i}", "source": "gw", "type": "llm", "subject": "c1",
         "time": (this_month - timedelta(hours=12)).isoformat(), "data": {"tokens": 600}}
        for i in range(3)
    ]  # fmt: skip
    assert c.post("/v1/events", json=events).status_code == 200
    [draft] = c.post("/v1/invoices/run", json={"period": f"{this_month:%Y-%m}"}).json()["invoices"]
    assert c.get(f"/v1/invoices/{draft['id']}/pdf").status_code == 409, "a draft has no document"
    final = c.post(f"/v1/invoices/{draft['id']}/finalize")
    assert final.status_code == 200, final.text
    return dict(final.json(), key=key)


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


def test_the_pdf_holds_the_invoice_exactly(server: Server, invoice: dict[str, Any]) -> None:
    c = server.client(invoice["key"])
    r = c.get(f"/v1/invoices/{invoice['id']}/pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"' == f'"{r.headers["x-content-sha256"]}"'
    text = " ".join(pdf_text(r.content).split())
    for expected in [
        invoice["number"],
        "Acme AI Ltd",
        "1 Rue de Rivoli",
        "EU VAT FR40303265045",
        "Globex #set page(fill: red) <b>",  # the customer's markup stays text
        "5 Quai Voltaire",
        "Net 14 days",
        "Acme AI Ltd, RCS Paris 123 456 789",
        f"Subtotal {invoice['subtotal']} EUR",
        f"Total {invoice['total']} EUR",
        f"Amount due {invoice['amount_due']} EUR",
    ]:
        assert expected in text, (expected, text)
    for line in invoice["lines"]:
        assert line["description"] in text and line["amount"] in text
    [tax] = invoice["taxes"]
    assert f"VAT 20 % (FR) on {tax['taxable']} {tax['amount']} EUR" in text
    usage = next(line for line in invoice["lines"] if line.get("meter") == "tokens")
    assert "1,800" in text, "the quantity billed"
    assert (
        "tier 1 (0 to 1,000): 1,000 × 0.01 = 10.00" in text and "tier 2 (1,000 and above): 800 × 0.005 = 4.00" in text
    )
    assert usage["amount"] == "14.00"


def test_the_document_is_written_once(server: Server, invoice: dict[str, Any]) -> None:
    c = server.client(invoice["key"])
    first = c.get(f"/v1/invoices/{invoice['id']}/pdf").content
    assert c.put("/v1/documents/settings", json={"seller_name": "Renamed SAS", "footer": "new"}).status_code == 200
    assert c.get(f"/v1/invoices/{invoice['id']}/pdf").content == first, "an issued document never changes"
    # A credit note issued now has its own document, with the new settings.
    note = c.post(f"/v1/invoices/{invoice['id']}/credit-notes", json={"amount": "5", "reason": "Outage on 12 Oct"})
    assert note.status_code == 201, note.text
    pdf = c.get(f"/v1/credit-notes/{note.json()['number']}/pdf")
    assert pdf.status_code == 200
    text = " ".join(pdf_text(pdf.content).split())
    assert all(
        s in text for s in ("Credit note", note.json()["number"], invoice["number"], "Outage on 12 Oct", "Renamed SAS")
    )
    assert "Total credited 5.00 EUR" in text


def test_the_cli_writes_the_same_bytes(server: Server, invoice: dict[str, Any], tmp_path: Path) -> None:
    env = {"METER_URL": server.url, "METER_API_KEY": invoice["key"]}
    out = tmp_path / "invoice.pdf"
    result = CliRunner().invoke(main, ["invoice", "pdf", invoice["id"], "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    served = server.client(invoice["key"]).get(f"/v1/invoices/{invoice['id']}/pdf").content
    assert out.read_bytes() == served and str(out) in result.output


def test_another_tenant_cannot_read_it(server: Server, invoice: dict[str, Any]) -> None:
    other = server.client(server.tenant_key("globex", ["read", "admin"]))
    assert other.get(f"/v1/invoices/{invoice['id']}/pdf").status_code == 404
    assert other.get("/v1/credit-notes/CN-000001/pdf").status_code == 404


def test_bad_settings_are_refused_whole(server: Server, invoice: dict[str, Any]) -> None:
    c = server.client(invoice["key"])
    before = c.get("/v1/documents/settings").json()
    for bad in (
        {"accent_color": "red"},
        {"logo": base64.b64encode(b"not an image").decode()},
        {"payment_terms_days": -1},
    ):
        r = c.put("/v1/documents/settings", json=bad)
        assert r.status_code == 400 and r.json()["code"] == "invalid_catalog", r.text
    assert c.get("/v1/documents/settings").json() == before


def sample_invoice() -> tuple[Invoice, Parties]:
    """A fixed invoice and its parties: the same PDF bytes on every machine (the README's sample is its page)."""
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    tiers = [
        LineDetail(component="usage", units=D(1_000_000), unit_price=D("0.00002"), subtotal=D("20.00"), tier=1,
                   tier_from=D(0), tier_to=D(1_000_000)),
        LineDetail(component="usage", units=D(2_450_000), unit_price=D("0.000015"), subtotal=D("36.75"), tier=2,
                   tier_from=D(1_000_000)),
    ]  # fmt: skip
    lines = [
        InvoiceLine(kind="fee", description="Pro plan", amount=D("49.00"), period_start=start, period_end=end,
                    quantity=D(1), details=[LineDetail(component="fee", units=D(1), unit_price=D(49), subtotal=D(49))]),
        InvoiceLine(kind="usage", description="LLM tokens (gpt-large)", amount=D("56.75"), period_start=start,
                    period_end=end, meter="tokens", quantity=D(3_450_000), details=tiers),
    ]  # fmt: skip
    vat = TaxAmount(rate="fr", name="VAT", country="FR", percentage=D(20), inclusive=False, taxable=D("105.75"),
                    amount=D("21.15"))  # fmt: skip
    invoice = Invoice(
        id="s1-20261101", tenant="acme", customer="c1", subscription="s1", currency="EUR", reason="cycle",
        period_start=start, period_end=end, issued_at=end, lines=lines, subtotal=D("105.75"), total=D("126.90"),
        status="open", number="INV-000042", finalized_at=datetime(2026, 12, 1, 6, tzinfo=UTC), tax=D("21.15"),
        taxes=[vat], amount_due=D("126.90"), credit_applied=D("0.00"),
    )  # fmt: skip
    customer = Customer(
        id="c1", name="Globex Corporation", currency="EUR", email="ap@globex.example",
        address=Address(line1="5 Quai Voltaire", city="Paris", postal_code="75007", country="FR"),
        tax_ids=[TaxId(type="eu_vat", value="FR83404833048")],
    )  # fmt: skip
    settings = DocumentSettings(
        seller_name="Acme AI SAS", seller_email="billing@acme.example", logo=logo(),
        seller_address=Address(line1="1 Rue de Rivoli", city="Paris", postal_code="75001", country="FR"),
        footer="Acme AI SAS, RCS Paris 123 456 789 · IBAN FR76 3000 6000 0112 3456 7890 189",
    )  # fmt: skip
    return invoice, Parties(settings, [TaxId(type="eu_vat", value="FR40303265045")], customer)


def test_a_rendered_page_matches_the_reference() -> None:
    pdf = invoice_pdf(*sample_invoice())
    assert pdf == invoice_pdf(*sample_invoice()), "the same invoice is the same bytes"
    document = pypdfium2.PdfDocument(pdf)
    try:
        page = document[0].render(scale=1.5).to_pil().convert("RGB")
    finally:
        document.close()
    if os.environ.get("METER_UPDATE_REFERENCE") == "1" or not REFERENCE.exists():
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        page.save(REFERENCE, optimize=True)
        pytest.skip(f"wrote {REFERENCE}: commit it")
    reference = Image.open(REFERENCE).convert("RGB")
    assert page.size == reference.size
    difference = ImageStat.Stat(ImageChops.difference(page, reference).convert("L")).mean[0]
    assert difference <= TOLERANCE, f"the page differs from {REFERENCE} by {difference:.3f} per pixel"
