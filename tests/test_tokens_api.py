"""The CPython token API: minting, deriving, flattening, text form, revocation, replay."""

from __future__ import annotations

import json

import pytest

from edgistry.firmware.caplets import api as cl

SECRET = b"api-test-secret-0123456789abcdef"
NOW = 1_700_000_000


def test_mint_requires_a_real_secret() -> None:
    """Secrets shorter than 16 bytes are refused."""
    with pytest.raises(ValueError):
        cl.root(b"short")
    assert len(cl.new_secret()) == 32


def test_derive_keeps_constraints_and_defaults_capabilities() -> None:
    """derive() carries every constraint and, without capabilities, the leaf's own."""
    a = cl.derive(cl.root(SECRET), [cl.Service("t", ["m", "n"])], [cl.Endpoint("e")])
    b = cl.derive(a, None, [cl.Gateway("g"), cl.Endpoint("e")])
    assert b.capabilities == a.capabilities
    assert list(b.constraints) == [cl.Endpoint("e"), cl.Gateway("g")]
    assert len(b.frames) == 3 and a.frames == b.frames[:2]


def test_derive_rejects_widening_at_once() -> None:
    """An invalid derivation fails where it is made."""
    a = cl.derive(cl.root(SECRET), [cl.Service("t", ["m"])])
    with pytest.raises(cl.InvalidDerivation):
        cl.derive(a, [cl.Service("t", ["m", "n"])])
    with pytest.raises(cl.InvalidDerivation):
        cl.request_token(a, "t", "n")
    with pytest.raises(cl.MalformedToken):
        cl.derive(a, [])  # an explicitly empty capability list: a frame needs one


def test_request_token_fixes_one_operation() -> None:
    """A request token carries service, method, argument digest and sequence."""
    a = cl.derive(cl.root(SECRET), [cl.Service("t", ["*"])])
    req = cl.request_token(a, "t", "m", b"args", 77)
    r = req.request
    assert (r.service, r.method, r.digest, r.sequence) == ("t", "m", cl.request_digest(b"args"), 77)
    assert abs(cl.request_token(a, "t", "m").request.sequence - cl.sequence_now()) < 5000


def test_encryption_exchange_shares_the_tag() -> None:
    """The origin recomputes the tag of a fresh encryption body; bodies differ each time."""
    root = cl.root(SECRET)
    e1, e2 = cl.encryption_token(root), cl.encryption_token(root)
    assert e1.body != e2.body
    assert cl.encryption_tag(SECRET, e1.body) == e1.tag
    assert cl.compute_tag(SECRET, e1.frames) == e1.tag


def test_flatten_gives_an_equivalent_single_frame() -> None:
    """flatten() re-issues the leaf as frame 0 under the secret; only genuine chains."""
    a = cl.derive(cl.root(SECRET), [cl.Service("t", ["m"])], [cl.ExpiresAt(NOW + 10)])
    b = cl.derive(a, None, [cl.Endpoint("e")])
    flat = cl.flatten(b, SECRET)
    assert len(flat.frames) == 1 and flat.leaf == b.leaf
    cl.verify(flat, SECRET, now=NOW, endpoint="e")
    with pytest.raises(cl.ConstraintFailed):
        cl.verify(flat, SECRET, now=NOW + 10, endpoint="e")
    with pytest.raises(cl.BadTag):
        cl.flatten(b, b"wrong-secret-0123456789abcdef...")


def test_text_form_is_strict() -> None:
    """Text tokens are unpadded base64url with exactly one spelling."""
    token = cl.root(SECRET)
    text = cl.to_text(token)
    assert "=" not in text and cl.from_text(text) == token and cl.load(text) == token
    assert cl.load(token.to_bytes()) == token and cl.load(token) is token
    for bad in [text + "=", text[:-1] + "!", text + "A", "", "A"]:
        with pytest.raises(cl.MalformedToken):
            cl.from_text(bad)
    # a non-canonical last character (unused bits set) is refused
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    alt = text[:-1] + last[(last.index(text[-1]) + 1) % 64]
    with pytest.raises(cl.MalformedToken):
        cl.from_text(alt)
    with pytest.raises(cl.MalformedToken):
        cl.load(42)  # type: ignore[arg-type]


