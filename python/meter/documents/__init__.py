"""Invoice documents: the PDF of each finalized invoice and credit note, rendered once and stored with its hash.

- :mod:`meter.documents.render` builds what a document shows from the invoice (or credit note), its customer and the
  tenant's settings (:mod:`meter.catalog.documents`), and renders it with Typst through the ``typst`` package: a
  typesetting engine in one wheel (no browser, no system fonts or libraries), fast (about 10 ms a page), with its
  fonts built in, so that the same document is the same bytes on every machine.
- ``invoice.typ`` is the layout; the tenant's logo, accent colour and footer are its inputs.

The store writes the PDF in the same atomic write as the finalization (or the credit note) it documents
(:mod:`meter.billing.store`), so a finalized invoice's document never changes; ``GET /v1/invoices/{id}/pdf`` and
``meter invoice pdf`` read it back.
"""
