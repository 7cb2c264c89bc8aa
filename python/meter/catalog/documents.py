"""The tenant's invoice document settings: who the seller is on its PDFs, and how they look.

:class:`DocumentSettings` is one item per tenant, replaced whole (``PUT /v1/documents/settings``); a tenant that never
set it has :data:`DEFAULT`. A finalized invoice's PDF is rendered once, at finalization, with the settings of that
moment (:mod:`meter.documents`): changing them later changes the next documents, never one already issued.

- ``seller_name``, ``seller_address``, ``seller_email``: the seller block. The seller's tax ids are its tax settings'
  (``PUT /v1/tax/settings``), so that a reverse-charge note and the seller block never disagree.
- ``logo``: a PNG, JPEG or SVG image, base64 in JSON, at most :data:`MAX_LOGO_BYTES`; printed at the top left.
- ``accent_color``: ``#RRGGBB``, for the title and the table's header rule.
- ``footer``: a line printed at the bottom of every page (a registered office, a bank account).
- ``payment_terms_days``: the due date printed is the finalization's date plus this many days (``Net 30``); ``0``
  means due on receipt.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from meter.catalog.types import Address, Checked, Text, invalid

__all__ = ["DEFAULT", "MAX_LOGO_BYTES", "DocumentSettings", "logo_format"]

#: The largest logo accepted: a logo is embedded in every PDF.
MAX_LOGO_BYTES = 256 * 1024
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
#: Each image format a logo may have, by the bytes it starts with.
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpg"}


def logo_format(logo: bytes) -> str | None:
    """``png``, ``jpg`` or ``svg`` by the image's own bytes; None when it is none of them."""
    for signature, name in _SIGNATURES.items():
        if logo.startswith(signature):
            return name
    head = logo[:512].lstrip().lower()
    return "svg" if head.startswith((b"<svg", b"<?xml")) and b"<svg" in logo[:4096].lower() else None


class DocumentSettings(Checked, forbid_unknown_fields=True):
    seller_name: Text = ""
    seller_address: Address | None = None
    seller_email: Text | None = None
    logo: bytes | None = None
    accent_color: Text = "#1F4E79"
    footer: Text = ""
    payment_terms_days: Annotated[int, msgspec.Meta(ge=0, le=365)] = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        if _COLOR.fullmatch(self.accent_color) is None:
            raise invalid(f"accent_color must be #RRGGBB (six hex digits, say #1F4E79); got {self.accent_color!r}")
        if self.logo is not None:
            if len(self.logo) > MAX_LOGO_BYTES:
                raise invalid(f"logo is {len(self.logo)} bytes; at most {MAX_LOGO_BYTES} are embedded in each PDF")
            if logo_format(self.logo) is None:
                raise invalid("logo must be a PNG, JPEG or SVG image (base64 in JSON)")


DEFAULT = DocumentSettings()
