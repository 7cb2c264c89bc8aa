"""Drop-in ingest: the incumbents' own SDKs, pointed at meter, count their events exactly once.

A team changes two things in its code: the SDK's base URL, to ``<meter>/compat/<vendor>``, and its key, to a
meter key with the ``ingest`` scope. Each vendor's module knows its wire contract: the request its SDK sends, the
meter events made of it, the success its SDK expects, and the shape of its errors, so that the SDK neither raises
nor retries wrongly: :mod:`.openmeter`, :mod:`.metronome`, :mod:`.orb`, :mod:`.lago` and :mod:`.stripe`. What they
share (the customer an event names, timestamps, the all-or-nothing ingest) is :mod:`.events`.

Every request is all or nothing: a request refused counted nothing, and each event it names is listed by its
index, so that the same request, fixed, counts each event once. An event sent again with the same key and the same
content is a duplicate, answered as a success; with the same key and other content, a conflict (refused: the first
stands).
"""
