"""The SDK's pure parts: retry decisions and backoff, status mapping and retry-after hints,
addresses and the clear-text guard, token sources, and the values' JSON shape."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgistry.client import (
    TLS, AlreadyExists, Backoff, Call, Cancelled, ConfigError, DeadlineExceeded, FailedPrecondition, Handle,
    InsecureTransport, InvalidArgument, Latency, NotFound, PermissionDenied, Region, RequestFailed,
    ResourceExhausted, Result, RetryPolicy, ServerError, State, TokenFileError, Unavailable, load_token,
    parse_target,
)
from edgistry.firmware.caplets import api as caplets
from edgistry.gateway.client import retry, rich_status
from edgistry.gateway.client.base import encode_args, split_method
from edgistry.gateway.client.errors import from_status, retry_after
from edgistry.gateway.client.transport import Transport

SC = grpc.StatusCode


# ---- retries ----

@given(st.integers(0, 20), st.floats(0, 1))
def test_backoff_steps_grow_and_stay_jittered_within_bounds(retry_no, u):
    """Each delay is between half and all of min(max_s, initial_s * multiplier**n)."""
    policy = RetryPolicy(attempts=50, initial_s=0.2, max_s=5.0)
    step = min(5.0, 0.2 * 2 ** retry_no)
    delay = retry.decide(Unavailable("x"), retry_no, policy, lambda: u)
    assert step / 2 <= delay <= step


@pytest.mark.parametrize("error,expected", [
    (Unavailable("down"), "backoff"),
    (ResourceExhausted("busy"), None),  # no hint: backpressure is the caller's
    (DeadlineExceeded("late"), None),
    (PermissionDenied("no"), None),
    (NotFound("gone"), None),
    (InvalidArgument("bad"), None),
    (ValueError("not ours"), None),
])
def test_what_is_retried(error, expected):
    """Only Unavailable (and ResourceExhausted with a hint, below) is retried."""
    delay = retry.decide(error, 0, RetryPolicy(), lambda: 0.5)
    assert (delay is not None) == (expected == "backoff")


def test_a_retry_after_hint_is_a_floor_with_jitter_above_it():
    """RESOURCE_EXHAUSTED with a hint waits the hint plus up to 20%, never less."""
    err = ResourceExhausted("busy")
    err.retry_after = 1.5
    assert retry.decide(err, 0, RetryPolicy(), lambda: 0.0) == 1.5
    assert retry.decide(err, 0, RetryPolicy(), lambda: 1.0) == pytest.approx(1.8)
    assert Backoff(RetryPolicy(initial_s=0.1), rng=lambda: 0.0).next(hint=2.0) == 2.0


def test_the_last_attempt_is_not_retried():
    """attempts counts every try: after attempts-1 retries the error is final."""
    assert retry.decide(Unavailable("x"), 3, RetryPolicy(attempts=4), lambda: 0.5) is None
    assert retry.decide(Unavailable("x"), 0, RetryPolicy(attempts=1), lambda: 0.5) is None


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_call_retries_unavailable_then_succeeds_without_real_sleeps():
    """Two UNAVAILABLE answers, then success: two jittered sleeps, the value returned."""
    t, answers = FakeTime(), [Unavailable("a"), Unavailable("b"), "ok"]

    def fn(left):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    assert retry.call(fn, RetryPolicy(attempts=5, initial_s=1, max_s=8), deadline=100, clock=t.clock,
                      sleep=t.sleep, rng=lambda: 0.0) == "ok"
    assert t.slept == [0.5, 1.0]


def test_call_gives_up_rather_than_sleep_past_its_deadline():
    """A retry that would start after the deadline is not made: the last error is raised."""
    t, calls = FakeTime(), []

    def fn(left):
        calls.append(left)
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        retry.call(fn, RetryPolicy(attempts=10, initial_s=1, max_s=1), deadline=2.2, clock=t.clock,
                   sleep=t.sleep, rng=lambda: 1.0)
    assert calls == pytest.approx([2.2, 1.2, 0.2])  # each try is told how long is left; no sleep past 2.2


async def test_call_async_retries_the_same_way():
    """The coroutine flavour follows the same rule (UNAVAILABLE retried, others not)."""
    t, answers = FakeTime(), [Unavailable("a"), "ok"]

    async def fn(left):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    async def sleep(s):
        t.sleep(s)

    assert await retry.call_async(fn, RetryPolicy(initial_s=1), deadline=10, clock=t.clock, sleep=sleep,
                                  rng=lambda: 0.0) == "ok"
    with pytest.raises(PermissionDenied):
        async def denied(left):
            raise PermissionDenied("no")
        await retry.call_async(denied, RetryPolicy(), deadline=10, clock=t.clock, sleep=sleep)


def test_backoff_resets_after_a_success():
    """reset() starts the series again from initial_s."""
    b = Backoff(RetryPolicy(initial_s=1, max_s=100), rng=lambda: 1.0)
    assert [b.next() for _ in range(4)] == [1, 2, 4, 8]
    b.reset()
    assert b.next() == 1


def test_a_policy_that_makes_no_sense_is_refused():
    """attempts >= 1, 0 <= initial <= max, multiplier >= 1."""
    for bad in (dict(attempts=0), dict(initial_s=-1), dict(initial_s=5, max_s=1), dict(multiplier=0.5)):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


# ---- status mapping ----

@pytest.mark.parametrize("code,cls", [
    (SC.UNAVAILABLE, Unavailable), (SC.DEADLINE_EXCEEDED, DeadlineExceeded),
    (SC.RESOURCE_EXHAUSTED, ResourceExhausted), (SC.INVALID_ARGUMENT, InvalidArgument),
    (SC.PERMISSION_DENIED, PermissionDenied), (SC.UNAUTHENTICATED, PermissionDenied), (SC.NOT_FOUND, NotFound),
    (SC.ALREADY_EXISTS, AlreadyExists), (SC.FAILED_PRECONDITION, FailedPrecondition), (SC.CANCELLED, Cancelled),
    (SC.INTERNAL, ServerError), (SC.UNKNOWN, ServerError), (SC.UNIMPLEMENTED, ServerError),
])
def test_every_status_maps_into_the_tree(code, cls):
    """Each status becomes one class of the tree, keeping code, details and target."""
    err = from_status(code, "why", (), "h:1", "rid")
    assert type(err) is cls and err.code == code and err.details == "why" and err.target == "h:1"
    assert err.request_id == "rid" and "\n" not in str(err)


@pytest.mark.parametrize("details,expected", [
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused",
     "cannot reach the gateway at h:1: connection refused"),
    ("DNS resolution failed for nowhere.invalid:1: C-ares status is not ARES_SUCCESS",
     "cannot reach the gateway at h:1: the host name does not resolve"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Ssl handshake failed: "
     "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
     "cannot reach the gateway at h:1: TLS: the gateway's certificate is not trusted"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Custom verification check "
     "failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
     "cannot reach the gateway at h:1: TLS: the gateway's certificate is for another name"),
    ("Socket closed", "cannot reach the gateway at h:1: the connection was closed"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.1:1: Connection timed out",
     "cannot reach the gateway at h:1: connection failed"),
    ("the registry is unreachable: boom", "the gateway at h:1 is unavailable: the registry is unreachable: boom"),
    ("the device's gateway g cannot be reached now (connection refused)",
     "the gateway at h:1 is unavailable: the device's gateway g cannot be reached now"),
])
def test_unavailable_says_what_failed_in_a_few_words(details, expected):
    """gRPC's transport text becomes a short reason; a gateway's own UNAVAILABLE keeps its words."""
    assert str(from_status(SC.UNAVAILABLE, details, (), "h:1")).startswith(expected)


def test_retry_after_comes_from_metadata_or_rich_status_details():
    """``retry-after-ms`` trailing metadata, else a google.rpc.RetryInfo in grpc-status-details-bin;
    malformed or absurd hints are ignored."""
    assert retry_after((("retry-after-ms", "1500"),)) == 1.5
    assert retry_after((("Retry-After-Ms", b"250"),)) == 0.25
    details = rich_status.status_with_retry_info(8, "slow down", 2.5)
    assert retry_after((("grpc-status-details-bin", details),)) == 2.5
    assert retry_after((("retry-after-ms", "soon"),)) is None
    assert retry_after((("retry-after-ms", str(10**12)),)) is None
    assert retry_after((("grpc-status-details-bin", b"\xff\xfe not a status"),)) is None
    assert retry_after(()) is None
    err = from_status(SC.RESOURCE_EXHAUSTED, "queue full", (("retry-after-ms", "300"),))
    assert err.retry_after == 0.3 and err.retryable


# ---- addresses and the clear-text guard ----

@pytest.mark.parametrize("text,host,port", [
    ("127.0.0.1", "127.0.0.1", 26670), ("127.0.0.1:5", "127.0.0.1", 5), ("gw.example:443", "gw.example", 443),
    ("[::1]:7", "::1", 7), ("[::1]", "::1", 26670), (" localhost:9 ", "localhost", 9),
])
def test_addresses_parse_with_the_gateway_port_as_default(text, host, port):
    """HOST[:PORT] and [V6]:PORT; no port means the gateway's gRPC port, never 443."""
    t = parse_target(text)
    assert (t.host, t.port) == (host, port)


