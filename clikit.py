"""CLI plumbing shared by every command module (the one place for it).

* :class:`UserError`: a failure the user can fix, printed as one line, exit 1;
  usage errors are click's (exit 2). Library code never calls ``sys.exit``.
* :data:`home_option`: the ``--home`` option of the node commands.
* :func:`load_config`: a node home's config, or a :class:`UserError`.
* :func:`wait_for_signal`: how a server command runs until SIGINT/SIGTERM.
* :func:`echo_json`: the one ``--json`` format (2-space indents, on stdout).
* :class:`Progress` and :func:`progress_echo`: lines on stderr, with the time
  elapsed, while a wait of more than a second goes on (stdout stays clean for
  ``--json``).

It imports nothing of the package but ``config``, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import HomeError, NodeConfig


class UserError(click.ClickException):
    """A failure the user can fix: printed as one line, exit status 1."""


def one_line(message: object) -> str:
    """``message`` on one line (a remote's text may hold newlines; what it holds that would
    drive a terminal is escaped where the CLI writes: textsafe.SafeStream)."""
    return " ".join(str(message).split())


home_option = click.option("--home", type=click.Path(path_type=Path), required=True, help="Node home directory.")


def load_config(home: Path) -> NodeConfig:
    """The node config of ``home``; a missing or malformed home is a :class:`UserError`."""
    try:
        return NodeConfig.load(home)
    except HomeError as exc:
        raise UserError(str(exc)) from exc


async def wait_for_signal() -> None:
    """Return at the first SIGINT or SIGTERM (a server's shutdown request)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def echo_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout: the one format of every ``--json`` (2-space indents)."""
    click.echo(json.dumps(value, indent=2))


def _stamp(elapsed: float) -> str:
    return f"[{elapsed:3.0f} s]"


def progress_echo(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the command's first one."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.find_root().meta if ctx is not None else {}
    started = meta.setdefault("edgistry.progress_started", time.monotonic())
    click.echo(f"{_stamp(time.monotonic() - started)} {message}", err=True)


class Progress:
    """Lines on stderr while a wait goes on: none for the first ``first_s`` (a quick answer
    stays quiet), then one every ``every_s`` and one at each :meth:`update` of the status,
    each stamped with the seconds elapsed. A context manager; the ticking runs in a thread,
    so the wait itself may block."""

    def __init__(self, what: str, first_s: float = 1.0, every_s: float = 5.0,
                 echo: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.first_s, self.every_s = what, first_s, every_s
        self.echo = echo or (lambda line: click.echo(line, err=True))
        self.clock = clock
        self.status = ""
        self.started = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines = 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def _line(self) -> None:
        with self._lock:
            self.lines += 1
            self.echo(f"{_stamp(self.elapsed())} {self.what}" + (f": {self.status}" if self.status else ""))

    def update(self, status: str) -> None:
        """Say what the wait is at now (printed at once once the first second has passed)."""
        changed = status != self.status
        self.status = status
        if changed and self.elapsed() >= self.first_s:
            self._line()

    def _run(self) -> None:
        wait = self.first_s
        while not self._stop.wait(max(wait, 0.0)):
            self._line()
            wait = self.every_s

    def __enter__(self) -> Progress:
        self.started = self.clock()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
