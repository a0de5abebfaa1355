"""Build ed25519_vectors.json (the edge-case fixture) from the published sources.

Run once, by hand, where the three public repositories have been mirrored
(``git show`` is used so the exact commit is recorded); the tests only read the
resulting ed25519_vectors.json and need none of this.

    python3 tests/data/build_ed25519_vectors.py /path/to/ed25519-speccheck.git /path/to/CCTV.git /path/to/ed25519-zebra.git

Sets:
* speccheck: the 12 cases of "Taming the many EdDSAs" (Chalkias, Garillot,
  Nikolaenko, SSR 2020; eprint 2020/1244), file cases.json, verbatim, with the
  condition table and the published result rows for LibSodium and PyCA/OpenSSL.
* zip215: the 196 ZIP-215 small-order vectors. Upstream (ed25519-zebra,
  tests/small_order.rs) they are generated at test time, not stored; this
  script regenerates them the same way: every A and R among the 14 encodings of
  the 8-torsion points (8 canonical, 6 non-canonical), S = 0, message "Zcash".
  ZIP 215 (cofactored, lenient decoding) accepts all 196.
* cctv: C2SP/CCTV ed25519/ed25519vectors.json (914 vectors with flags),
  verbatim except that each message is also given in hex.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ed25519_ref.py
import ed25519_ref as ref  # noqa: E402

HERE = Path(__file__).resolve().parent

SPECCHECK_TABLE = [
    # index, S, A order, R order, cofactored, cofactorless, comment  (README "Condition table")
    (0, "S = 0", "small", "small", "V", "V", "small A and R"),
    (1, "0 < S < L", "small", "mixed", "V", "V", "small A only"),
    (2, "0 < S < L", "mixed", "small", "V", "V", "small R only"),
    (3, "0 < S < L", "mixed", "mixed", "V", "V", "succeeds unless full-order is checked"),
    (4, "0 < S < L", "mixed", "mixed", "V", "X", "passes cofactored only"),
    (5, "0 < S < L", "mixed", "L", "V*", "X", "fails cofactored iff (8h) prereduced"),
    (6, "S > L", "L", "L", "V", "V", "S out of bounds"),
    (7, "S >> L", "L", "L", "V", "V", "S out of bounds (high bits set)"),
    (8, "0 < S < L", "mixed", "small*", "V", "V", "non-canonical R, reduced for hash"),
    (9, "0 < S < L", "mixed", "small*", "V", "V", "non-canonical R, not reduced for hash"),
    (10, "0 < S < L", "small*", "mixed", "V", "V", "non-canonical A, reduced for hash"),
    (11, "0 < S < L", "small*", "mixed", "V", "V", "non-canonical A, not reduced for hash"),
]


def git_show(repo: str, path: str) -> tuple[str, str]:
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    text = subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, text=True, check=True).stdout
    return head, text


def last_commit(repo: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "log", "-1", "--format=%H", "--", path],
                          capture_output=True, text=True, check=True).stdout.strip()


def rust_byte_arrays(src: str, name: str) -> list[bytes]:
    """The [[u8; 32]; N] literal called ``name`` in a Rust source, as bytes."""
    body = src[src.index(name):]
    body = body[body.index("= [") + 3:]
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "[":
            depth += 1
            cur = ""
        elif ch == "]":
            if depth == 0:
                break
            depth -= 1
            nums = [int(x, 0) for x in re.findall(r"0x[0-9a-fA-F]+|\d+", cur)]
            out.append(bytes(nums))
        else:
            cur += ch
    return out


def speccheck(repo: str) -> dict:
    head, text = git_show(repo, "cases.json")
    cases = json.loads(text)
    assert len(cases) == 12
    _, readme = git_show(repo, "README.md")
    rows = {}
    for lib in ("LibSodium", "PyCA", "OpenSSL-3.0"):
        m = re.search(r"^\|" + re.escape(lib) + r"\s*\|(.*)\|\s*$", readme, re.M)
        assert m, lib
        rows[lib] = "".join(c.strip() for c in m.group(1).split("|"))
    out = []
    for i, (c, t) in enumerate(zip(cases, SPECCHECK_TABLE)):
        assert t[0] == i
        out.append({"id": f"speccheck-{i}", "pub": c["pub_key"], "sig": c["signature"], "msg": c["message"],
                    "S": t[1], "A_order": t[2], "R_order": t[3], "cofactored": t[4], "cofactorless": t[5],
                    "comment": t[6]})
    return {
        "source": {"repository": "novifinancial/ed25519-speccheck", "commit": head,
                   "file_commit": last_commit(repo, "cases.json"), "path": "cases.json",
                   "license": "Apache-2.0",
                   "paper": "Chalkias, Garillot, Nikolaenko: Taming the many EdDSAs (SSR 2020), IACR eprint 2020/1244"},
        "published_results": rows,
        "cases": out,
    }


def zip215(repo: str) -> dict:
    head, util = git_show(repo, "tests/util/mod.rs")
    excluded = rust_byte_arrays(util, "EXCLUDED_POINT_ENCODINGS: [[u8; 32]; 11]")
    assert len(excluded) == 11 and all(len(e) == 32 for e in excluded)
    # EIGHT_TORSION order as in curve25519-dalek (the i-th element is [i]P, P of order 8).
    g = ref.decode_point(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))
    assert g is not None
    canonical = [ref.encode_point(ref.scalar_mult(i, g)) for i in range(8)]
    # util::non_canonical_point_encodings().take(6): the two "x = -0" ones, then y + p ones.
    noncanon = [bytes.fromhex("01" + "00" * 30 + "80"), bytes.fromhex("ec" + "ff" * 31)]
    for i in range(19):
        for top in (0x7F, 0xFF):
            enc = bytes([237 + i]) + b"\xff" * 30 + bytes([top])
            if ref.decode_point(enc, strict=False) is not None:
                noncanon.append(enc)
    encodings = canonical + noncanon[:6]
    assert len(set(encodings)) == 14 and set(encodings) == ref.small_order_encodings()
    msg = b"Zcash"
    cases = []
    for ai, a in enumerate(encodings):
        A = ref.decode_point(a, strict=False)
        for ri, r in enumerate(encodings):
            R = ref.decode_point(r, strict=False)
            assert A is not None and R is not None
            sig = r + bytes(32)
            k = ref._k(r, a, msg)
            check = ref.point_add(R, ref.scalar_mult(k, A))
            non_canonical_r = ref.encode_point(R) != r
            valid_legacy = not (a == bytes(32) or ref.encode_point(R) in excluded
                                or not ref.is_identity(check) or non_canonical_r)
            cases.append({"id": f"zip215-A{ai:02d}-R{ri:02d}", "pub": a.hex(), "sig": sig.hex(), "msg": msg.hex(),
                          "valid_zip215": True, "valid_legacy_zcash": valid_legacy})
    return {
        "source": {"repository": "ZcashFoundation/ed25519-zebra", "commit": head,
                   "path": "tests/small_order.rs + tests/util/mod.rs (generated there at test time; regenerated here)",
                   "file_commit": last_commit(repo, "tests/small_order.rs"),
                   "license": "MIT OR Apache-2.0",
                   "spec": "ZIP 215 (zcash/zips, zips/zip-0215.rst): cofactored equation, non-canonical A/R allowed, S < L"},
        "cases": cases,
    }


def cctv(repo: str) -> dict:
    head, text = git_show(repo, "ed25519/ed25519vectors.json")
    vectors = json.loads(text)
    cases = [{"id": f"cctv-{v['number']}", "pub": v["key"], "sig": v["sig"], "msg": v["msg"].encode().hex(),
              "msg_text": v["msg"], "flags": sorted(v.get("flags") or [])} for v in vectors]
    return {
        "source": {"repository": "C2SP/CCTV", "commit": head, "path": "ed25519/ed25519vectors.json",
                   "file_commit": last_commit(repo, "ed25519/ed25519vectors.json"),
                   "license": "BSD-3-Clause (ed25519/LICENSE: Google LLC 2019, Filippo Valsorda 2022)"},
        "cases": cases,
    }


def main() -> None:
    spec_repo, cctv_repo, zebra_repo = sys.argv[1:4]
    doc = {
        "about": ("Ed25519 edge-case vectors for Edgistry's signature acceptance rule. Each case: pub (A, 32 bytes), "
                  "sig (R || S, 64 bytes) and msg, all hex. Built by tests/data/build_ed25519_vectors.py from the sources named in each "
                  "set; expected verdicts are in tests/test_ed25519_rule.py."),
        "speccheck": speccheck(spec_repo),
        "zip215": zip215(zebra_repo),
        "cctv": cctv(cctv_repo),
    }
    (HERE / "ed25519_vectors.json").write_text(json.dumps(doc, indent=1) + "\n")
    print({k: len(v["cases"]) for k, v in doc.items() if isinstance(v, dict)})


if __name__ == "__main__":
    main()
