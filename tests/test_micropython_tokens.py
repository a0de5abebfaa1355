"""The verification core runs unchanged under MicroPython and agrees with CPython.

Tokens (valid and invalid in many ways) are made with the CPython library;
the core modules, as ``edgistry device export`` ships them to a board, go
unchanged into the MicroPython WebAssembly port, which verifies each token; the verdicts (error class names) must be identical.
"""

from __future__ import annotations

import ast
from pathlib import Path

import h3

from board_helpers import board_lib

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets import cap_token, cap_verify

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = 1_700_000_000
SEQ = NOW * 1000
CLIENT_HASH = bytes([7]) * 32  # a revocation hash of some client token's tag


def forge(secret: bytes, frames_entries: list[list]) -> bytes:
    """A token with any frames and a correct tag (bypassing derive's checks)."""
    frames = [cap_token.make_frame(e) for e in frames_entries]
    return cap_token.Token(frames, cap_verify.compute_tag(secret, frames)).to_bytes()


def raw_token(secret: bytes, frame_bytes: list[bytes]) -> bytes:
    """A token from raw frame bytes (possibly malformed) with a correct tag."""
    body = cap_token.encode_body(frame_bytes)
    return body + cap_verify.compute_tag(secret, frame_bytes)


def cases() -> list[tuple[str, bytes, bytes, dict]]:
    """(name, token bytes, secret, context fields) for many verdicts."""
    cell = h3.str_to_int(h3.latlng_to_cell(34.41, -119.85, 7))
    child = h3.str_to_int(h3.cell_to_children(h3.int_to_str(cell), 9)[0])
    other_cell = h3.str_to_int(h3.latlng_to_cell(48.85, 2.35, 9))
    root = cl.root(SECRET)
    app = cl.derive(root, [cl.Service("thermo", ["read", "write"]), cl.Region(cell)],
                    [cl.ExpiresAt(NOW + 60), cl.Endpoint("10.0.0.7")])
    narrow = cl.derive(app, [cl.Service("thermo", ["read"])], [cl.SequenceWindow(SEQ, SEQ + 10**6)])
    req = cl.request_token(narrow, "thermo", "read", b"{}", SEQ + 5)
    ctx = {"now": NOW, "endpoint": "10.0.0.7"}
    ident_root = cl.derive(root, [cl.Identity("bob")])
    needs_bob = cl.derive(root, [cl.Service("door", ["open"])], [cl.RequireIdentity("bob")])
    bob_req = cl.request_token(needs_bob, "door", "open", b"", SEQ)
    bob_id = cl.derive(ident_root, None, [cl.BoundTo(bob_req.tag)])
    unbound_id = ident_root
    authorised = cl.request_token(root, "thermo", "read", b"{}", SEQ,
                                  [cl.AuthorisedBy([CLIENT_HASH, bytes(range(32))])]).to_bytes()
    b = req.to_bytes()
    out = [
        ("root", root.to_bytes(), SECRET, {}),
        ("request", b, SECRET, ctx),
        ("request_last_seq_ok", b, SECRET, dict(ctx, last_sequence=SEQ)),
        ("region_child", cl.derive(root, [cl.Region(child)]).to_bytes(), SECRET, {}),
        ("flattened", cl.flatten(req, SECRET).to_bytes(), SECRET, ctx),
        ("identity_bound", bob_req.to_bytes(), SECRET, {"aux": [bob_id.to_bytes()]}),
        ("wrong_secret", b, OTHER, ctx),
        ("bit_flip_frame", b[:10] + bytes([b[10] ^ 1]) + b[11:], SECRET, ctx),
        ("bit_flip_tag", b[:-1] + bytes([b[-1] ^ 0x80]), SECRET, ctx),
        ("truncated", b[:-1], SECRET, ctx),
        ("extended", b + b"\x00", SECRET, ctx),
        ("empty", b"", SECRET, {}),
        ("bad_version", b"\x02" + b[1:], SECRET, ctx),
        ("frame_removed", cap_token.Token(req.frames[:2] + req.frames[3:], req.tag).to_bytes(),
         SECRET, ctx),
        ("frames_swapped", cap_token.Token((req.frames[0], req.frames[2], req.frames[1],
                                            req.frames[3]), req.tag).to_bytes(), SECRET, ctx),
        ("widened_methods", forge(SECRET, [[cl.Root()], [cl.Service("t", ["a"])],
                                           [cl.Service("t", ["a", "b"])]]), SECRET, {}),
        ("widened_region", forge(SECRET, [[cl.Root()], [cl.Region(child)],
                                          [cl.Region(cell)]]), SECRET, {}),
        ("disjoint_region", forge(SECRET, [[cl.Root()], [cl.Region(cell)],
                                           [cl.Region(other_cell)]]), SECRET, {}),
        ("widened_rights", forge(SECRET, [[cl.Root()], [cl.Resource("/a", cl.READ)],
                                          [cl.Resource("/a/b", cl.READ | cl.WRITE)]]), SECRET, {}),
        ("sibling_prefix", forge(SECRET, [[cl.Root()], [cl.Resource("/home/al", cl.READ)],
                                          [cl.Resource("/home/alice", cl.READ)]]), SECRET, {}),
        ("dropped_constraint", forge(SECRET, [[cl.Root(), cl.Endpoint("x")], [cl.Root()]]),
         SECRET, {"endpoint": "x"}),
        ("after_request", forge(SECRET, [[cl.Root()], [req.request], [cl.Root()]]), SECRET, {}),
        ("after_encryption", forge(SECRET, [[cl.Root()], [cl.Encryption(bytes(16))],
                                            [cl.Encryption(bytes(16))]]), SECRET, {}),
        ("identity_mismatch", forge(SECRET, [[cl.Identity("a")], [cl.Identity("b")]]), SECRET, {}),
        ("cross_type", forge(SECRET, [[cl.Identity("a")], [cl.Service("a", ["*"])]]), SECRET, {}),
        ("expired", b, SECRET, dict(ctx, now=NOW + 60)),
        ("no_clock", b, SECRET, {"endpoint": "10.0.0.7"}),
        ("not_before", forge(SECRET, [[cl.Root(), cl.NotBefore(NOW)]]), SECRET, {"now": NOW - 1}),
        ("endpoint", b, SECRET, dict(ctx, endpoint="10.0.0.8")),
        ("gateway", forge(SECRET, [[cl.Root(), cl.Gateway("gw1")]]), SECRET, {"gateway": "gw2"}),
        ("sequence_window", cl.request_token(narrow, "thermo", "read", b"", SEQ + 10**6)
         .to_bytes(), SECRET, ctx),
        ("window_without_request", narrow.to_bytes(), SECRET, ctx),
        ("identity_missing", bob_req.to_bytes(), SECRET, {}),
        ("identity_unbound", bob_req.to_bytes(), SECRET, {"aux": [unbound_id.to_bytes()]}),
        ("bound_alone", bob_id.to_bytes(), SECRET, {}),
        ("unknown_constraint", forge(SECRET, [[cl.Root(), cl.UnknownConstraint(0x9F, b"x")]]),
         SECRET, {}),
        ("unknown_capability", raw_token(SECRET, [b"\x7f\x00"]), SECRET, {}),
        ("no_capability", raw_token(SECRET, [cl.Endpoint("x").raw]), SECRET, {}),
        ("two_with_request", raw_token(SECRET, [req.request.raw + cl.Root().raw]), SECRET, {}),
        ("non_minimal_varint", raw_token(SECRET, [b"\x01\x80\x00"]), SECRET, {}),
        ("root_payload", raw_token(SECRET, [b"\x01\x01\x00"]), SECRET, {}),
        ("invalid_cell", raw_token(SECRET, [b"\x04\x01\x05"]), SECRET, {}),
        ("bad_utf8", raw_token(SECRET, [b"\x05\x02\x01\xff"]), SECRET, {}),
        ("oversize_frame", raw_token(SECRET, [b"\x83\x88\x08\x86\x08" + b"a" * 1030]), SECRET, {}),
        ("revoked_root", b, SECRET, dict(ctx, revoked=[cl.revocation_hash(root.tag)])),
        ("revoked_leaf", b, SECRET, dict(ctx, revoked=[cl.revocation_hash(req.tag)])),
        ("raw_tag_listed", b, SECRET, dict(ctx, revoked=[root.tag, req.tag])),
        ("revoked_authoriser", authorised, SECRET, dict(ctx, revoked=[CLIENT_HASH])),
        ("authoriser_not_revoked", authorised, SECRET, dict(ctx, revoked=[bytes(32)])),
        ("revoked_other", b, SECRET, dict(ctx, revoked=[bytes(32)])),
        ("replayed", b, SECRET, dict(ctx, last_sequence=SEQ + 5)),
    ]
    return out


