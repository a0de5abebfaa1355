"""The gateway's TLS identity and what clients pin: one P-256 key, one certificate.

Theory of operation. Each gateway holds a P-256 TLS key (``keys/tls.key``,
0600) and a self-signed certificate for it (``keys/tls.crt``; config.py) named
``<gateway id>.gateway.edgistry``. Its Ed25519 registry key signs the
certificate (:func:`sign_binding`, domain ``edgistry/tls-cert/v1``) and the
gateway publishes both with its registry record (SetGatewayTls). There is no
public CA: a client trusts exactly one certificate (a :class:`Pin`) as its root
and overrides the name gRPC checks with the gateway's name, so the handshake
succeeds only against the holder of that key. A pin comes from a file, from
the registry (:meth:`Pin.from_record` checks the Ed25519 binding against the
record's key and id) or from the pairing offer.

P-256, not Ed25519: grpcio and Chromium both fail a handshake with an Ed25519
certificate. The same certificate serves the client gRPC port, the HTTP port
and, as client and server certificate, the gateway-to-gateway mutual TLS.

Nothing here does network I/O except :func:`fetch_certificate` (pairing's
first contact); nothing reads the registry.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..abci_app.txs import gateway_id_for, tls_cert_signed_bytes
from ..config import write_secret_file

NAME_SUFFIX = ".gateway.edgistry"  # the name every gateway certificate carries: <id>.gateway.edgistry
CERT_DAYS = 5 * 365  # pinning, not expiry, is the trust; rotation is a new key published on chain
RENEW_BEFORE_DAYS = 30  # a certificate this close to its end is remade at start (same key)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # so a browser or curl on the node itself can pin it
FETCH_TIMEOUT_S = 10.0


class PinError(Exception):
    """A certificate cannot be pinned: unreadable, not a gateway's, or not bound to the key it claims."""


def server_name(gateway_id: str) -> str:
    """The name a gateway's certificate carries, which clients ask gRPC to check."""
    return gateway_id + NAME_SUFFIX


def sign_binding(gateway_key: Ed25519PrivateKey, cert_der: bytes) -> bytes:
    """The gateway key's signature binding ``cert_der`` to it (published beside the certificate)."""
    return gateway_key.sign(tls_cert_signed_bytes(cert_der))


def verify_binding(pubkey: bytes, cert_der: bytes, signature: bytes) -> None:
    """Raise :class:`PinError` unless ``signature`` is ``pubkey``'s binding of ``cert_der``."""
    try:
        Ed25519PublicKey.from_public_bytes(pubkey).verify(signature, tls_cert_signed_bytes(cert_der))
    except (InvalidSignature, ValueError) as exc:
        raise PinError(f"the certificate is not signed by gateway {gateway_id_for(pubkey)}'s key") from exc


def fingerprint(cert_der: bytes) -> str:
    """SHA-256 of the certificate, hex (what ``gateway info`` shows and people compare)."""
    return hashlib.sha256(cert_der).hexdigest()


def _name_in(cert: x509.Certificate) -> str | None:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = [n for n in sans.get_values_for_type(x509.DNSName) if n.endswith(NAME_SUFFIX)]
    return names[0] if len(names) == 1 else None


@dataclass(frozen=True)
class Pin:
    """One gateway certificate a client trusts, and the name gRPC must find in it."""

    cert_der: bytes
    name: str  # <gateway id>.gateway.edgistry

    @property
    def gateway_id(self) -> str:
        return self.name[: -len(NAME_SUFFIX)]

    @property
    def cert_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.cert_der).public_bytes(serialization.Encoding.PEM)

    @property
    def sha256(self) -> str:
        return fingerprint(self.cert_der)

    @classmethod
    def from_der(cls, der: bytes) -> Pin:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise PinError(f"not an X.509 certificate: {exc}") from exc
        return cls._of(cert)

    @classmethod
    def from_pem(cls, data: bytes) -> Pin:
        """The first certificate of a PEM text (text around the block is ignored)."""
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise PinError(f"no PEM certificate: {exc}") from exc
        return cls._of(cert)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Pin:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PinError(f"cannot read the pin file {path}: {exc.strerror or exc}") from exc
        return cls.from_pem(data)

    @classmethod
    def from_record(cls, gateway_id: str, pubkey: bytes, cert_der: bytes, signature: bytes) -> Pin:
        """A pin from a registry record (or a pairing offer): the key must be the gateway's
        (its id is derived from it) and must have signed the certificate."""
        if gateway_id_for(pubkey) != gateway_id:
            raise PinError(f"the record of gateway {gateway_id} holds another gateway's key")
        if not cert_der:
            raise PinError(f"gateway {gateway_id} publishes no TLS certificate (it runs --insecure, "
                           "or has not started since it was registered)")
        verify_binding(pubkey, cert_der, signature)
        pin = cls.from_der(cert_der)
        if pin.gateway_id != gateway_id:
            raise PinError(f"gateway {gateway_id}'s certificate is named {pin.name}")
        return pin

    @classmethod
    def _of(cls, cert: x509.Certificate) -> Pin:
        name = _name_in(cert)
        if name is None:
            raise PinError(f"the certificate names no gateway (one DNS name ending in {NAME_SUFFIX})")
        if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            raise PinError("a gateway certificate holds a P-256 key")
        return cls(cert.public_bytes(serialization.Encoding.DER), name)

    def to_pem_file(self, path: Path, note: str = "") -> None:
        """Write the pin as a PEM file with readable header lines (gateway, SHA-256)."""
        head = f"# Edgistry gateway {self.gateway_id}\n# SHA-256 {self.sha256}\n"
        path.write_bytes((head + (f"# {note}\n" if note else "")).encode() + self.cert_pem)


