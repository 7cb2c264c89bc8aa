"""The one way pricing and billing refuse their input: ``InvalidInput`` with a machine-readable code.

Every refusal names what is wrong and what to do (the charge, price or column, the allowed values, what was
received), and carries the code a client branches on (``invalid_price``, ``invalid_charges``, ``unknown_meter``...).
A refusal never leaves anything half done: callers raise before they write.
"""

from __future__ import annotations

from typing import NoReturn

from meter.exceptions import InvalidInput

__all__ = ["fail"]


def fail(message: str, code: str) -> NoReturn:
    """Raises ``InvalidInput(message, code=code)``; typed ``NoReturn`` so that checks read as guards."""
    raise InvalidInput(message, code=code)
