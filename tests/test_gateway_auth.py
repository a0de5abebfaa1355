"""Authorising client tokens (gateway/tokens/auth.py), above all the memory of verified tokens:
a remembered token is still refused the moment it is revoked, expires, is shown at
another gateway or asks for a right it lacks, with the same error as a first use."""

from __future__ import annotations

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.tokens import auth
from edgistry.gateway.errors import Unauthorized

GW = "gw-a"
SECRET = b"g" * 32
NOW = 1_800_000_000


@pytest.fixture
def device():
    root = cl.root(cl.new_secret())
    return root.to_bytes(), auth.app_token(root.to_bytes(), {"sensor": ["read"]})


@pytest.fixture(autouse=True)
def empty_memory():
    auth._verified.clear()
    yield
    auth._verified.clear()


def check(token: bytes, root: bytes | None, revoked=None, now: int = NOW, gateway: str = GW,
          method: str = "read", mutating: bool = False) -> auth.Authorised:
    return auth.authorise(token, "sensor", method, root, SECRET, gateway, revoked, now, mutating=mutating)


def error_of(fn) -> str:
    with pytest.raises(Unauthorized) as exc:
        fn()
    return str(exc.value)


def test_a_remembered_token_skips_the_chain_but_not_the_per_call_checks(device, monkeypatch):
    root, app = device
    token = app.to_bytes()
    assert check(token, root).origin == "device"
    assert len(auth._verified) == 1
    calls = []
    monkeypatch.setattr(auth, "_authorise", lambda *a: calls.append(a))
    assert check(token, root).token.to_bytes() == token  # from memory: the full check did not run
    assert not calls


@pytest.mark.parametrize("which", ["root", "app"])
def test_revoking_any_tag_of_the_chain_refuses_a_remembered_token(device, which):
    root, app = device
    token = app.to_bytes()
    revoked = cl.RevocationSet()
    check(token, root, revoked)
    first = error_of(lambda: check(token, root, _revoked(cl.load(root).tag if which == "root" else app.tag)))
    revoked.revoke(cl.revocation_hash(cl.load(root).tag if which == "root" else app.tag))
    again = error_of(lambda: check(token, root, revoked))
    assert again == first and "revoked" in again.lower()


def test_a_hash_the_token_names_in_authorised_by_refuses_it_once_revoked_remembered_or_not(device):
    """A delegator may bind a token to another credential (``authorised_by``): revoking that
    one stops it, as the full check reads it, also once the token was remembered, and the
    hash is among those a queued request of it is stopped by."""
    root, app = device
    other = cl.revocation_hash(b"x" * 32)  # the credential this token was handed on under
    child = cl.derive(app, None, [cl.AuthorisedBy([other])]).to_bytes()
    revoked = cl.RevocationSet()
    revoked.revoke(cl.revocation_hash(b"unrelated" * 4))
    granted = check(child, root, revoked)
    assert other in granted.chain
    revoked.revoke(other)
    remembered = error_of(lambda: check(child, root, revoked))
    auth._verified.clear()
    assert error_of(lambda: check(child, root, revoked)) == remembered and "revoked" in remembered.lower()


def test_long_tokens_are_verified_every_time_not_remembered(device):
    """Children derived offline with many frames are not pinned in memory; they still work."""
    root, app = device
    long = app
    while len(long.to_bytes()) <= auth.REMEMBER_MAX_BYTES:
        long = cl.derive(long, None, [cl.AuthorisedBy([bytes([len(long.frames), i]) * 16 for i in range(8)])])
    assert check(long.to_bytes(), root).origin == "device"
    assert check(app.to_bytes(), root).origin == "device"
    assert len(auth._verified) == 1 and auth.known_issuer(long.to_bytes()) is None


def _revoked(tag: bytes) -> cl.RevocationSet:
    r = cl.RevocationSet()
    r.revoke(cl.revocation_hash(tag))
    return r


def test_expiry_gateway_and_rights_are_checked_on_every_call(device):
    root, app = device
    expiring = cl.derive(app, None, [cl.ExpiresAt(NOW + 60), cl.Gateway(GW)]).to_bytes()
    check(expiring, root)
    auth._verified.clear()
    fresh = {
        "expired": error_of(lambda: check(expiring, root, now=NOW + 60)),
        "elsewhere": error_of(lambda: check(expiring, root, gateway="gw-b")),
        "write": error_of(lambda: check(expiring, root, method="set", mutating=True)),
    }
    check(expiring, root)  # remembered again
    assert error_of(lambda: check(expiring, root, now=NOW + 60)) == fresh["expired"]
    assert error_of(lambda: check(expiring, root, gateway="gw-b")) == fresh["elsewhere"]
    assert error_of(lambda: check(expiring, root, method="set", mutating=True)) == fresh["write"]
    assert "expired" in fresh["expired"] and "gateway" in fresh["elsewhere"]
    assert "does not permit sensor:set" in fresh["write"]
    assert check(expiring, root).origin == "device"  # and still fine where it is fine


