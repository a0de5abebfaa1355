"""JSON-RPC ids that are numbers too large for an integer (1e400, Infinity) or not numbers
(NaN) are a parse error answered as such, not an exception out of the handler (a 500 and a
traceback logged for every such request)."""

from __future__ import annotations

import json

import pytest

from edgistry.abci_app.jsonrpc import PARSE_ERROR, handle_post


@pytest.mark.parametrize("rid", ["1e400", "-Infinity", "NaN"])
async def test_an_id_that_is_not_a_finite_number_is_a_parse_error(rid):
    body = ('{"jsonrpc":"2.0","id":%s,"method":"health"}' % rid).encode()
    reply = await handle_post({}, body, lambda: "")
    answer = json.loads(reply.body)
    assert reply.status == 500 and answer["error"]["code"] == PARSE_ERROR
    assert "finite" in answer["error"]["data"] or "unknown type" in answer["error"]["data"]
