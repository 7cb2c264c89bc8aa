"""Catalog files: customers, products, plans and subscriptions as YAML or JSON, read exactly and checked whole.

A file holds one item, a list of items of one kind (``meter catalog put KIND FILE``), or a catalog: a mapping with
any of the sections ``customers``, ``products``, ``plans`` and ``subscriptions`` (``meter catalog load FILE``),
written in that order. Every item is decoded with the same msgspec types the server decodes its bodies with, so a file
that loads here is refused by the server only for what the server alone knows (a missing meter or customer).

YAML is read so that nothing changes on the way: a number with a point is the ``Decimal`` of its text (never a
float: ``0.1`` stays ``0.1``), an integer is an integer only when written in decimal (``017`` or ``0x1F`` stay text
rather than becoming 15 or 31), a timestamp stays the text it was (a date without a time is refused, rather than
taken as midnight of a time zone nobody chose), only ``true`` and ``false`` are booleans (``NO``, Norway's code,
stays text), and a key given twice in one mapping is an error rather than the last one winning.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import yaml

from meter.catalog.billing import Customer, PlanBody, Product, Subscription
from meter.catalog.entitlements import Entitlement, check_entitlements
from meter.catalog.prices import validate_price
from meter.exceptions import InvalidInput

__all__ = ["KINDS", "CatalogFileError", "load_catalog", "load_entitlements", "load_items", "read_yaml"]

#: Each kind's type, in the order a catalog file is written (each refers only to kinds before it).
KINDS: dict[str, type[msgspec.Struct]] = {
    "customers": Customer,
    "products": Product,
    "plans": PlanBody,
    "subscriptions": Subscription,
}


class CatalogFileError(InvalidInput):
    """A catalog file that cannot be written: ``problems`` has one line per problem (item, field, what to fix)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems), code="invalid_catalog")
        self.problems = problems


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps numbers, times and booleans as they were written (see the module doc)."""


_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_SPECIAL = {".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity", ".nan": "NaN"}


def _float(loader: _Loader, node: yaml.ScalarNode) -> Decimal | str:
    text = str(loader.construct_scalar(node))
    try:
        return Decimal(_SPECIAL.get(text.lower(), text.replace("_", "")))
    except InvalidOperation:
        return text


def _int(loader: _Loader, node: yaml.ScalarNode) -> int | str:
    text = str(loader.construct_scalar(node))
    return int(text.replace("_", "")) if _INT.fullmatch(text) else text


def _bool(loader: _Loader, node: yaml.ScalarNode) -> bool | str:
    text = str(loader.construct_scalar(node))
    return _BOOL.get(text, text)


def _text(loader: _Loader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice in one mapping", mark)
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_Loader.add_constructor("tag:yaml.org,2002:float", _float)
_Loader.add_constructor("tag:yaml.org,2002:int", _int)
_Loader.add_constructor("tag:yaml.org,2002:bool", _bool)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _text)
_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)


def read_yaml(data: bytes | str, name: str = "the file") -> Any:
    """The YAML document in ``data``, with numbers, times and booleans as written (see the module doc)."""
    try:
        return yaml.load(data, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise CatalogFileError([f"{name}{where}: not valid YAML: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise CatalogFileError([f"{name}: not valid YAML: {e}"]) from None


def _parse(data: bytes, name: str, yaml_format: bool, catalog: bool) -> Any:
    """YAML as builtins (numbers exact, see above); JSON as ``msgspec.Raw`` items.

    Each JSON item is decoded later with its type from its own text, so JSON numbers never pass through floats either.
    """
    if yaml_format:
        return read_yaml(data, name)
    try:
        if catalog:
            return msgspec.json.decode(data, type=dict[str, msgspec.Raw])
        return msgspec.json.decode(data, type=list[msgspec.Raw] if data.lstrip()[:1] == b"[" else msgspec.Raw)
    except msgspec.ValidationError:
        raise CatalogFileError([f"{name}: a catalog file is a mapping with the sections {', '.join(KINDS)}"]) from None
    except msgspec.DecodeError as e:
        raise CatalogFileError([f"{name}: not valid JSON: {e}"]) from None


def _decode(item: Any, type_: type[msgspec.Struct], where: str) -> msgspec.Struct:
    raw = item if isinstance(item, msgspec.Raw) else msgspec.json.encode(item)
    label, shown = where, item
    if isinstance(item, msgspec.Raw):
        try:
            shown = msgspec.json.decode(item)
        except msgspec.DecodeError:
            shown = None
    if isinstance(shown, dict) and isinstance(shown.get("id"), str):
        label = f"{where} (id {shown['id']!r})"
    try:
        value = msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as e:
        hint = " (write times as RFC 3339 with a zone, such as 2026-11-01T00:00:00Z)" if "datetime" in str(e) else ""
        raise CatalogFileError([f"{label}: {e}{hint}"]) from None
    except msgspec.DecodeError as e:
        raise CatalogFileError([f"{label}: {e}"]) from None
    try:
        for price in _prices(value):
            validate_price(price)
    except InvalidInput as e:
        raise CatalogFileError([f"{label}: {e.message}"]) from None
    return value


def _prices(value: msgspec.Struct) -> list[Any]:
    if isinstance(value, PlanBody):
        return [p for v in value.versions for p in v.prices]
    if isinstance(value, Subscription):
        return list(value.overrides)
    return []


def _items(data: Any, kind: str, where: str) -> list[msgspec.Struct]:
    type_ = KINDS[kind]
    if isinstance(data, msgspec.Raw) and bytes(data).lstrip()[:1] == b"[":
        data = msgspec.json.decode(data, type=list[msgspec.Raw])
    items = data if isinstance(data, list) else [data]
    values, problems = [], []
    for i, item in enumerate(items):
        try:
            values.append(_decode(item, type_, f"{where}[{i}]"))
        except CatalogFileError as e:
            problems += e.problems
    ids: list[str] = [getattr(v, "id", "") for v in values]
    problems += [f"{where}: the id {i!r} is given twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        raise CatalogFileError(problems)
    return values


def load_items(data: bytes, kind: str, name: str = "the file", yaml_format: bool = True) -> list[msgspec.Struct]:
    """Every item of ``kind`` in ``data`` (one item or a list), decoded and checked.

    ``CatalogFileError`` lists every problem found, one line each; nothing should be written then.
    """
    if kind not in KINDS:
        raise CatalogFileError([f"{name}: the kind must be one of {', '.join(KINDS)}; got {kind!r}"])
    return _items(_parse(data, name, yaml_format, catalog=False), kind, f"{name}: {kind}")


def load_catalog(data: bytes, name: str = "the file", yaml_format: bool = True) -> dict[str, list[msgspec.Struct]]:
    """A catalog file's sections, each optional, in the order they are to be written, every item decoded and checked.

    The sections are ``customers``, ``products``, ``plans`` and ``subscriptions``; ``CatalogFileError`` lists every
    problem found, one line each.
    """
    parsed = _parse(data, name, yaml_format, catalog=True)
    if not isinstance(parsed, dict):
        raise CatalogFileError([f"{name}: a catalog file is a mapping with the sections {', '.join(KINDS)}"])
    unknown = sorted(set(parsed) - set(KINDS))
    problems = [f"{name}: unknown section {k!r}; the sections are {', '.join(KINDS)}" for k in unknown]
    sections: dict[str, list[msgspec.Struct]] = {}
    for kind in KINDS:
        if parsed.get(kind) is None:
            continue
        try:
            sections[kind] = _items(parsed[kind], kind, f"{name}: {kind}")
        except CatalogFileError as e:
            problems += e.problems
    if problems:
        raise CatalogFileError(problems)
    return sections


def load_entitlements(data: bytes, name: str = "the file", yaml_format: bool = True) -> list[Entitlement]:
    """A file's list of entitlements (``meter catalog entitlements``), each decoded and checked for its kind's fields.

    What names the tenant's meters and the plan's prices is checked by the catalog when it is written.
    """
    parsed = _parse(data, name, yaml_format, catalog=False)
    if isinstance(parsed, msgspec.Raw) and bytes(parsed).lstrip()[:1] == b"[":
        parsed = msgspec.json.decode(parsed, type=list[msgspec.Raw])
    if not isinstance(parsed, list):
        raise CatalogFileError([f"{name}: an entitlements file is a list of entitlements ({{feature, kind, ...}})"])
    found, problems = [], []
    for i, item in enumerate(parsed):
        try:
            value = _decode(item, Entitlement, f"{name}: entitlements[{i}]")
        except CatalogFileError as e:
            problems += e.problems
        else:
            assert isinstance(value, Entitlement)
            found.append(value)
    if not problems:
        try:
            check_entitlements(found, name, None, None)
        except InvalidInput as e:
            problems.append(e.message)
    if problems:
        raise CatalogFileError(problems)
    return found
