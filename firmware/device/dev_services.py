"""Services a device offers, declared as plain functions (portable).

A method is ``fn(args, call)``: ``args`` the decoded JSON argument (None when
empty), ``call`` a :class:`Call` (request id, time in Unix seconds); it returns
something JSON can encode. Raise :class:`BadArguments` for arguments the
method cannot use (status 3); any other exception is a service error (4).

Each method is read-only or ``mutating``, optionally cacheable for
``cache_max_age_s`` (the gateway may answer from its cache), and
``idempotent`` (safe to run again after a crash interrupted it; read-only
methods always are). A mutating, non-idempotent method interrupted by a crash
is never run a second time: it is answered INTERRUPTED (dev_core).

On a board::

    svc = Services()
    svc.register("sensor", "read", lambda args, call: {"t": read_temp()})
    svc.register("relay", "set", set_relay, mutating=True)
"""

import json

from ..link.link_device import BAD_ARGUMENTS, OK, SERVICE_ERROR, UNKNOWN_METHOD


class BadArguments(ValueError):
    """The arguments do not suit the method (response status 3)."""


class Call:
    """What a method learns about the call besides its arguments."""

    def __init__(self, request_id, now):
        self.request_id = request_id
        self.now = now


class Method:
    def __init__(self, name, fn, mutating=False, cache_max_age_s=0, idempotent=True):
        self.name = name
        self.fn = fn
        self.mutating = mutating
        self.cache_max_age_s = cache_max_age_s
        self.idempotent = idempotent


def dumps(value):
    """Compact JSON; keys sorted where the platform's json can (CPython)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except TypeError:  # MicroPython's json takes no sort_keys
        return json.dumps(value, separators=(",", ":"))


class Services:
    """Service type -> method name -> Method."""

    def __init__(self):
        self.services = {}

    def register(self, service, name, fn, mutating=False, cache_max_age_s=0, idempotent=None):
        """Offer ``fn`` as ``service:name``. Mutating methods are not
        idempotent unless said so."""
        if mutating and cache_max_age_s:
            raise ValueError("a mutating method cannot be cacheable")
        if idempotent is None:
            idempotent = not mutating
        self.services.setdefault(service, {})[name] = Method(name, fn, mutating, cache_max_age_s,
                                                             idempotent)

    def method(self, service, name):
        return self.services.get(service, {}).get(name)

    def call(self, service, name, args, call):
        """Run a method: (status, JSON payload bytes, error text)."""
        spec = self.method(service, name)
        if spec is None:
            return UNKNOWN_METHOD, b"", "no method %s:%s" % (service, name)
        try:
            value = json.loads(args) if args else None
        except ValueError as exc:
            return BAD_ARGUMENTS, b"", "arguments are not JSON: %s" % (exc,)
        try:
            result = spec.fn(value, call)
            return OK, dumps(result).encode(), ""
        except BadArguments as exc:
            return BAD_ARGUMENTS, b"", str(exc)
        except Exception as exc:  # the service's failure is the caller's answer, not ours
            return SERVICE_ERROR, b"", "%s: %s" % (type(exc).__name__, exc)
