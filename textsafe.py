"""Text from elsewhere made fit for a terminal or a log line.

A device's answer, a gateway's error, a registry string or a request path printed or
logged as it came could clear the screen, rewrite earlier lines, write the clipboard
(OSC 52), hide a link (OSC 8) or start a forged log line. :func:`safe` escapes the
characters that do that; :class:`SafeLogFormatter` applies it to every log message.
Standard library only: the CLI's entry point imports it before anything else.
"""

from __future__ import annotations

import logging
import unicodedata


def safe(text: object) -> str:
    """``text`` fit for a terminal or a log line: control and format characters (C0, C1,
    DEL, bidi overrides: Unicode categories Cc and Cf) escaped as ``\\xNN``/``\\uNNNN``. A
    device's answer, a gateway's error or a registry string printed as it came could clear
    the screen, rewrite earlier lines, write the clipboard (OSC 52) or forge log lines."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)


def _escape(c: str) -> str:
    if unicodedata.category(c) not in ("Cc", "Cf") and c not in "\u2028\u2029":
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


class SafeLogFormatter(logging.Formatter):
    """A formatter whose messages are one line each: what a device, a client or a peer put in
    a logged string cannot start a forged line or carry terminal escapes (:func:`safe`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = safe(record.message)
        return super().formatMessage(record)


def safe_lines(text: str) -> str:
    """:func:`safe`, keeping line breaks and tabs (output that is several lines on purpose)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in " \n\t" else _escape(c) for c in text)


class SafeStream:
    """A text stream whose writes pass through :func:`safe_lines`: the CLI's stdout and
    stderr, so that no remote string it prints (an answer, an error, a registry record) can
    drive the terminal. Everything else (``buffer``, ``fileno``, ``isatty``...) is the
    stream's own."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(safe_lines(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
