"""Request ids: 16 bytes, the wall clock first.

Layout (as a UUIDv7 lays out its bits, without the version nibbles): 6 bytes of
milliseconds since 1970, big-endian, then 10 random bytes.

Why time first: request ids key the store's request records (``r/<rid>``) and a
token's requests (``kr/<digest><rid>``). Random ids put every new request on a
random page of the store's B-tree, so a group commit of n requests writes and
fsyncs about n scattered pages; ids that rise with time land on the last few
pages, and an fsync's cost grows with the pages it flushes (benchmarks/enqueue.py
measures the difference). The 80 random bits keep ids unique and unguessable
(no id is a secret in itself: reading a result takes the client's token too);
the time tells the id's holders (its client, its device) when the request was
made, which they know anyway. A clock that steps back costs only the locality.
"""

from __future__ import annotations

import os
import time


def time_ordered_id() -> bytes:
    """A fresh 16-byte id: milliseconds (6 bytes, big-endian), then 10 random bytes."""
    return (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + os.urandom(10)