def test_memory_is_per_origin_key_and_bounded(device, monkeypatch):
    root, app = device
    token = app.to_bytes()
    check(token, root)
    other_root = cl.root(cl.new_secret()).to_bytes()
    # the same bytes against another device's root: not a hit, and refused
    assert "wrong origin or forged" in error_of(lambda: check(token, other_root))
    gw_token = cl.mint(SECRET, [cl.Service("sensor", ["read"])]).to_bytes()
    assert check(gw_token, None).origin == "gateway"
    revoked = _revoked(cl.chain_tags(SECRET, cl.load(gw_token).frames)[-1])
    assert "revoked" in error_of(lambda: check(gw_token, None, revoked)).lower()
    monkeypatch.setattr(auth, "VERIFIED_CACHE_SIZE", 2)
    check(cl.derive(app, None, [cl.ExpiresAt(NOW + 5)]).to_bytes(), root)
    assert len(auth._verified) <= 2


def test_forged_and_malformed_tokens_are_never_remembered(device):
    root, app = device
    forged = bytearray(app.to_bytes())
    forged[-1] ^= 1
    assert "wrong origin or forged" in error_of(lambda: check(bytes(forged), root))
    assert "malformed" in error_of(lambda: check(b"\x00garbage", root))
    assert not auth._verified


@pytest.mark.parametrize("service,method,args,seq,hashes", [
    ("sensor", "read", b'{"unit":"C"}', 1_700_000_000_123, 0),
    ("sensor", "read", b"", 1, 1),
    ("valve", "set", b"x" * 16384, 2**63 - 1, 3),
    ("s" * 200, "m" * 200, b"{}", 5, 16),  # more hashes than a request frame may hold: the first 16
    ("s" * 300, "m" * 300, b"{}", 5, 16),  # too large a frame: both paths refuse it alike
    ("sensör", "lesen", b"[]", 99, 2),
])
def test_request_tokens_are_byte_for_byte_the_librarys(service, method, args, seq, hashes):
    """The minting fast path gives exactly the CAPLets library's request token (and its
    refusals), for a plain root and for a parent that is no plain root."""
    root = cl.root(cl.new_secret())
    chain = tuple(bytes([i]) * 32 for i in range(hashes + (2 if hashes == 16 else 0)))
    parents = [root.to_bytes(), cl.derive(root, [cl.Service("sensor", ["read"])]).to_bytes(), root]
    for parent in parents:
        for _ in range(2):  # the second time from the remembered root and chain
            try:
                want = auth.request_token_reference(parent, service, method, args, seq, chain)
            except (cl.TokenError, ValueError) as exc:
                with pytest.raises(type(exc)):
                    auth.request_token(parent, service, method, args, seq, chain)
                continue
            got = auth.request_token(parent, service, method, args, seq, chain)
            assert got == want
            tok = cl.load(got)
            assert tok.request.sequence == seq and tok.tag == want[-32:]


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 16383, 16384, 2**41 + 5, 2**63, 2**64 - 1, 2**64, -1])
def test_request_token_sequences_encode_as_the_librarys(seq):
    """Every sequence width (and the out-of-range ones, refused alike) mints the library's bytes."""
    root = cl.root(cl.new_secret()).to_bytes()
    try:
        want = auth.request_token_reference(root, "sensor", "read", b"{}", seq, (b"h" * 32,))
    except ValueError as exc:
        with pytest.raises(type(exc)):
            auth.request_token(root, "sensor", "read", b"{}", seq, (b"h" * 32,))
        return
    assert auth.request_token(root, "sensor", "read", b"{}", seq, (b"h" * 32,)) == want


def test_a_token_longer_than_any_token_is_refused_before_it_is_decoded(monkeypatch):
    """A client's 4 MB of token text (gzip made it 4 KB on the wire) cost the gateway's loop
    ~80 ms to decode on every call. Anything longer than the text form of the largest token
    is refused first: nothing decodes or hashes it."""
    from edgistry.firmware.caplets import mint
    from edgistry.gateway.discovery.grpc_service import _token
    from edgistry.gateway.errors import Unauthorized

    decoded = []
    real = mint.decode
    monkeypatch.setattr(mint, "decode", lambda raw: decoded.append(len(raw)) or real(raw))
    huge = b"A" * (4 * 1024 * 1024)
    root = cl.root(cl.new_secret()).to_bytes()
    with pytest.raises(Unauthorized, match="longer than"):
        auth.authorise(huge, "sensor", "read", root, b"g" * 32, "gw", None)
    with pytest.raises(cl.MalformedToken, match="longer than"):
        cl.from_text("A" * (cl.MAX_TOKEN_TEXT + 1))
    assert len(_token(huge)) == cl.MAX_TOKEN_TEXT + 1  # cut, and then refused by the verify
    assert decoded == []
    # a large real token still passes in either form
    big = cl.load(root)
    while len(big.to_bytes()) < cl.MAX_TOKEN_SIZE - 600:
        big = cl.derive(big, [cl.Service(f"sensor{i}", ["read"]) for i in range(20)])
    assert cl.from_text(cl.to_text(big)).to_bytes() == big.to_bytes()
