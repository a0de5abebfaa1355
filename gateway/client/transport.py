"""Where and how the SDK connects: the gateway's address, TLS, and the clear-text guard.

* :func:`parse_target`: ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6); the port
  defaults to the gateway's gRPC port, 26670, and is always shown in errors.
* :class:`TLS`: trust a root certificate (PEM, from bytes or a file; the
  system's roots when none is given) and optionally override the name the
  certificate must carry (a gateway reached by IP address, a test CA);
  :meth:`TLS.pinned` trusts exactly one gateway's certificate (its pin, see
  pins.py) under the gateway's own name, whatever address is dialled.
* :class:`Transport`: a target with its TLS setting. Without TLS (a gateway run
  with ``--insecure``, chosen with ``insecure=True``) it never sends a token to
  an address that is not loopback: tokens are bearer credentials. Calls that
  carry no token (pairing, whose payload is sealed end to end) may use any address.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ..tls import Pin
from .errors import ConfigError, InsecureTransport

DEFAULT_PORT = 26670  # the gateway's gRPC front end (DESIGN.md, "Default ports")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# gRPC's reconnect backoff grows to 120 s by default; a CLI or an application
# retrying a restarted gateway should find it within seconds.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.max_reconnect_backoff_ms", 2000),
                                                ("grpc.initial_reconnect_backoff_ms", 200))


@dataclass(frozen=True)
class Target:
    """A gateway's gRPC address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and the name localhost (names are not resolved:
        a DNS answer is not a reason to send a token in clear)."""
        if self.host.lower() in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_target(text: str, default_port: int = DEFAULT_PORT) -> Target:
    """``HOST[:PORT]`` or ``[V6]:PORT`` -> :class:`Target`; :class:`ConfigError` when malformed."""
    raw = (text or "").strip()
    if "://" in raw:
        raise ConfigError(f"give the gateway as HOST:PORT (no scheme), got {text!r}")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"an IPv6 gateway address is [ADDRESS]:PORT, got {text!r}")
        port_text = rest[1:]
    elif raw.count(":") > 1:
        raise ConfigError(f"put an IPv6 address in brackets: [{raw}]:{default_port}")
    else:
        host, _, port_text = raw.partition(":")
    if not host:
        raise ConfigError(f"give the gateway as HOST:PORT (e.g. 127.0.0.1:{default_port}), got {text!r}")
    if not port_text:
        return Target(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"the port in {text!r} must be a number within 1..65535")
    return Target(host, int(port_text))


@dataclass(frozen=True)
class TLS:
    """TLS to the gateway: ``root_certificates`` (PEM bytes; None: the system's roots) and
    ``server_name``, the name the certificate must carry when it is not the host dialled."""

    root_certificates: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, server_name: str | None = None) -> TLS:
        """Trust the PEM root certificate(s) in ``path``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the root certificate {path}: {exc.strerror or exc}") from exc
        return cls(data, server_name)

    @classmethod
    def pinned(cls, pin: Pin) -> TLS:
        """Trust exactly the gateway certificate ``pin``, checked under the gateway's name."""
        return cls(pin.cert_pem, pin.name)

    def __post_init__(self) -> None:
        if self.root_certificates is not None and b"-----BEGIN CERTIFICATE-----" not in self.root_certificates:
            raise ConfigError("the root certificate is not PEM (no BEGIN CERTIFICATE block)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


@dataclass(frozen=True)
class Transport:
    """A target, its TLS setting, and whether clear text to a remote host was allowed."""

    target: Target
    tls: TLS | None = None
    insecure: bool = False
    options: tuple[tuple[str, object], ...] = field(default=CHANNEL_OPTIONS)

    @classmethod
    def of(cls, target: str | Target, tls: TLS | None = None, insecure: bool = False) -> Transport:
        return cls(target if isinstance(target, Target) else parse_target(target), tls, insecure)

    def check_token_may_be_sent(self) -> None:
        """Raise :class:`InsecureTransport` when a token would go in clear to a remote host
        (``insecure`` allows plaintext, never a token in clear beyond loopback)."""
        if self.tls is None and not self.target.is_loopback:
            raise InsecureTransport(
                f"refusing to send a token in clear to {self.target}: pin the gateway's certificate (its TLS "
                "is on unless it runs --insecure); a gateway without TLS is for loopback only")

    def _all_options(self) -> list[tuple[str, object]]:
        return list(self.options) + (self.tls.options() if self.tls else [])

    def channel(self) -> grpc.Channel:
        """A blocking channel (:class:`~.sync.Client`)."""
        if self.tls is not None:
            return grpc.secure_channel(str(self.target), self.tls.credentials(), options=self._all_options())
        return grpc.insecure_channel(str(self.target), options=self._all_options())

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel (:class:`~.aio.AsyncClient`); make it inside the loop that uses it."""
        if self.tls is not None:
            return grpc.aio.secure_channel(str(self.target), self.tls.credentials(), options=self._all_options())
        return grpc.aio.insecure_channel(str(self.target), options=self._all_options())
