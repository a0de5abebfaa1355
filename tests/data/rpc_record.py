#!/usr/bin/env python3
"""Send a fixed list of malformed / edge-case requests to a CometBFT-style RPC
and record what comes back, as a JSON list of {name, request, status,
content_type, body, body_is_json[, target]}.

    python3 tests/data/rpc_record.py http://127.0.0.1:26657 -o fixture.json --label "cometbft 0.38.25 kvstore"

How tests/data/rpc_cometbft_v0.38.25.json was recorded (a fresh kvstore chain):

    cometbft init --home H
    cometbft start --home H --proxy_app=kvstore --rpc.laddr tcp://127.0.0.1:36657 \
        --p2p.laddr tcp://127.0.0.1:36656 &
    python3 tests/data/rpc_record.py http://127.0.0.1:36657 \
        -o tests/data/rpc_cometbft_v0.38.25.json --label "cometbft 0.38.25 kvstore"

tests/test_rpc_conformance.py sends the same requests (REQUESTS, via send())
to the embedded node and compares status and error code with the recording.

``body`` is the parsed JSON when the response parses as JSON, else the raw
text (``body_is_json`` says which). Huge request bodies are generated from a
short spec (``body_gen``) so the fixture stays small. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.parse


def rpc(method, params=None, id_=1, **extra):
    msg = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    msg.update(extra)
    return json.dumps(msg)


def get(name, path):
    return {"name": name, "method": "GET", "path": path}


def post(name, body, path="/", content_type="application/json"):
    return {"name": name, "method": "POST", "path": path, "body": body, "content_type": content_type}


def post_gen(name, gen, path="/"):
    return {"name": name, "method": "POST", "path": path, "body_gen": gen, "content_type": "application/json"}


FUTURE = "100000000"
HUGE = "99999999999999999999"  # > 2^63

REQUESTS = [
    # ---- GET, URI style ----
    get("uri_health", "/health"),
    get("uri_abci_info", "/abci_info"),
    get("uri_status_extra_param", "/status?foo=bar"),
    get("uri_block_results_height_abc", "/block_results?height=abc"),
    get("uri_block_results_height_quoted_abc", '/block_results?height="abc"'),
    get("uri_block_results_height_neg1", "/block_results?height=-1"),
    get("uri_block_results_height_0", "/block_results?height=0"),
    get("uri_block_results_height_future", f"/block_results?height={FUTURE}"),
    get("uri_block_results_height_huge", f"/block_results?height={HUGE}"),
    get("uri_block_height_neg1", "/block?height=-1"),
    get("uri_block_height_huge", f"/block?height={HUGE}"),
    get("uri_block_height_0", "/block?height=0"),
    get("uri_block_height_future", f"/block?height={FUTURE}"),
    get("uri_abci_query_bad_hex", '/abci_query?path="/store"&data=zz'),
    get("uri_abci_query_bad_hex_0x", '/abci_query?path="/store"&data=0xzz'),
    get("uri_abci_query_unquoted_path", "/abci_query?path=/store&data=0x00"),
    get("uri_abci_query_height_abc", '/abci_query?path="/store"&data=0x00&height=abc'),
    get("uri_broadcast_tx_sync_notbase64", "/broadcast_tx_sync?tx=notbase64"),
    get("uri_broadcast_tx_sync_quoted_raw", '/broadcast_tx_sync?tx="notbase64"'),
    get("uri_broadcast_tx_sync_missing_tx", "/broadcast_tx_sync"),
    get("uri_tx_search_unquoted_query", "/tx_search?query=tx.height=1"),
    get("uri_unknown_path", "/nosuch"),
    get("uri_root", "/"),
    # ---- POST JSON-RPC to / ----
    post("rpc_health_ok", rpc("health")),
    post("rpc_block_results_height_neg1", rpc("block_results", {"height": "-1"})),
    post("rpc_block_results_height_abc", rpc("block_results", {"height": "abc"})),
    post("rpc_block_results_height_number", rpc("block_results", {"height": 5})),
    post("rpc_block_results_height_0", rpc("block_results", {"height": "0"})),
    post("rpc_block_results_height_future", rpc("block_results", {"height": FUTURE})),
    post("rpc_block_results_height_huge", rpc("block_results", {"height": HUGE})),
    post("rpc_block_results_height_null", rpc("block_results", {"height": None})),
    post("rpc_method_list", json.dumps({"jsonrpc": "2.0", "id": 1, "method": ["status"], "params": {}})),
    post("rpc_method_missing", json.dumps({"jsonrpc": "2.0", "id": 1, "params": {}})),
    post("rpc_method_unknown", rpc("nosuch", {})),
    post("rpc_jsonrpc_1_0", json.dumps({"jsonrpc": "1.0", "id": 1, "method": "health", "params": {}})),
    post("rpc_jsonrpc_missing", json.dumps({"id": 1, "method": "health", "params": {}})),
    post("rpc_id_missing", json.dumps({"jsonrpc": "2.0", "method": "health", "params": {}})),
    post("rpc_id_null", rpc("health", {}, id_=None)),
    post("rpc_id_object", rpc("health", {}, id_={"a": 1})),
    post("rpc_id_string", rpc("health", {}, id_="abc")),
    post("rpc_id_float", rpc("health", {}, id_=1.5)),
    post("rpc_empty_body", ""),
    post("rpc_html_body", "<html><body>hello</body></html>", content_type="text/html"),
    post("rpc_invalid_json", '{"jsonrpc": "2.0", "id": 1, "method": "health"'),
    post("rpc_batch_empty", "[]"),
    post("rpc_batch_one", "[" + rpc("health", {}) + "]"),
    post("rpc_batch_two_one_bad", "[" + rpc("health", {}, id_=1) + "," + rpc("nosuch", {}, id_=2) + "]"),
    post("rpc_batch_11", "[" + ",".join(rpc("health", {}, id_=i) for i in range(11)) + "]"),
    post("rpc_params_list_block_results", rpc("block_results", ["1"])),
    post("rpc_params_list_block_results_number", rpc("block_results", [1])),
    post("rpc_params_list_too_many", rpc("block_results", ["1", "2"])),
    post("rpc_params_string", rpc("block_results", "1")),
    post("rpc_params_null", rpc("health", None) [:-1] + ', "params": null}'),
    post("rpc_content_type_text_plain", rpc("health", {}), content_type="text/plain"),
    post_gen("rpc_huge_body_1_1MB", {"kind": "tx", "size": 1_100_000}),
    post_gen("rpc_huge_body_3MB", {"kind": "tx", "size": 3_000_000}),
    post("rpc_abci_query_path_number", rpc("abci_query", {"path": 5, "data": ""})),
    post("rpc_abci_query_data_number", rpc("abci_query", {"path": "/store", "data": 5})),
    post("rpc_abci_query_data_bad_hex", rpc("abci_query", {"path": "/store", "data": "zz"})),
    post("rpc_abci_query_height_number", rpc("abci_query", {"path": "/store", "data": "", "height": 1})),
    post("rpc_abci_query_prove_string", rpc("abci_query", {"path": "/store", "data": "", "prove": "yes"})),
    post("rpc_broadcast_tx_sync_tx_number", rpc("broadcast_tx_sync", {"tx": 123})),
    post("rpc_broadcast_tx_sync_tx_notbase64", rpc("broadcast_tx_sync", {"tx": "notbase64!"})),
    post("rpc_broadcast_tx_sync_tx_missing", rpc("broadcast_tx_sync", {})),
    post("rpc_broadcast_tx_sync_tx_hex", rpc("broadcast_tx_sync", {"tx": "0xzz"})),
    post("rpc_status_unknown_param", rpc("status", {"height": "abc"})),
    post("rpc_status_params_string", rpc("status", "x")),
    post("rpc_block_height_bool", rpc("block", {"height": True})),
    post("rpc_block_height_number", rpc("block", {"height": 1})),
    post("rpc_block_height_neg1", rpc("block", {"height": "-1"})),
    post("rpc_tx_search_query_number", rpc("tx_search", {"query": 5})),
    post("rpc_tx_search_page_number", rpc("tx_search", {"query": "tx.height=1", "page": 1})),
    post("rpc_tx_search_page_string", rpc("tx_search", {"query": "tx.height=1", "page": "1"})),
    post("rpc_tx_search_bad_query", rpc("tx_search", {"query": "!!!"})),
    post("rpc_abci_info_params_number", rpc("abci_info", {"x": 1})),
    post("rpc_abci_info_params_string", rpc("abci_info", "x")),
    # ---- other paths / verbs ----
    post("post_uri_route_status", "", path="/status"),
    post("post_unknown_path", rpc("health", {}), path="/nosuch"),
]


def build_body(req) -> bytes | None:
    if "body_gen" in req:
        g = req["body_gen"]
        if g["kind"] == "tx":  # a broadcast_tx_sync whose body is about `size` bytes
            return rpc("broadcast_tx_sync", {"tx": "A" * (g["size"] // 4 * 4)}).encode()
        raise ValueError(g)
    if "body" in req:
        return req["body"].encode()
    return None


def send(base: str, req, timeout: float) -> dict:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    body = build_body(req)
    headers = {}
    if body is not None:
        headers["Content-Type"] = req.get("content_type", "application/json")
    out: dict = {"name": req["name"], "request": req}
    try:
        conn.request(req["method"], req["path"], body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        out["status"] = resp.status
        out["content_type"] = resp.getheader("Content-Type")
        text = raw.decode("utf-8", errors="replace")
        try:
            out["body"], out["body_is_json"] = json.loads(text), True
        except ValueError:
            out["body"], out["body_is_json"] = text, False
    except (OSError, http.client.HTTPException) as exc:
        out["status"], out["content_type"] = None, None
        out["body"], out["body_is_json"] = f"transport error: {type(exc).__name__}: {exc}", False
    finally:
        conn.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="RPC base URL, e.g. http://127.0.0.1:26657")
    ap.add_argument("-o", "--out", help="write the fixture here (default: stdout)")
    ap.add_argument("--label", default="", help="free text stored in every entry (e.g. 'cometbft 0.38.25')")
    ap.add_argument("--only", help="comma-separated request names")
    ap.add_argument("--timeout", type=float, default=15.0)
    args = ap.parse_args()
    reqs = REQUESTS if not args.only else [r for r in REQUESTS if r["name"] in args.only.split(",")]
    results = [send(args.url, r, args.timeout) for r in reqs]
    if args.label:  # the label goes into every entry so the fixture stays a plain list
        for r in results:
            r["target"] = args.label
    text = json.dumps(results, indent=1) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"{len(results)} requests recorded to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
