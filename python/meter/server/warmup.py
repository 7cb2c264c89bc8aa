"""msgspec's decoding information for every struct type, built once, on the starting thread, before any other.

msgspec builds a struct type's decoding information the first time the type is decoded, and caches it on the type.
Built by two threads at once (two requests, or a request and a background job, using a type for the first time
after a start), one thread can read what the other has half built: the server's worker crashed so twice in CI,
each time just after a restart (a segmentation fault in msgspec 0.22.0; the fault dump showed one thread in
msgspec's ``get_class_annotations`` for a struct type while another decoded the same type). Building the
information of every struct type before the server's threads start leaves nothing to build concurrently.
"""

from __future__ import annotations

import msgspec

__all__ = ["build_decoding_info"]


def build_decoding_info() -> int:
    """Builds msgspec's decoding information of every struct type loaded so far; how many types."""
    seen: set[type[msgspec.Struct]] = set()
    pending = list(msgspec.Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.add(cls)
            pending.extend(cls.__subclasses__())
    for cls in seen:
        try:
            msgspec.json.Decoder(cls)
        except (TypeError, ValueError, NameError):  # a base or generic struct that is never decoded as it is
            continue
    return len(seen)
