"""Platform checks at boot and portable time (MicroPython and CPython).

Long integers: the link and token core need arbitrary-precision integers
(64-bit sequence numbers and expiries, the cipher's keystream XORed as one big
integer, HKDF counters). A MicroPython build without them
(MICROPY_LONGINT_IMPL_NONE, or LONGLONG which stops at 64 bits) would fail
deep inside a handshake or, worse, compute wrong values; ``check_platform``
refuses to start with a message that says what to build instead.

Epochs: CPython and the MicroPython Unix port count ``time.time()`` from 1970;
several board ports count from 2000-01-01. ``unix_ms`` always answers Unix
milliseconds (tokens, tickets and the gateway speak Unix time), whichever the
port uses. A board whose clock was never set (no RTC, no NTP) starts near its
epoch: request checks then use the gateway's clock (REQUESTS carries it; the
wake corrects by the skew), so an unset clock costs no refused requests.
"""

import time

EPOCH_2000_S = 946684800  # 2000-01-01T00:00:00Z in Unix seconds


class PlatformError(Exception):
    """This interpreter cannot run the device program (the message says why)."""


def check_platform():
    """Raise PlatformError unless integers are arbitrary precision."""
    try:
        big = (1 << 200) + 1
        ok = (big >> 199) == 2 and int.from_bytes(b"\xff" * 9, "big") == (1 << 72) - 1
    except (OverflowError, ValueError, TypeError):
        ok = False
    if not ok:
        raise PlatformError(
            "edgistry device: this MicroPython build has no arbitrary-precision integers; "
            "the device program needs them (build the firmware with "
            "MICROPY_LONGINT_IMPL_MPZ, the default of most ports)")


def epoch_offset_s():
    """Seconds to add to ``time.time()`` for Unix time (0, or 946684800 on a 2000-epoch port)."""
    return EPOCH_2000_S if time.gmtime(0)[0] == 2000 else 0


_OFFSET_S = epoch_offset_s()


def unix_ms():
    """Wall clock in Unix milliseconds, whatever the port's epoch."""
    t = time.time()
    return int(t * 1000) + _OFFSET_S * 1000


if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
else:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b