@pytest.mark.parametrize("text,says", [
    ("", "HOST:PORT"), (":5", "HOST:PORT"), ("h:0", "1..65535"), ("h:x", "1..65535"), ("h:70000", "1..65535"),
    ("http://h:5", "no scheme"), ("::1:5", "brackets"), ("[::1", "[ADDRESS]:PORT"),
])
def test_malformed_addresses_say_what_is_wrong(text, says):
    """A malformed address is a ConfigError naming the expected form."""
    with pytest.raises(ConfigError) as exc:
        parse_target(text)
    assert says in str(exc.value)


@pytest.mark.parametrize("target,tls,insecure,allowed", [
    ("127.0.0.1:1", None, False, True), ("127.8.9.10:1", None, False, True), ("[::1]:1", None, False, True),
    ("localhost:1", None, False, True), ("10.0.0.1:1", None, False, False), ("gw.example:1", None, False, False),
    ("localhost.evil.example:1", None, False, False), ("10.0.0.1:1", None, True, False),
    ("10.0.0.1:1", TLS(), False, True),
])
def test_a_token_goes_in_clear_only_to_loopback(target, tls, insecure, allowed):
    """Plaintext to anything but loopback refuses to carry a token, insecure=True or not;
    names are not resolved (a DNS answer is no reason to trust)."""
    transport = Transport.of(target, tls, insecure)
    if allowed:
        transport.check_token_may_be_sent()
    else:
        with pytest.raises(InsecureTransport):
            transport.check_token_may_be_sent()


