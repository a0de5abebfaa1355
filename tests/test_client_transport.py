"""The SDK over real gRPC servers of the test's own: TLS with a root certificate and a name
override (a gateway behind a CA of its operator's), plaintext only when asked for, and the
overload answer a gateway sends (RESOURCE_EXHAUSTED with a retry-after hint), for both clients."""

from __future__ import annotations

import datetime
import time
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgistry.client import (
    TLS, AsyncClient, Client, ConfigError, InsecureTransport, ResourceExhausted, RetryPolicy, State, Unavailable,
)
from edgistry.firmware.caplets import api as caplets
from edgistry.gateway.client import rich_status
from edgistry.proto import gateway_pb2 as gpb
from edgistry.proto import gateway_pb2_grpc as ggrpc

pytestmark = pytest.mark.timeout(60)
TOKEN = caplets.root(caplets.new_secret())
RID = "ab" * 16


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(server_name: str = "gateway.test") -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server key, server certificate for ``server_name``), PEM."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test ca")).issuer_name(_name("test ca"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(server_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), key_pem, cert.public_bytes(pem)


class Scripted(ggrpc.GatewayServicer):
    """GetResult answers from a script: ("busy", trailing metadata) refuses, "ok" answers."""

    def __init__(self, script: list) -> None:
        self.script, self.calls, self.tokens = list(script), 0, []

    def GetResult(self, request, context):
        self.calls += 1
        self.tokens.append(request.token)
        step = self.script.pop(0) if self.script else "ok"
        if step != "ok":
            context.set_trailing_metadata(step[1])
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return gpb.Result(request_id=request.request_id, state=gpb.DONE, payload=b'{"t": 1}')


@pytest.fixture
def serve():
    servers = []

    def start(servicer, tls: tuple[bytes, bytes] | None = None) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        ggrpc.add_GatewayServicer_to_server(servicer, server)
        if tls:
            port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port

    yield start
    for s in servers:
        s.stop(0)


def test_tls_with_a_root_certificate_and_a_name_override(serve, tmp_path):
    """A gateway dialled by address, whose certificate names gateway.test, is trusted with the
    CA's certificate (from a file or bytes) and server_name; the token arrives intact."""
    ca, key, cert = make_pki()
    servicer = Scripted([])
    port = serve(servicer, (key, cert))
    (tmp_path / "ca.pem").write_bytes(ca)
    for tls in (TLS.from_file(tmp_path / "ca.pem", server_name="gateway.test"), TLS(ca, "gateway.test")):
        with Client(f"127.0.0.1:{port}", token=TOKEN, tls=tls) as client:
            assert client.result(RID).value == {"t": 1}
    assert servicer.tokens == [TOKEN.to_bytes()] * 2


@pytest.mark.parametrize("tls", ["wrong-name", "other-ca", "plaintext"])
def test_tls_failures_say_what_is_wrong_and_are_not_retried_forever(serve, tls):
    """A certificate for another name, from another CA, or a plaintext client against TLS:
    Unavailable naming the gateway, within the call's budget."""
    ca, key, cert = make_pki()
    port = serve(Scripted([]), (key, cert))
    settings = {"wrong-name": TLS(ca, "other.test"), "other-ca": TLS(make_pki()[0], "gateway.test"),
                "plaintext": None}[tls]
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", token=TOKEN, tls=settings, insecure=settings is None,
                retry=RetryPolicy(attempts=2), timeout=5) as client, pytest.raises(Unavailable) as exc:
        client.result(RID)
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(exc.value) and "\n" not in str(exc.value)
    says = {"wrong-name": "certificate is for another name", "other-ca": "certificate is not trusted",
            "plaintext": "dialled without TLS"}[tls]
    assert says in str(exc.value)


@pytest.mark.parametrize("hint", ["metadata", "status-details"])
def test_resource_exhausted_with_a_hint_is_retried_after_the_hint(serve, hint):
    """RESOURCE_EXHAUSTED carrying retry-after-ms (or a RetryInfo) is retried no sooner than
    the hint; the call then succeeds."""
    meta = ((("retry-after-ms", "150"),) if hint == "metadata" else
            (("grpc-status-details-bin", rich_status.status_with_retry_info(8, "busy", 0.15)),))
    servicer = Scripted([("busy", meta), ("busy", meta)])
    port = serve(servicer)
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", token=TOKEN, insecure=True) as client:
        assert client.result(RID).state is State.DONE
    assert servicer.calls == 3 and time.monotonic() - started >= 0.3


def test_resource_exhausted_without_a_hint_is_the_callers(serve):
    """No hint: raised at once (backpressure), with retry_after None."""
    servicer = Scripted([("busy", ())])
    port = serve(servicer)
    with Client(f"127.0.0.1:{port}", token=TOKEN, insecure=True) as client, pytest.raises(ResourceExhausted) as exc:
        client.result(RID)
    assert servicer.calls == 1 and exc.value.retry_after is None and str(exc.value) == "queue full"


def test_a_hint_beyond_the_deadline_gives_up_at_once(serve):
    """A retry-after longer than the time left is not waited for."""
    servicer = Scripted([("busy", (("retry-after-ms", "60000"),))])
    port = serve(servicer)
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", token=TOKEN, timeout=2, insecure=True) as client, \
            pytest.raises(ResourceExhausted) as exc:
        client.result(RID)
    assert time.monotonic() - started < 1.5 and exc.value.retry_after == 60


async def test_async_client_tls_and_retry_after(serve):
    """The asyncio client: TLS with a name override, and a hinted retry, as the blocking one."""
    ca, key, cert = make_pki()
    servicer = Scripted([("busy", (("retry-after-ms", "100"),))])
    port = serve(servicer, (key, cert))
    async with AsyncClient(f"127.0.0.1:{port}", token=TOKEN, tls=TLS(ca, "gateway.test")) as client:
        assert (await client.result(RID)).value == {"t": 1}
    assert servicer.calls == 2


def test_no_tls_needs_insecure_and_never_carries_a_token_beyond_loopback(serve):
    """A client without TLS settings is refused when made (gateways speak TLS); insecure=True
    speaks plaintext, but a token still goes to loopback only (192.0.2.0/24: documentation)."""
    with pytest.raises(ConfigError, match="pin the gateway's certificate"):
        Client("127.0.0.1:26670", token=TOKEN)
    with Client("192.0.2.1:26670", token=TOKEN, timeout=0.3, insecure=True) as client, \
            pytest.raises(InsecureTransport):
        client.result(RID)
    servicer = Scripted([])
    port = serve(servicer)
    with Client(f"127.0.0.1:{port}", token=TOKEN, insecure=True) as client:
        assert client.result(RID).value == {"t": 1}
    with pytest.raises(ConfigError, match="does not go with"):
        Client("127.0.0.1:26670", token=TOKEN, insecure=True, tls=TLS())
