"""Token benchmark: signatures vs HMAC vs CAPLets tokens vs macaroons/biscuits.

Run as ``python benchmarks/tokens.py``. Everything is measured in one run on
this machine, best of N repeats (``timeit``) in each of three passes over
everything (the minimum of each figure is kept) to resist noise, and printed as a
table in the shape of the CAPLets paper's Table 3.2, then ratios against the
targets (verify cost against Ed25519 and a bare HMAC chain), then one line ``RESULT {json}``.

"sign" for a token is minting/deriving it from the origin's root (N-1 derive
steps for N frames); "verify" decodes the token from bytes and runs the full
verification (tag chain, derivations, leaf constraints) as a server would.

For our tokens the "verify" column is the COLD path: every parse cache is
emptied before each call (the cost of emptying it is measured separately and
subtracted), i.e. a token never seen before, which is what a device or
gateway usually gets. The issue's targets are judged on it. The "steady"
column is the steady state, in which the frames of the chain prefix (shared by
a client's requests) were scanned before and come from the frame cache.

The frame scan runs in C (``_capscan``) when the install built it, else in
pure Python (the reference, as on MicroPython). The table says which one the
default path used, and also gives the cold verify with the C scanner switched
off, so both are visible; the targets are judged on the default path.
"""

from __future__ import annotations

import datetime
import hmac
import json
import os
import sys
import timeit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets import cap_codec, cap_token, cap_verify

MSG = os.urandom(32)
SECRET = os.urandom(32)
NOW = 1_700_000_000
DEPTHS = (1, 3, 5)
REPEAT = 7
PASSES = 3  # whole passes over the algorithms and depths; the minimum of each figure is kept


def best_us(fn, budget: float = 0.2) -> float:
    """Best per-call time in microseconds over REPEAT timing runs."""
    timer = timeit.Timer(fn)
    n, t = 1, 0.0
    while t < budget / REPEAT:  # calibrate loops to about budget/REPEAT per run
        n *= 2
        t = timer.timeit(n)
    return min(timer.repeat(REPEAT, n)) / n * 1e6


# ---- signatures ----------------------------------------------------------------

def bench_signatures() -> dict[str, tuple[float, float]]:
    out = {}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PKCS1v15()
    sig = rsa_key.sign(MSG, pss, hashes.SHA256())
    pub = rsa_key.public_key()
    out["RSA-2048 (PKCS1)"] = (best_us(lambda: rsa_key.sign(MSG, pss, hashes.SHA256())),
                               best_us(lambda: pub.verify(sig, MSG, pss, hashes.SHA256())))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    sig = ec_key.sign(MSG, ec.ECDSA(hashes.SHA256()))
    pub = ec_key.public_key()
    out["ECDSA P-256"] = (best_us(lambda: ec_key.sign(MSG, ec.ECDSA(hashes.SHA256()))),
                          best_us(lambda: pub.verify(sig, MSG, ec.ECDSA(hashes.SHA256()))))
    ed_key = ed25519.Ed25519PrivateKey.generate()
    sig = ed_key.sign(MSG)
    pub = ed_key.public_key()
    out["Ed25519"] = (best_us(lambda: ed_key.sign(MSG)), best_us(lambda: pub.verify(sig, MSG)))
    tag = hmac.digest(SECRET, MSG, "sha256")
    out["HMAC-SHA256"] = (best_us(lambda: hmac.digest(SECRET, MSG, "sha256")),
                          best_us(lambda: hmac.compare_digest(hmac.digest(SECRET, MSG, "sha256"), tag)))
    return out


# ---- our tokens -------------------------------------------------------------------

def make_chain(depth: int) -> cl.Token:
    """A realistic chain: root, an app token, narrower tokens with constraints."""
    token = cl.root(SECRET)
    steps = [
        ([cl.Service("thermo", ["read", "set", "status"])], [cl.ExpiresAt(NOW + 3600)]),
        ([cl.Service("thermo", ["read", "status"])], [cl.Endpoint("10.0.0.7")]),
        ([cl.Service("thermo", ["read"])], [cl.Gateway("gw-1")]),
        (None, [cl.NotBefore(NOW - 60)]),
    ]
    for caps, cons in steps[:depth - 1]:
        token = cl.derive(token, caps, cons)
    return token


CTX = cl.Context(now=NOW, endpoint="10.0.0.7", gateway="gw-1")


SCANNER = "C" if cap_codec.FAST_SCAN is not None else "python"


def bare_chain(frames: list[bytes], tag: bytes):
    """The floor: the HMAC chain alone, inline, with the one-shot HMAC the
    library itself uses (``hmac.digest``: OpenSSL)."""
    def chain():
        t = SECRET
        for f in frames:
            t = hmac.digest(t, f, "sha256")
        return hmac.compare_digest(t, tag)
    return chain