def test_verify_convenience_uses_the_clock() -> None:
    """verify() defaults now to the current time and refuses mixed arguments."""
    token = cl.derive(cl.root(SECRET), None, [cl.ExpiresAt(cl.parse_time("+1h"))])
    assert cl.verify(cl.to_text(token), SECRET) == token
    with pytest.raises(TypeError):
        cl.verify(token, SECRET, cl.Context(), now=1)


@pytest.mark.parametrize("text, expected", [
    ("+90s", NOW + 90), ("+15m", NOW + 900), ("+2h", NOW + 7200), ("+1d12h", NOW + 129600),
    ("2023-11-14T22:13:20Z", NOW), ("2023-11-14T22:13:20", NOW),
    ("2023-11-14T23:13:20+01:00", NOW),
])
def test_parse_time(text: str, expected: int) -> None:
    """ISO 8601 (naive = UTC) and +DURATION."""
    assert cl.parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["+", "+5x", "tomorrow", "+1h5"])
def test_parse_time_rejects(text: str) -> None:
    """Bad times raise ValueError."""
    with pytest.raises(ValueError):
        cl.parse_time(text, now=NOW)


# ---- revocation ------------------------------------------------------------------

def test_revocation_set_prunes_by_expiry(tmp_path) -> None:
    """Entries carry the token's expiry and are dropped after it; files round-trip."""
    root = cl.root(SECRET)
    short = cl.derive(root, None, [cl.ExpiresAt(NOW + 10)])
    forever = cl.derive(root, [cl.Service("t", ["*"])])
    rs = cl.RevocationSet()
    rs.revoke_token(short)
    rs.revoke_token(forever)
    assert cl.revocation_hash(short.tag) in rs and short.tag not in rs and len(rs) == 2
    with pytest.raises(cl.Revoked):
        cl.verify(cl.derive(forever, [cl.Service("t", ["m"])]), SECRET, now=NOW, revoked=rs)
    path = tmp_path / "revoked.json"
    rs.save(path)
    again = cl.RevocationSet.load(path)
    assert again.records() == rs.records()
    assert again.prune(now=NOW + 9) == 0 and again.prune(now=NOW + 10) == 1
    assert cl.revocation_hash(short.tag) not in again and cl.revocation_hash(forever.tag) in again
    assert len(cl.RevocationSet.load(tmp_path / "missing.json")) == 0


def test_revocation_merge_from_a_source_keeps_longest_expiry() -> None:
    """merge() takes records from any source (the registry later); the later expiry wins."""

    class Registry:
        def records(self):
            return [(b"\x01" * 32, NOW + 5), (b"\x02" * 32, None)]

    rs = cl.RevocationSet([(b"\x01" * 32, NOW + 50)])
    rs.merge(Registry().records())
    assert dict(rs.records()) == {b"\x01" * 32: NOW + 50, b"\x02" * 32: None}
    with pytest.raises(ValueError):
        rs.revoke(b"short")


def test_revocation_file_errors(tmp_path) -> None:
    """Corrupt lists raise ValueError."""
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError):
        cl.RevocationSet.load(bad)
    bad.write_text(json.dumps({"version": 1, "revoked": [{"tag": "zz"}]}))
    with pytest.raises(ValueError):
        cl.RevocationSet.load(bad)
    bad.write_text(json.dumps({"version": 9, "revoked": []}))
    with pytest.raises(ValueError):
        cl.RevocationSet.load(bad)


# ---- replay ------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _app():
    return cl.derive(cl.root(SECRET), [cl.Service("t", ["*"])])


