"""Garbage on the HTTP port is one warning line, not a traceback.

aiohttp logs a request it cannot parse (a gRPC client on the HTTP port sends
an HTTP/2 preface; a scanner sends anything) at ERROR with the parser's
traceback on ``aiohttp.server``. :class:`QuietBadRequests` turns such a
record into one WARNING line naming the peer and the parser's first line;
every other record passes unchanged. The gRPC port needs nothing: the gRPC
core answers garbage with GOAWAY and logs nothing.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

AIOHTTP_SERVER_LOGGER = "aiohttp.server"


class QuietBadRequests(logging.Filter):
    """Rewrites aiohttp's malformed-request records (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.getMessage().rpartition(" from ")[2] or "?"
            first = str(exc.message or exc).strip().splitlines()[0] if (exc.message or str(exc)) else "malformed"
            record.msg, record.args = "HTTP port: refused a malformed request from %s (%s)", (peer, first)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_http_garbage() -> None:
    """Install the filter once (idempotent)."""
    logger = logging.getLogger(AIOHTTP_SERVER_LOGGER)
    if not any(isinstance(f, QuietBadRequests) for f in logger.filters):
        logger.addFilter(QuietBadRequests())