@dataclass(frozen=True)
class TlsIdentity:
    """A gateway's own TLS material: key and certificate (PEM), and the Ed25519 binding."""

    key_pem: bytes
    cert_pem: bytes
    cert_der: bytes
    signature: bytes
    gateway_id: str

    @property
    def pin(self) -> Pin:
        return Pin(self.cert_der, server_name(self.gateway_id))

    def ssl_server_context(self, cert_path: Path, key_path: Path) -> ssl.SSLContext:
        """The HTTP port's context (TLS 1.2+, HTTP/1.1 over ALPN)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_path, key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def server_credentials(identity: TlsIdentity) -> grpc.ServerCredentials:
    """The client port's credentials: TLS with this certificate, no client certificate asked."""
    return grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)])


def channel_credentials(pin: Pin, identity: TlsIdentity | None = None) -> grpc.ChannelCredentials:
    """Trust exactly ``pin``; with ``identity``, present it as the client certificate (peers)."""
    if identity is None:
        return grpc.ssl_channel_credentials(pin.cert_pem)
    return grpc.ssl_channel_credentials(pin.cert_pem, identity.key_pem, identity.cert_pem)


def channel_options(pin: Pin) -> list[tuple[str, str]]:
    """The name gRPC checks in the certificate: the gateway's, whatever address was dialled."""
    return [("grpc.ssl_target_name_override", pin.name)]


def _split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[ipaddress._BaseAddress]]:
    names, ips = [], []
    for host in dict.fromkeys(h.strip("[]") for h in hosts if h and h not in ("0.0.0.0", "::")):
        try:
            ips.append(ipaddress.ip_address(host))
        except ValueError:
            names.append(host)
    return names, ips


def make_certificate(key: ec.EllipticCurvePrivateKey, gateway_id: str, hosts: Iterable[str] = (),
                     now: datetime.datetime | None = None) -> x509.Certificate:
    """A self-signed certificate for ``key`` named for ``gateway_id`` (plus loopback and ``hosts``),
    usable as server and as client certificate."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    name = server_name(gateway_id)
    dns, ips = _split_hosts([*LOOPBACK_HOSTS, *hosts])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edgistry gateway")])
    sans = [x509.DNSName(name), *(x509.DNSName(n) for n in dns), *(x509.IPAddress(ip) for ip in ips)]
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PinError(f"cannot read the TLS key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PinError(f"{path} is not a P-256 key")
    return key


def _cert_fits(path: Path, key: ec.EllipticCurvePrivateKey, gateway_id: str, hosts: Iterable[str],
               now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.public_key() != key.public_key() or _name_in(cert) != server_name(gateway_id):
        return False
    if cert.not_valid_after_utc - now < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    names, ips = _split_hosts(hosts)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names) <= set(sans.get_values_for_type(x509.DNSName)) and \
        set(ips) <= set(sans.get_values_for_type(x509.IPAddress))


def ensure_identity(key_path: Path, cert_path: Path, gateway_key: Ed25519PrivateKey, hosts: Iterable[str] = (),
                    now: datetime.datetime | None = None) -> TlsIdentity:
    """Load the gateway's TLS key and certificate (``NodeConfig.tls_key_path`` and
    ``tls_cert_path``), making what is missing.

    The key (0600) is made once and kept. The certificate is remade (same key)
    when it is missing, for another key or gateway, near its end, or lacks one
    of ``hosts`` (extra names a browser may use: ``[gateway] tls_hosts``); a
    remade certificate is published again at start, and old pin files then no
    longer match."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    gid = gateway_id_for(gateway_key.public_key().public_bytes_raw())
    if key_path.exists():
        key = _load_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_secret_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    hosts = list(hosts)
    if not _cert_fits(cert_path, key, gid, hosts, now):
        cert = make_certificate(key, gid, hosts, now)
        tmp = cert_path.with_suffix(".tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tmp.replace(cert_path)
    cert_pem = cert_path.read_bytes()
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return TlsIdentity(key_path.read_bytes(), cert_pem, der, sign_binding(gateway_key, der), gid)


def fetch_certificate(host: str, port: int, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """The certificate a TLS server presents (DER), WITHOUT verifying it: pairing's first
    contact, whose offer then proves (Ed25519) which gateway the certificate belongs to."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust on first use; the caller checks the binding
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=None) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise PinError(f"the gateway at {host}:{port} does not speak TLS ({exc.reason or exc}): one run with "
                       "--insecure, or not a gateway") from exc
    except OSError as exc:
        raise PinError(f"cannot reach the gateway at {host}:{port}: {(exc.strerror or str(exc)).lower()}") from exc
    if not der:
        raise PinError(f"{host}:{port} presented no certificate")
    return der
