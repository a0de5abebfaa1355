"""The C scanner's loader (CPython only; a board does not ship this module).

``cap_codec`` calls ``load_scanner`` at import with its limits and constants;
``c_format()`` is then the whole format as ``_capscan.init`` takes it, built
from ``cap_codec`` / ``cap_caps`` / ``cap_cons`` so they stay the one place that
defines tokens. Without the compiled ``_capscan`` (no C compiler at install)
``load_scanner`` returns None and the pure-Python scan is the only path.
"""

from __future__ import annotations

from types import SimpleNamespace

from . import cap_caps as cc
from . import cap_h3

_args: SimpleNamespace | None = None


def load_scanner(version, max_frames, max_frame_size, max_entries, root_frame, root_record,
                 cache, cache_size):
    """Remember cap_codec's constants; initialise and return ``_capscan``, or None."""
    global _args
    _args = SimpleNamespace(version=version, max_frames=max_frames, max_frame_size=max_frame_size,
                            max_entries=max_entries, root_frame=root_frame, root_record=root_record,
                            cache=cache, cache_size=cache_size)
    try:
        from . import _capscan
    except ImportError:  # installed without a C compiler
        return None
    _capscan.init(c_format())
    return _capscan


def c_format() -> dict:
    """The token format as the C scanner takes it at ``init()``.

    ``entries`` gives each entry code's payload as its fields in order (the
    scanners of cap_caps and cap_cons read the same), each a kind:

    ``"u"``  varint (minimal, below 2**64) -> int
    ``"s"``  length-prefixed UTF-8 string -> str; ``"t"`` the same, non-empty;
             ``"n"`` non-empty and not the wildcard (one method)
    ``"m"``  method set: a count, then that many non-empty strings, strictly
             increasing, the wildcard only alone -> tuple of str
    ``"h"``  varint that ``is_valid_cell`` accepts -> int
    ``"w"``  two varints, low < high -> int, int
    ``("d", n)``       exactly n bytes -> bytes
    ``("r", lo, hi)``  the rest of the payload, lo to hi bytes -> bytes

    Every capability code below ``constraint_bit`` without a layout is
    unknown (not well-formed); every constraint code without one is kept
    with its payload (``unknown_constraint``, cap_cons.scan_unknown).
    """
    a = _args
    if a is None:
        raise RuntimeError("cap_codec has not loaded the scanner")
    return {
        "version": a.version, "max_frames": a.max_frames, "max_frame_size": a.max_frame_size,
        "max_entries": a.max_entries, "constraint_bit": cc.CONSTRAINT_BIT,
        "leaves": (cc.REQUEST, cc.ENCRYPTION),
        "entries": {
            cc.ROOT: (),
            cc.SERVICE: ("t", "m"),
            cc.RESOURCE: ("s", "u"),
            cc.REGION: ("h",),
            cc.IDENTITY: ("t",),
            cc.REQUEST: ("t", "n", ("d", cc.DIGEST_SIZE), "u"),
            cc.ENCRYPTION: (("r", cc.NONCE_MIN, cc.NONCE_MAX),),
            cc.EXPIRES_AT: ("u",),
            cc.NOT_BEFORE: ("u",),
            cc.ENDPOINT: ("t",),
            cc.GATEWAY: ("t",),
            cc.REQUIRE_IDENTITY: ("t",),
            cc.BOUND_TO: (("r", cc.DIGEST_SIZE, cc.DIGEST_SIZE),),
            cc.SEQUENCE_WINDOW: ("w",),
            cc.AUTHORISED_BY: (("r", cc.DIGEST_SIZE, cc.DIGEST_SIZE * 16),),
        },
        "unknown_constraint": (("r", 0, a.max_frame_size),),
        "wildcard": cc.WILDCARD,
        "is_valid_cell": cap_h3.is_valid_cell,
        "root_frame": a.root_frame, "root_record": a.root_record,
        "cache": a.cache, "cache_size": a.cache_size,
    }


