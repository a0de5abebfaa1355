"""CometBFT's JSON-RPC 2.0 server behaviour, without the HTTP server.

Theory of operation. :func:`handle` takes one HTTP request (verb, path, query
items, body) and a table of methods, and returns the :class:`Reply` a CometBFT
v0.38 node would give: the same JSON-RPC error codes and HTTP statuses for
every kind of malformed request (recorded from a real v0.38.25 node in
tests/data/rpc_cometbft_v0.38.25.json). Two call styles:

* JSON-RPC POSTed to ``/``: a request object or a batch (an array, at most
  :data:`MAX_BATCH` requests). Unparseable JSON, an ``id`` of the wrong type or a
  ``method`` that is not a string: HTTP 500, -32700, no id. A body over
  :data:`MAX_BODY_BYTES`: HTTP 400, -32600. A batch over the limit: 200, -32600.
  Requests without an id (or with id null) are notifications: no answer. Other
  errors answer 200 with the error object: -32601 for an unknown method (no
  ``data``), -32602 when the params do not convert to the method's arguments,
  -32603 when the method fails. An empty body lists the endpoints (HTML).
* URI calls, ``GET /method?arg=value`` (any verb): arguments are JSON literals
  (strings quoted), byte strings ``0x``-hex or quoted raw text. Errors answer
  HTTP 500 with the error object and id -1; an unknown path is a plain 404.

Parameter conversion follows CometBFT's types: int64 travels as a decimal
string in JSON (a JSON number is -32602), bytes as hex (``abci_query`` data) or
base64 (``tx``), booleans as JSON booleans; unknown names are ignored. Every
error answer is logged as one line; a method that raises something other than
:class:`RpcError` is a bug, answered -32603 and logged as one line too.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000  # CometBFT's rpc.max_body_bytes default
MAX_BATCH = 10  # CometBFT's rpc.max_request_batch_size default
URI_ID = -1  # the id CometBFT puts in every answer to a URI call
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)
MESSAGES = {PARSE_ERROR: "Parse error. Invalid JSON", INVALID_REQUEST: "Invalid Request",
            METHOD_NOT_FOUND: "Method not found", INVALID_PARAMS: "Invalid params",
            INTERNAL_ERROR: "Internal error"}
_INT64 = (-(2**63), 2**63 - 1)


class RpcError(Exception):
    """A JSON-RPC error answer: code, and the ``data`` text (message from the code)."""

    def __init__(self, code: int, data: str = "") -> None:
        super().__init__(f"{code}: {data}")
        self.code, self.data = code, data


def internal(data: str) -> RpcError:
    """A method's failure (CometBFT answers every method error with -32603)."""
    return RpcError(INTERNAL_ERROR, data)


class Kind(Enum):
    INT64 = "int64"  # JSON: a decimal string; URI: digits or a quoted decimal
    STR = "string"
    HEX = "hex"  # JSON: hex string; URI: 0x-hex or quoted raw text
    TX = "tx"  # JSON: base64 string; URI: 0x-hex or quoted raw text
    BOOL = "bool"


_DEFAULTS = {Kind.INT64: None, Kind.STR: "", Kind.HEX: b"", Kind.TX: b"", Kind.BOOL: False}


@dataclass(frozen=True)
class Method:
    """One RPC method: an async function taking the converted params as keywords."""

    fn: Callable[..., Awaitable[Any]]
    params: tuple[tuple[str, Kind], ...] = ()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"


# ---- parameter conversion ----


def _bad(how: str, text: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"error converting {how} params to arguments: {text}")


def _int64(text: str, how: str) -> int:
    s = text[1:] if text[:1] == "-" else text
    if not s.isdigit() or not s.isascii():
        raise _bad(how, f"invalid 64-bit integer encoding {json.dumps(text)}, expected string")
    n = int(text)
    if not _INT64[0] <= n <= _INT64[1]:
        raise _bad(how, f"json: cannot unmarshal number {text} into Go value of type int64")
    return n