def test_sequences_must_increase_per_client() -> None:
    """A request is accepted once; per client, sequences must increase."""
    clock = Clock(NOW)
    sv = cl.SequenceVerifier(clock=clock)
    seq = NOW * 1000
    r1 = cl.request_token(_app(), "t", "m", b"", seq)
    sv.verify(r1, SECRET, client="c1")
    with pytest.raises(cl.Replayed) as info:
        sv.verify(r1, SECRET, client="c1")
    assert info.value.last_sequence == seq and not isinstance(info.value, cl.ClockDrift)
    sv.verify(r1, SECRET, client="c2")  # another client has its own sequence
    sv.verify(cl.request_token(_app(), "t", "m", b"", seq + 1), SECRET, client="c1")
    assert sv.last("c1") == seq + 1 and sv.last("c2") == seq


def test_shared_sequence_when_not_per_client() -> None:
    """Without per-client sequences every client shares one."""
    sv = cl.SequenceVerifier(clock=Clock(NOW), per_client=False)
    r1 = cl.request_token(_app(), "t", "m", b"", NOW * 1000)
    sv.verify(r1, SECRET, client="c1")
    with pytest.raises(cl.Replayed):
        sv.verify(r1, SECRET, client="c2")


@pytest.mark.parametrize("offset", [-30_001, 30_001])
def test_clock_drift_returns_the_verifier_sequence(offset: int) -> None:
    """A request too far from the verifier's clock raises ClockDrift with the
    verifier's current sequence; a retry at that sequence succeeds."""
    sv = cl.SequenceVerifier(clock=Clock(NOW))
    with pytest.raises(cl.ClockDrift) as info:
        sv.verify(cl.request_token(_app(), "t", "m", b"", NOW * 1000 + offset), SECRET)
    current = info.value.current_sequence
    assert current == NOW * 1000 and isinstance(info.value, cl.Replayed)
    sv.verify(cl.request_token(_app(), "t", "m", b"", current + 1), SECRET)


def test_replay_verifier_requires_request_tokens_and_prunes() -> None:
    """Non-request tokens are NotPermitted; stale clients are forgotten."""
    clock = Clock(NOW)
    sv = cl.SequenceVerifier(clock=clock)
    with pytest.raises(cl.NotPermitted):
        sv.verify(_app(), SECRET)
    for i in range(1030):
        clock.t = NOW + i * 0.001
        sv.verify(cl.request_token(_app(), "t", "m", b"", int(clock.t * 1000)), SECRET, client=i)
    clock.t = NOW + 100
    for i in range(1030):
        sv.verify(cl.request_token(_app(), "t", "m", b"", int(clock.t * 1000) + i), SECRET,
                  client=("late", i))
    assert len(sv._last) < 2060


def test_a_token_is_its_bytes_whichever_layer_decoded_it() -> None:
    """The core's decode (what cap_verify returns for bytes) and the API's give equal tokens
    with equal hashes, and the API takes the core's token back with its object views."""
    from edgistry.firmware.caplets import cap_codec, cap_verify

    secret = cl.new_secret()
    tok = cl.derive(cl.root(secret), [cl.Service("thermo", ["read"])])
    core = cap_verify.verify(tok.to_bytes(), secret)
    assert type(core) is cap_codec.Token and core == tok and tok == core and hash(core) == hash(tok)
    assert core in {tok} and tok in {core} and core == cap_codec.decode(tok.to_bytes())
    assert core != cap_codec.decode(cl.root(secret).to_bytes())
    again = cl.load(core)
    assert again.capabilities == tok.capabilities and cl.to_text(core) == cl.to_text(tok)
    assert cl.derive(core, [cl.Service("thermo", ["read"])]).frames[:2] == tok.frames
    with pytest.raises(ValueError):
        cap_codec.encryption_frame(cap_codec.decode(cl.root(secret).to_bytes()), b"short")
