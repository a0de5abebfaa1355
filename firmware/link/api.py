"""The device link (docs/LINK_PROTOCOL.md): a sans-I/O core that runs unchanged
on CPython and MicroPython.

Modules (``edgistry device export`` ships a board the device side, beside the
caplets core, in the package tree; they import each other relatively):

* ``link_wire``: protobuf-wire codec for proto/link.proto, framing, MAX_LINK_FRAME
* ``link_crypto``: HKDF-SHA256, frame MACs, the HMAC keystream cipher
* ``x25519``: the X25519 provider from ``cryptography`` (CPython only; forward secrecy)
* ``link_errors``: LinkError > RemoteProtocolError / LocalProtocolError, wire codes
* ``link_session``: events and the shared session machinery (transition-table walk)
* ``link_device``: DeviceSession and check_request (request-token verification)
* ``link_gateway``: GatewaySession (the gateway side, pure; driven by gateway/link/server.py)

Typical device use::

    s = DeviceSession(secret, root_token, link_id, identity_token, os.urandom)
    sock.send(s.initiate())
    while True:
        s.receive_data(sock.recv(4096))
        ev = s.next_event()          # Established, Requests, Ack, Error, NEED_DATA, CLOSED
        sock.send(s.data_to_send())  # handshake replies
        ...
        sock.send(s.send(Responses([...])))
"""

from . import link_crypto, link_device, link_errors, link_gateway, link_session, link_wire  # submodules as attributes too
from .x25519 import x25519
from .link_device import (
    BAD_ARGUMENTS, EXPIRED, OK, SERVICE_ERROR, TOKEN_REFUSED, UNKNOWN_METHOD, DeviceSession,
    check_request, request_sequence,
)
from .link_errors import (
    DecodeError, FrameTooLarge, LinkError, LocalProtocolError, RemoteProtocolError,
)
from .link_gateway import Challenged, GatewaySession, encryption_body, identity_name
from .link_session import (
    CLOSED, NEED_DATA, Ack, Bye, Error, Established, Requests, Responses,
)
from .link_wire import MAX_LINK_FRAME, FrameReader, decode, encode, encode_frame

__all__ = [
    "link_crypto", "link_device", "link_errors", "link_gateway", "link_session", "link_wire",
    "BAD_ARGUMENTS", "CLOSED", "Challenged", "EXPIRED", "MAX_LINK_FRAME", "NEED_DATA", "OK",
    "SERVICE_ERROR", "TOKEN_REFUSED", "UNKNOWN_METHOD", "Ack", "Bye", "DecodeError",
    "DeviceSession", "Error", "Established", "FrameReader", "FrameTooLarge",
    "GatewaySession", "LinkError", "LocalProtocolError", "RemoteProtocolError", "Requests",
    "Responses", "check_request", "decode", "encode", "encode_frame", "encryption_body",
    "identity_name", "request_sequence", "x25519",
]