def _from_json(kind: Kind, value: Any) -> Any:
    """One JSON-RPC param value converted as CometBFT's amino-JSON decoder does."""
    how = "json"
    if value is None:
        return _DEFAULTS[kind]
    if kind is Kind.INT64:
        if not isinstance(value, str):
            raise _bad(how, f'invalid 64-bit integer encoding "{json.dumps(value)}", expected string')
        return _int64(value, how)
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise _bad(how, f"json: cannot unmarshal {type(value).__name__} into Go value of type bool")
        return value
    if not isinstance(value, str):
        raise _bad(how, f"json: cannot unmarshal {type(value).__name__} into Go value of type {kind.value}")
    if kind is Kind.STR:
        return value
    try:
        return bytes.fromhex(value) if kind is Kind.HEX else base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise _bad(how, f"invalid {'hex' if kind is Kind.HEX else 'base64'} data: {exc}") from exc


def _from_uri(kind: Kind, text: str) -> Any:
    """One URI argument: a JSON literal, or for byte strings 0x-hex or quoted raw text."""
    how = "http"
    quoted = len(text) >= 2 and text[0] == '"' and text[-1] == '"'
    if kind in (Kind.HEX, Kind.TX):
        if text.startswith("0x"):
            try:
                return bytes.fromhex(text[2:])
            except ValueError as exc:
                raise _bad(how, f"invalid hex string: {exc}") from exc
        if quoted:
            return text[1:-1].encode()
        if kind is Kind.HEX:
            raise _bad(how, f"invalid hex string: {text}")
    if kind is Kind.INT64 and not quoted:
        return _int64(text, how)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _bad(how, f"invalid JSON literal {text[:40]!r}: {exc}") from exc
    if kind is Kind.INT64:
        if not isinstance(value, str):
            raise _bad(how, "expected a quoted decimal")
        return _int64(value, how)
    return _from_json(kind, value)


def convert_json_params(method: Method, params: Any) -> dict[str, Any]:
    """JSON-RPC ``params`` (object by name, array by position, or absent) -> keyword arguments."""
    names = [name for name, _ in method.params]
    if params is None:
        given: dict[str, Any] = {}
    elif isinstance(params, dict):
        given = {k: v for k, v in params.items() if k in names}
    elif isinstance(params, list):
        if len(params) > len(names):
            raise _bad("json", f"expected {len(names)} parameters ({names}), got {len(params)}")
        given = dict(zip(names, params))
    else:
        raise _bad("json", "unknown type for JSON params: expected map or array")
    return {name: _from_json(kind, given.get(name)) for name, kind in method.params}


def convert_uri_params(method: Method, query: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """URI query arguments -> keyword arguments (unknown names ignored)."""
    given = dict(query)
    out = {}
    for name, kind in method.params:
        out[name] = _from_uri(kind, given[name]) if name in given and given[name] != "" else _DEFAULTS[kind]
    return out


# ---- answers ----


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(req_id: Any, code: int, data: str | None = None, with_id: bool = True) -> dict:
    err: dict[str, Any] = {"code": code, "message": MESSAGES[code]}
    if data is not None:
        err["data"] = data
    out: dict[str, Any] = {"jsonrpc": "2.0"}
    if with_id:
        out["id"] = req_id
    out["error"] = err
    return out


def _log_error(where: str, code: int, data: str | None) -> None:
    log.warning("rpc %s: %d %s%s", where, code, MESSAGES[code], f": {data[:200]}" if data else "")


async def _call(methods: dict[str, Method], name: str, kwargs_of: Callable[[Method], dict], req_id: Any,
                where: str) -> dict:
    method = methods.get(name)
    if method is None:
        _log_error(f"{where} {name[:60]!r}", METHOD_NOT_FOUND, None)
        return _error(req_id, METHOD_NOT_FOUND)
    try:
        result = await method.fn(**kwargs_of(method))
    except RpcError as err:
        _log_error(f"{where} {name}", err.code, err.data)
        return _error(req_id, err.code, err.data)
    except Exception as exc:  # a bug in a method: answer, one line, no traceback
        log.error("rpc %s %s failed: %r", where, name, exc)
        return _error(req_id, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


def _check_id(raw: Any) -> Any:
    """CometBFT's id rules: strings and numbers (a fraction is truncated); None stays None."""
    if raw is None or isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool)):
        return raw
    if isinstance(raw, float):
        try:
            return int(raw)
        except (OverflowError, ValueError):  # 1e400, Infinity, NaN: not an id
            raise ValueError(f"json-rpc ID ({json.dumps(raw)[:40]}) is not a finite number") from None
    raise ValueError(f"json-rpc ID ({json.dumps(raw)[:40]}) is of unknown type")


