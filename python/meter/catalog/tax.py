"""Tax in the catalog: tax rates, the seller's tax settings, and the customer's tax ids (the rules, checked once).

A :class:`TaxRate` is a percentage of one jurisdiction (a country, optionally one region of it, such as ``US``/``NY``),
inclusive (the price includes it, as VAT usually is for consumers) or exclusive (added on top, as US sales tax is),
for the lines of one product tax code or, without one, for every line no rate of its own code covers, in force over
``[effective_from, effective_to)`` (UTC, half-open). A rate is never edited: it is ended (``effective_to``) and a new
one takes over, so that an invoice taxed at it stays explainable by the catalog.

:class:`TaxSettings` say where the seller (the tenant) is established, its ``country`` and ``region``, and which
provider computes tax (``catalog``: these rates; ``stripe``: Stripe Tax). The seller's country is what makes a sale
cross-border: a customer with a tax id (a business) in another country is reverse charged (it accounts for the tax
itself), unless its ``tax_exempt`` says otherwise (:mod:`meter.money.tax`).

Countries are ISO 3166-1 alpha-2 codes (:data:`COUNTRIES`, the list tzdata ships as ``iso3166.tab``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec

from meter.catalog.types import Checked, Id, Percent, Text, Time, invalid

__all__ = [
    "COUNTRIES",
    "EXEMPTIONS",
    "PROVIDERS",
    "TAX_ID_FORMATS",
    "Country",
    "Exemption",
    "TaxEnd",
    "TaxId",
    "TaxProviderName",
    "TaxRate",
    "TaxSettings",
    "check_country",
    "check_rate",
]

#: ISO 3166-1 alpha-2, as tzdata's ``iso3166.tab`` lists them (249 codes).
COUNTRIES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC
    CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD
    GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH
    KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW
    MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC
    SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY
    UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)

#: A country: an ISO 3166-1 alpha-2 code in capitals, such as "DE" or "US" (checked against :data:`COUNTRIES`).
Country = Annotated[
    str,
    # The pattern is the document's; the check (a message that names the code and a fix) is check_country's.
    msgspec.Meta(
        max_length=64,
        extra_json_schema={"pattern": "^[A-Z]{2}$"},
        description='an ISO 3166-1 alpha-2 country code in capitals, such as "DE", "GB" or "US"',
    ),
]
#: How a customer is taxed: ``none`` (as the rules say, reverse charge for a cross-border business included),
#: ``exempt`` (never taxed: a charity, a reseller with a certificate), ``reverse`` (always reverse charged).
Exemption = Literal["none", "exempt", "reverse"]
EXEMPTIONS: tuple[str, ...] = get_args(Exemption)
#: Who computes tax: the catalog's rates, or Stripe Tax (``stripe.tax.Calculation``).
TaxProviderName = Literal["catalog", "stripe"]
PROVIDERS: tuple[str, ...] = get_args(TaxProviderName)


def check_country(value: str, field: str) -> str:
    """``value`` if it is an ISO 3166-1 alpha-2 code; an ``invalid_catalog`` error naming ``field`` otherwise."""
    if value not in COUNTRIES:
        hint = f' (did you mean "{value.upper()}"?)' if value.upper() in COUNTRIES else ""
        raise invalid(
            f'`{field}` is {value!r}, which is not an ISO 3166-1 alpha-2 country code such as "DE", "GB" or "US"{hint}'
        )
    return value


#: The shapes of the tax ids whose format is fixed (as Stripe checks them), by type: an EU VAT number is its
#: country's prefix (EL for Greece, XI for Northern Ireland) and 2 to 13 letters or digits; a UK one GB and 9 or 12
#: digits (or GBGD/GBHA and 3); a US EIN 12-3456789. Other types are taken as given.
TAX_ID_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "eu_vat": (
        re.compile(
            r"(AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI)[0-9A-Z+*]{2,13}"
        ),
        "an EU country prefix and 2 to 13 letters or digits, such as DE123456789",
    ),
    "gb_vat": (re.compile(r"GB([0-9]{9}|[0-9]{12}|(GD|HA)[0-9]{3})"), "GB and 9 or 12 digits, such as GB123456789"),
    "us_ein": (re.compile(r"[0-9]{2}-[0-9]{7}"), "two digits, a dash and seven digits, such as 12-3456789"),
}


class TaxId(Checked, forbid_unknown_fields=True):
    """A customer's tax id: ``type`` as Stripe names them (``eu_vat``, ``gb_vat``, ``us_ein``...), and its value.

    The value of a type in :data:`TAX_ID_FORMATS` must have that type's shape (without spaces or dots).
    """

    type: Text
    value: Text

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.type.strip() or not self.value.strip():
            raise invalid('a tax id needs a `type` (such as "eu_vat") and a `value` (such as "DE123456789")')
        if (shape := TAX_ID_FORMATS.get(self.type)) is not None and not shape[0].fullmatch(self.value):
            raise invalid(f"a tax id of type {self.type!r} is {shape[1]}; got {self.value!r}")


class TaxRate(Checked, forbid_unknown_fields=True):
    """A tax rate of one jurisdiction, for one product tax code (or the lines without a rate of their own code)."""

    id: Id
    #: What the invoice calls it: "VAT", "NY State + NYC sales tax".
    name: Text
    country: Country
    percentage: Percent
    #: From when the rate applies (an invoice finalized at or after it is taxed at it), to when (excluded; none: on).
    effective_from: Time
    effective_to: Time | None = None
    inclusive: bool = False
    #: A region of the country (a US state, a Canadian province), compared with the customer's ``address.region``;
    #: none: the whole country.
    region: Text | None = None
    #: The product tax code it applies to; none: lines whose code has no rate of its own in the jurisdiction.
    tax_code: Id | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_country(self.country, "country")

    def in_force(self, at: datetime) -> bool:
        """Whether the rate applies at ``at``: ``effective_from <= at < effective_to``."""
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)

    def covers(self, country: str, region: str) -> bool:
        """Whether the rate's jurisdiction holds an address in ``country`` and ``region`` (any case)."""
        return self.country == country and (self.region is None or self.region.casefold() == region.casefold())


class TaxEnd(Checked, forbid_unknown_fields=True):
    """When a tax rate stops applying (``effective_to``); now when absent."""

    at: Time | None = None


class TaxSettings(Checked, forbid_unknown_fields=True):
    """The seller's (the tenant's) tax settings: where it is established, and which provider computes tax."""

    country: Country
    region: Text | None = None
    provider: TaxProviderName = "catalog"
    #: For the ``stripe`` provider: whether prices include tax (Stripe's ``tax_behavior``); the catalog's rates say it
    #: per rate (``inclusive``).
    prices_include_tax: bool = False
    #: The seller's own tax ids, which a reverse-charge invoice names beside the customer's.
    tax_ids: list[TaxId] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        check_country(self.country, "country")


def check_rate(rate: TaxRate) -> None:
    """The rules of a rate beyond each field's own: its dates in order, a percentage a tax can be."""
    if rate.effective_to is not None and rate.effective_to <= rate.effective_from:
        raise invalid(
            f"tax rate {rate.id!r}: effective_to ({rate.effective_to.isoformat()}) must be after effective_from "
            f"({rate.effective_from.isoformat()}): [effective_from, effective_to) is half-open"
        )
    if rate.percentage >= 100 and rate.inclusive:
        raise invalid(f"tax rate {rate.id!r}: an inclusive rate must be below 100 % (a price cannot be all tax)")