def test_tls_settings_are_checked_when_made(tmp_path):
    """A root certificate must be PEM; an unreadable file is named."""
    with pytest.raises(ConfigError, match="PEM"):
        TLS(b"not a certificate")
    with pytest.raises(ConfigError, match=str(tmp_path / "nope.pem")):
        TLS.from_file(tmp_path / "nope.pem")


# ---- tokens ----

def test_tokens_load_from_every_form(tmp_path):
    """A Token, its bytes, its text, a file of text, a binary file: all the same bytes."""
    tok = caplets.root(caplets.new_secret())
    raw, text = tok.to_bytes(), caplets.to_text(tok)
    (tmp_path / "t.txt").write_text(text + "\n")
    (tmp_path / "t.bin").write_bytes(raw)
    for source in (tok, raw, text, str(tmp_path / "t.txt"), tmp_path / "t.bin"):
        assert load_token(source) == raw


@pytest.mark.parametrize("content,says", [(None, "does not exist"), ("", "empty"), ("hello world", "not a token")])
def test_bad_token_files_are_named(tmp_path, content, says):
    """A missing, empty or garbled token file: TokenFileError naming the file and the fault."""
    path = tmp_path / "app.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokenFileError) as exc:
        load_token(str(path))
    assert str(path) in str(exc.value) and says in str(exc.value)


# ---- values ----

def test_result_value_raises_unless_done():
    """.value parses a DONE payload; any other final state raises RequestFailed with the result."""
    done = Result("ab" * 16, State.DONE, b'{"t": 1}')
    assert done.value == {"t": 1} and done.final and done.ok
    failed = Result("cd" * 16, State.EXPIRED, error="dead-lettered")
    with pytest.raises(RequestFailed) as exc:
        failed.value
    assert exc.value.result is failed and "EXPIRED" in str(exc.value) and "dead-lettered" in str(exc.value)
    assert not Result("ef" * 16, State.QUEUED).final