async def handle_post(methods: dict[str, Method], body: bytes, endpoints_html: Callable[[], str]) -> Reply:
    """A JSON-RPC request or batch POSTed to ``/``."""
    if not body.strip():
        return Reply(200, endpoints_html().encode(), "text/html")
    try:
        parsed = json.loads(body)
        batch = isinstance(parsed, list)
        items = parsed if batch else [parsed]
        requests = []
        for item in items:
            if not isinstance(item, dict):
                raise ValueError("a request must be a JSON object")
            method = item.get("method", "")
            if not isinstance(method, str):
                raise ValueError("method must be a string")
            requests.append((method, item.get("params"), _check_id(item.get("id"))))
    except (ValueError, RecursionError) as exc:
        data = f"error unmarshaling request: {exc}"
        _log_error("POST /", PARSE_ERROR, data)
        return Reply(500, _dumps(_error(None, PARSE_ERROR, data, with_id=False)))
    if batch and len(requests) > MAX_BATCH:
        data = f"batch request exceeds maximum ({MAX_BATCH}) allowed number of requests"
        _log_error("POST /", INVALID_REQUEST, data)
        return Reply(200, _dumps(_error(None, INVALID_REQUEST, data, with_id=False)))
    answers = []
    for method, params, req_id in requests:
        if req_id is None:
            continue  # a notification: CometBFT answers nothing
        answers.append(await _call(methods, method, lambda m, p=params: convert_json_params(m, p), req_id, "POST"))
    if not answers:
        return Reply(200, b"", None)
    return Reply(200, _dumps(answers[0] if len(answers) == 1 else answers))


async def handle_uri(methods: dict[str, Method], name: str, query: Iterable[tuple[str, str]]) -> Reply:
    """A URI call ``/name?args``; an unknown name is a plain 404, as CometBFT's router gives."""
    if name not in methods:
        return not_found(f"/{name}")
    items = list(query)
    answer = await _call(methods, name, lambda m: convert_uri_params(m, items), URI_ID, "GET")
    return Reply(500 if "error" in answer else 200, _dumps(answer))


def not_found(path: str) -> Reply:
    """A path that names no method: CometBFT's router answers a plain-text 404."""
    if path == "/websocket":  # CometBFT's event stream; clients that try it here fall back to polling
        log.info("rpc /websocket: 404, the embedded node serves no event stream")
    else:
        log.warning("rpc %s: 404, no such endpoint", path[:80])
    return Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")


def too_large() -> Reply:
    """The answer to a body over MAX_BODY_BYTES (CometBFT: 400, -32600, no id)."""
    data = "error reading request body: http: request body too large"
    _log_error("POST /", INVALID_REQUEST, data)
    return Reply(400, _dumps(_error(None, INVALID_REQUEST, data, with_id=False)))


def endpoints_page(base: str, methods: dict[str, Method]) -> str:
    """The HTML endpoint list CometBFT serves at ``/``."""
    links = []
    for name in sorted(methods):
        args = "&".join(f"{p}=_" for p, _ in methods[name].params)
        url = html.escape(f"//{base}/{name}?{args}")
        links.append(f'<a href="{url}">{url}</a></br>')
    return "<html><body><br>Available endpoints:<br><br>" + "".join(links) + "</body></html>"
