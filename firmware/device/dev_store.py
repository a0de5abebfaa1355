"""Durable state on a flash filesystem: two alternating slots with a counter and a MAC.

Why not "write a temp file, rename over the old one": FAT (the default
filesystem of many boards) cannot rename over an existing file, and
MicroPython has neither ``os.replace`` nor ``os.fsync``. So the state lives in
two files, ``NAME.a`` and ``NAME.b``; each holds::

    b"EDS1" | counter (u32 be) | length (u32 be) | body | HMAC-SHA256(key, header | body)

A save writes the slot that does *not* hold the newest valid copy, with the
counter one higher. A write torn by a power cut or a crash leaves a slot whose
MAC fails, and the load takes the other one (the previous state, intact). The
MAC is keyed from the device secret, so it also refuses a slot written by
anything but this device; a CRC would catch tearing alone.

Reads are bounded (``max_bytes``) so a corrupt length cannot exhaust a small heap.
"""

import hashlib
import json

from ..caplets.cap_crypto import hmac_sha256, equal

MAGIC = b"EDS1"
HEADER = 12
MAC_SIZE = 32
class StateTooLarge(ValueError):
    """The state would not fit its slot (nothing was written)."""


MAX_SLOT_BYTES = 32768  # a board's state: tens of entries and revocations, well below this


def _u32(n):
    return n.to_bytes(4, "big")


def _mac(key, head, body):
    """HMAC-SHA256(key, head | body) fed in pieces: no concatenated copy of the state,
    which may reach tens of KB (MAX_SLOT_BYTES) on a heap not much larger. ``key``: 32 bytes."""
    k = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
    inner.update(head)
    inner.update(body)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    outer.update(inner.digest())
    return outer.digest()


def _text_buffer(text):
    """JSON text as something files and hashes take: MicroPython's str has the buffer
    protocol (its UTF-8 bytes, no copy); CPython needs the encoded bytes."""
    try:
        return memoryview(text)
    except TypeError:
        return text.encode()


def _sync(fh):
    """Push the file to the medium where the platform can (CPython: fsync)."""
    fh.flush()
    try:
        import os
        fsync = getattr(os, "fsync", None)
        if fsync is not None:
            fsync(fh.fileno())
        elif hasattr(os, "sync"):
            os.sync()
    except (AttributeError, OSError):
        pass


class SlotStore:
    """``load() -> dict | None`` and ``save(dict)`` over two slots in ``directory``."""

    def __init__(self, directory, key, name="state", max_bytes=MAX_SLOT_BYTES):
        self.paths = (directory + "/" + name + ".a", directory + "/" + name + ".b")
        self.key = hmac_sha256(key, b"edgistry/device/slot-key")
        self.max_bytes = max_bytes
        self.counter = 0
        self.current = -1    # the slot holding the newest valid copy

    def _read(self, i):
        try:
            with open(self.paths[i], "rb") as fh:
                head = fh.read(HEADER)
                if len(head) != HEADER or head[:4] != MAGIC:
                    return None
                n = int.from_bytes(head[8:12], "big")
                if n > self.max_bytes:
                    return None
                body = fh.read(n)
                mac = fh.read(MAC_SIZE)
        except OSError:
            return None
        if len(body) != n or not equal(mac, _mac(self.key, head, body)):
            return None
        return int.from_bytes(head[4:8], "big"), body

    def load(self):
        best = None
        for i in (0, 1):
            got = self._read(i)
            if got is not None and (best is None or got[0] > best[1]):
                best = (i, got[0], got[1])
        if best is None:
            return None
        self.current, self.counter = best[0], best[1]
        return json.loads(best[2])

    def save(self, value):
        body = _text_buffer(json.dumps(value))
        if len(body) > self.max_bytes:
            raise StateTooLarge("device state too large for its slot")
        if self.current < 0 and self.counter == 0:
            self.load()
        counter = self.counter + 1
        head = MAGIC + _u32(counter) + _u32(len(body))
        target = 1 - self.current if self.current >= 0 else 0
        with open(self.paths[target], "wb") as fh:
            fh.write(head)
            fh.write(body)
            fh.write(_mac(self.key, head, body))
            _sync(fh)
        self.current, self.counter = target, counter