def test_json_shapes_use_hex_cells_and_names():
    """to_dict: cells in hex, states and latency classes by name (the CLI's --json)."""
    h = Handle("opaque", 0x871F1D489FFFFFF, Latency.SECONDS, "127.0.0.1:26670", 5)
    assert h.to_dict() == {"handle": "opaque", "cell": "871f1d489ffffff", "latency": "seconds",
                           "gateway": "127.0.0.1:26670", "expires_at_ms": 5}
    d = Result("ab" * 16, State.FAILED, b"not json", "boom").to_dict()
    assert d["state"] == "FAILED" and d["payload"] == "not json" and d["error"] == "boom"


@pytest.mark.parametrize("kwargs,says", [
    (dict(lat=91, lon=0), "latitude must be within -90..90"), (dict(lat=0, lon=-181), "longitude"),
    (dict(lat=float("nan"), lon=0), "latitude"), (dict(lat=0, lon=0, radius_km=0), "radius_km"),
])
def test_regions_out_of_range_say_the_range(kwargs, says):
    """A region outside the globe is refused with the valid range in the message."""
    with pytest.raises(ConfigError, match=says):
        Region(**kwargs)


def test_arguments_and_method_names():
    """Args are JSON-encoded unless already bytes; "type.method" splits unless a service is given."""
    assert encode_args({"on": True}) == b'{"on":true}' and encode_args(b"[1]") == b"[1]" and encode_args(None) == b""
    assert encode_args("hi") == b'"hi"'
    with pytest.raises(ConfigError):
        encode_args({1, 2})
    assert split_method("sensor.read") == ("sensor", "read")
    assert split_method("read", "sensor") == ("sensor", "read")
    assert Call("h", "m").token is None


@contextlib.contextmanager
def fake_discovery(servicer):
    """A Client (plaintext, loopback) of a gRPC discovery server running ``servicer``."""
    from concurrent import futures

    from edgistry.firmware.caplets import api as cl
    from edgistry.proto import discovery_pb2_grpc as dgrpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    dgrpc.add_DiscoveryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", cl.mint(b"g" * 32, [cl.Identity("app")]).to_bytes()
    finally:
        server.stop(0)


def test_invoke_any_is_not_retried_but_a_discover_is():
    """An invoke-any carries no request id and may reach a method the token may write: a
    retry after UNAVAILABLE could run it twice (the gateway may have run it before the answer
    was lost), so the SDK does not retry it; an idempotent call still is."""
    from edgistry.client import Client, RetryPolicy, Unavailable
    from edgistry.proto import discovery_pb2_grpc as dgrpc

    calls = {"InvokeAny": 0, "Discover": 0}

    class Flaky(dgrpc.DiscoveryServicer):
        def InvokeAny(self, request, context):  # noqa: N802 (gRPC's name)
            calls["InvokeAny"] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "gateway restarting")

        def Discover(self, request, context):  # noqa: N802
            calls["Discover"] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "gateway restarting")

    with fake_discovery(Flaky()) as (target, token):
        with Client(target, token=token, insecure=True,
                    retry=RetryPolicy(attempts=3, initial_s=0.01, max_s=0.02)) as client:
            with pytest.raises(Unavailable):
                client.invoke_any("valve", "open", near=(1.0, 1.0), timeout=2)
            with pytest.raises(Unavailable):
                next(client.discover("valve", near=(1.0, 1.0), timeout=2))
    assert calls == {"InvokeAny": 1, "Discover": 3}


def test_discovery_stops_when_a_gateway_repeats_a_page_token():
    """A gateway answering Discover with a page token it gave before would keep a client
    paging, and `discover --all` collecting handles, for ever: the SDK stops with an error."""
    from edgistry.client import Client, RemoteError
    from edgistry.proto import discovery_pb2 as dpb
    from edgistry.proto import discovery_pb2_grpc as dgrpc

    served = []

    class Endless(dgrpc.DiscoveryServicer):
        def Discover(self, request, context):  # noqa: N802 (gRPC's name)
            served.append(request.page_token)
            return dpb.DiscoverResponse(handles=[dpb.Handle(handle="h%d" % len(served), cell=0x87283082fffffff)],
                                        next_page_token="again" if served[-1] else "first")

    with fake_discovery(Endless()) as (target, token):
        with Client(target, token=token, insecure=True) as client:
            with pytest.raises(RemoteError, match="page token it gave before"):
                for _ in client.discover("sensor", near=(1.0, 1.0), timeout=2):
                    pass
    assert served == ["", "first", "again"]
