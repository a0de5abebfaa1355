"""Tokens as the SDK takes them: a Token, its bytes or text form, or a file holding either.

Whatever the form, the gateway gets the binary encoding; every error names
the file or says which form was expected (:class:`~.errors.TokenFileError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ...firmware.caplets import api as caplets
from .errors import TokenFileError

TokenLike = Union["caplets.Token", bytes, str, os.PathLike]
MAX_TOKEN_FILE = 64 * 1024  # far above any token (MAX_TOKEN_SIZE); a larger file is not one


def load_token(source: TokenLike) -> bytes:
    """The binary encoding of ``source``: a Token, its bytes, its text form, or a path
    (``os.PathLike``, or a ``str`` that is not a token's text form) to a file holding one."""
    if isinstance(source, caplets.Token):
        return source.to_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "the token bytes")
    if isinstance(source, str):
        try:
            return caplets.from_text(source).to_bytes()
        except caplets.TokenError:
            return read_token_file(source)
    if isinstance(source, os.PathLike):
        return read_token_file(source)
    raise TokenFileError(f"a token is a Token, bytes, text or a file path, not {type(source).__name__}")


def read_token_file(path: str | os.PathLike) -> bytes:
    """The token in ``path`` (text or binary form), as bytes."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_TOKEN_FILE:
            raise TokenFileError(f"token file {p}: too large to be a token")
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise TokenFileError(f"token file {p} does not exist") from exc
    except IsADirectoryError as exc:
        raise TokenFileError(f"token file {p} is a directory") from exc
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {p}: {exc.strerror or exc}") from exc
    return _decode(data, f"token file {p}")


def _decode(data: bytes, what: str) -> bytes:
    text = data.strip()
    if not text:
        raise TokenFileError(f"{what}: empty")
    try:
        return caplets.from_text(text.decode("ascii")).to_bytes()
    except (UnicodeDecodeError, caplets.TokenError):
        pass
    try:
        return caplets.decode(data).to_bytes()
    except caplets.TokenError as exc:
        raise TokenFileError(f"{what}: not a token (neither its text nor its binary form: {exc})") from exc