def cold_verify_us(raw: bytes) -> float:
    """Verify of a token never seen: the parse cache emptied before each call
    (the cost of emptying it measured and subtracted)."""
    def cold():
        cap_token.clear_cache()
        cap_verify.verify(raw, SECRET, CTX)

    return best_us(cold) - best_us(cap_token.clear_cache)


def pure_cold_verify_us(raw: bytes) -> float:
    """cold_verify_us with the C scanner switched off (the pure-Python scan)."""
    fast = cap_codec.FAST_SCAN
    cap_codec.FAST_SCAN = None
    try:
        return cold_verify_us(raw)
    finally:
        cap_codec.FAST_SCAN = fast


def bench_ours() -> dict[int, dict[str, float]]:
    out = {}
    for depth in DEPTHS:
        token = make_chain(depth)
        raw = token.to_bytes()
        cap_verify.verify(raw, SECRET, CTX)  # must be valid
        cold_us = cold_verify_us(raw)
        out[depth] = {
            "sign": best_us(lambda d=depth: make_chain(d).to_bytes()),
            "verify": cold_us,
            "verify_pure": pure_cold_verify_us(raw) if SCANNER == "C" else cold_us,
            "verify_steady": best_us(lambda raw=raw: cap_verify.verify(raw, SECRET, CTX)),
            "bytes": len(raw),
        }
        frames = [f.raw for f in token.frames]
        tag = token.tag

        chain = bare_chain(frames, tag)

        out[depth]["bare_chain"] = best_us(chain)
    return out


# ---- pymacaroons and biscuits --------------------------------------------------------

CAVEATS = ["service = thermo", "method in read,status", "time < 2030-01-01T00:00",
           "endpoint = 10.0.0.7", "gateway = gw-1"]


def bench_macaroons() -> dict[int, dict[str, float]] | None:
    try:
        import pymacaroons
    except ImportError:
        return None
    key = SECRET.hex()
    out = {}
    for depth in DEPTHS:
        def sign(depth=depth):
            m = pymacaroons.Macaroon(location="edgistry", identifier="root", key=key)
            for c in CAVEATS[:depth]:
                m.add_first_party_caveat(c)
            return m.serialize()

        raw = sign()

        def verify(raw=raw):
            m = pymacaroons.Macaroon.deserialize(raw)
            v = pymacaroons.Verifier()
            v.satisfy_general(lambda c: c in CAVEATS)
            return v.verify(m, key)

        assert verify()
        out[depth] = {"sign": best_us(sign), "verify": best_us(verify)}
    return out


def bench_biscuits() -> dict[int, dict[str, float]] | None:
    try:
        import biscuit_auth as ba
    except ImportError:
        return None
    kp = ba.KeyPair()
    checks = ['check if service("thermo");', 'check if method($m), ["read","status"].contains($m);',
              'check if time($t), $t < 2030-01-01T00:00:00Z;', 'check if endpoint("10.0.0.7");']
    # The authorizer's default 1 ms run-time limit fails a call preempted on a
    # loaded machine; a looser limit changes nothing else (set on every call).
    limits = ba.AuthorizerBuilder("").limits()
    limits.max_time = datetime.timedelta(seconds=1)
    out = {}
    for depth in DEPTHS:
        def sign(depth=depth):
            tok = ba.BiscuitBuilder('right("thermo", "read"); right("thermo", "status");') \
                .build(kp.private_key)
            for c in checks[:depth - 1]:
                tok = tok.append(ba.BlockBuilder(c))
            return tok.to_base64()

        raw = sign()
        policy = ('service("thermo"); method("read"); time(2025-01-01T00:00:00Z); '
                  'endpoint("10.0.0.7"); allow if right("thermo", "read");')

        def verify(raw=raw):
            tok = ba.Biscuit.from_base64(raw, kp.public_key)
            builder = ba.AuthorizerBuilder(policy)
            builder.set_limits(limits)
            return builder.build(tok).authorize()

        verify()
        out[depth] = {"sign": best_us(sign), "verify": best_us(verify)}
    return out


# ---- report -----------------------------------------------------------------------------

def min_of_passes(bench):
    """Run ``bench`` PASSES times and keep each figure's minimum: a burst of noise on
    the shared machine (longer than one figure's REPEAT runs) spoils one pass, not
    the result."""
    runs = [bench() for _ in range(PASSES)]

    def low(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: low([v[k] for v in values]) for k in first}
        if isinstance(first, tuple):
            return tuple(min(col) for col in zip(*values))
        return min(values)
    return low(runs)


