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