def cpython_verdict(token: bytes, secret: bytes, fields: dict) -> str:
    fields = dict(fields)
    fields["aux"] = tuple(fields.get("aux", ()))
    if "revoked" in fields:
        fields["revoked"] = set(fields["revoked"])
    try:
        cap_verify.verify(token, secret, cap_verify.Context(**fields))
    except cl.TokenError as exc:
        return type(exc).__name__
    return "ok"


SCRIPT = r'''
import binascii
from edgistry.firmware.caplets.cap_verify import verify, Context, encryption_tag
from edgistry.firmware.caplets.cap_errors import TokenError
from edgistry.firmware.caplets import cap_crypto
print("hmac.digest present:", cap_crypto.FAST_DIGEST is not None)
print("compare_digest present:", cap_crypto.FAST_COMPARE is not None)
h = binascii.unhexlify
for name, token, secret, fields in CASES:
    kw = {}
    for k in fields:
        v = fields[k]
        if k == "aux":
            v = tuple([h(a) for a in v])
        elif k == "revoked":
            v = set([h(t) for t in v])
        kw[k] = v
    try:
        verify(h(token), h(secret), Context(**kw))
        verdict = "ok"
    except TokenError as e:
        verdict = type(e).__name__
    print("VERDICT", name, verdict)
tag = encryption_tag(h(SECRET), h(ENC_BODY))
print("ENC", binascii.hexlify(tag).decode())
'''


