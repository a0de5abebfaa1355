"""CLI plumbing shared by every command module (the one place for it).

* :class:`UserError`: a failure the user can fix, printed as one line, exit 1;
  usage errors are click's (exit 2). Library code never calls ``sys.exit``.
* :data:`home_option`: the ``--home`` option of the node commands.
* :func:`load_config`: a node home's config, or a :class:`UserError`.
* :func:`wait_for_signal`: how a server command runs until SIGINT/SIGTERM.

It imports nothing of the package but ``config``, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from .config import HomeError, NodeConfig


class UserError(click.ClickException):
    """A failure the user can fix: printed as one line, exit status 1."""


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