def main() -> None:
    sigs = min_of_passes(bench_signatures)
    ours = min_of_passes(bench_ours)
    macs = bench_macaroons()
    bis = bench_biscuits()
    nan = float("nan")
    rows: list[tuple[str, float, float, float, str]] = []
    for name, (s, v) in sigs.items():
        rows.append((name, s, v, nan, "32-byte message"))
    for d in DEPTHS:
        o = ours[d]
        rows.append((f"CAPLets token, {d} frame(s)", o["sign"], o["verify"], o["verify_steady"],
                     f"{o['bytes']} B; {SCANNER} scanner"))
    if SCANNER == "C":
        for d in DEPTHS:
            rows.append((f"  same, pure-Python scan, {d} fr.", nan, ours[d]["verify_pure"], nan,
                         "C scanner off (as on MicroPython)"))
    for d in DEPTHS:
        rows.append((f"bare HMAC chain, {d} link(s)", nan, ours[d]["bare_chain"], nan, "floor"))
    if macs:
        for d in DEPTHS:
            rows.append((f"pymacaroons, {d} caveat(s)", macs[d]["sign"], macs[d]["verify"], nan,
                         ""))
    if bis:
        for d in DEPTHS:
            rows.append((f"biscuit-python, {d} block(s)", bis[d]["sign"], bis[d]["verify"], nan,
                         ""))

    def cell(x: float) -> str:
        return "-" if x != x else f"{x:.2f}"

    print(f"Token benchmark (Python {sys.version.split()[0]}; best of {REPEAT} runs in each of {PASSES} "
          "passes; microseconds)")
    print("CAPLets 'Verify' is cold (token never seen: parse cache emptied before each call); "
          "'Steady' reuses cached frames")
    print(f"CAPLets frame scanner on the default path: {SCANNER}"
          + (" (_capscan extension)" if SCANNER == "C" else
             " (the C extension _capscan was not built)"))
    print(f"{'Algorithm':34} {'Sign us':>10} {'Verify us':>10} {'Steady us':>10}  Notes")
    print("-" * 90)
    for name, s, v, st, note in rows:
        print(f"{name:34} {cell(s):>10} {cell(v):>10} {cell(st):>10}  {note}")
    if not macs:
        print("(pymacaroons not installed: pip install -e .[bench])")
    if not bis:
        print("(biscuit-python not installed: pip install -e .[bench])")

    ed_verify = sigs["Ed25519"][1]
    ratios = {"verify3_over_ed25519": ours[3]["verify"] / ed_verify,
              "verify3_steady_over_ed25519": ours[3]["verify_steady"] / ed_verify}
    for d in DEPTHS:
        ratios[f"ours_over_bare_chain_{d}"] = ours[d]["verify"] / ours[d]["bare_chain"]
        ratios[f"ours_pure_over_bare_chain_{d}"] = ours[d]["verify_pure"] / ours[d]["bare_chain"]
        ratios[f"ours_steady_over_bare_chain_{d}"] = (ours[d]["verify_steady"]
                                                      / ours[d]["bare_chain"])
        if macs:
            ratios[f"pymacaroons_over_ours_{d}"] = macs[d]["verify"] / ours[d]["verify"]
            ratios[f"pymacaroons_over_ours_steady_{d}"] = (macs[d]["verify"]
                                                           / ours[d]["verify_steady"])
    targets = {  # judged on the cold path
        "3-frame verify <= 0.25 x Ed25519 verify": ratios["verify3_over_ed25519"] <= 0.25,
        "faster than pymacaroons at every depth": bool(macs) and all(
            ratios[f"pymacaroons_over_ours_{d}"] > 1 for d in DEPTHS),
        "within 2x of the bare HMAC chain": all(
            ratios[f"ours_over_bare_chain_{d}"] <= 2 for d in DEPTHS),
    }
    print()
    print(f"Targets are judged on the cold verify (default path: {SCANNER} scanner):")
    print(f"3-frame verify / Ed25519 verify: {ratios['verify3_over_ed25519']:.3f} "
          f"(steady {ratios['verify3_steady_over_ed25519']:.3f}; target <= 0.25)")
    for d in DEPTHS:
        line = (f"{d} frame(s): ours / bare HMAC chain {ratios[f'ours_over_bare_chain_{d}']:.2f}x "
                f"(steady {ratios[f'ours_steady_over_bare_chain_{d}']:.2f}x; "
                f"pure-Python scan {ratios[f'ours_pure_over_bare_chain_{d}']:.2f}x; target <= 2)")
        if macs:
            line += (f"; pymacaroons / ours {ratios[f'pymacaroons_over_ours_{d}']:.1f}x "
                     f"(steady {ratios[f'pymacaroons_over_ours_steady_{d}']:.1f}x; target > 1)")
        print(line)
    for name, ok in targets.items():
        print(f"  [{'met' if ok else 'MISSED'}] {name}")
    result = {
        "signatures_us": {k: {"sign": round(s, 3), "verify": round(v, 3)}
                          for k, (s, v) in sigs.items()},
        "caplets_us": {str(d): {k: round(v, 3) for k, v in ours[d].items()} for d in DEPTHS},
        "pymacaroons_us": macs and {str(d): {k: round(v, 3) for k, v in macs[d].items()}
                                     for d in DEPTHS},
        "biscuit_us": bis and {str(d): {k: round(v, 3) for k, v in bis[d].items()}
                               for d in DEPTHS},
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "verify_is_cold": True,
        "scanner": SCANNER,
        "targets_met": targets,
    }
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