def _hexify(fields: dict) -> dict:
    out = dict(fields)
    if "aux" in out:
        out["aux"] = [a.hex() for a in out["aux"]]
    if "revoked" in out:
        out["revoked"] = [t.hex() for t in out["revoked"]]
    return out


def test_micropython_verdicts_match_cpython(micropython, tmp_path: Path) -> None:
    """Every case gets the same verdict from the core on MicroPython as on CPython."""
    all_cases = cases()
    expected = {name: cpython_verdict(tok, sec, f) for name, tok, sec, f in all_cases}
    # the table covers every verdict class
    assert {"ok", "BadTag", "MalformedToken", "InvalidDerivation", "ConstraintFailed",
            "Revoked", "Replayed"} <= set(expected.values())
    enc = cl.encryption_token(cl.root(SECRET), bytes(range(16)))
    literal = [(n, t.hex(), s.hex(), _hexify(f)) for n, t, s, f in all_cases]
    script = (f"CASES = {literal!r}\nSECRET = {SECRET.hex()!r}\nENC_BODY = {enc.body.hex()!r}\n"
              + SCRIPT)
    out = micropython.run(script, [board_lib(tmp_path) / "edgistry"])
    lines = out.splitlines()
    # MicroPython's environment: its hmac lacks digest/compare_digest, so the
    # core's own HMAC and comparison are what ran there
    assert "hmac.digest present: False" in lines
    assert "compare_digest present: False" in lines
    got = {}
    for line in lines:
        if line.startswith("VERDICT "):
            _, name, verdict = line.split()
            got[name] = verdict
    assert got == expected
    assert f"ENC {enc.tag.hex()}" in lines


def test_micropython_environment(micropython) -> None:
    """The port has hashlib.sha256, an hmac without digest, and no socket."""
    out = micropython.run(
        "import hashlib, hmac\n"
        "print(hashlib.sha256(b'abc').digest().hex())\n"
        "print(sorted(n for n in dir(hmac) if not n.startswith('_')))\n"
        "try:\n    import socket\n    print('socket')\nexcept ImportError:\n    print('no socket')\n")
    lines = out.splitlines()
    assert lines[0] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert ast.literal_eval(lines[1]) == ["HMAC", "new"]
    assert lines[2] == "no socket"
