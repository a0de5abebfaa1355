"""The ``edgistry`` command.

One root group; each subsystem keeps its commands next to its code and is
listed in ``COMMANDS`` (imported lazily, so ``edgistry --help`` stays fast).
User errors raise :class:`~edgistry.clikit.UserError` (exit 1 with one line),
usage errors are click's (exit 2). Library code never calls ``sys.exit``.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .textsafe import SafeLogFormatter, SafeStream

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "init": "edgistry.cluster.node_cli:init_cmd",
    "node": "edgistry.abci_app.cli:node_cmd",
    "up": "edgistry.cluster.node_cli:up_cmd",
    "registry": "edgistry.cluster.registry_cli:registry_group",
    "token": "edgistry.gateway.tokens.cli:token_group",
    "device": "edgistry.firmware.cli:device_group",
    "gateway": "edgistry.gateway.cli:gateway_cmd",
    "pair": "edgistry.gateway.pairing.cli:pair_cmd",
    "invoke": "edgistry.gateway.api.cli:invoke_cmd",
    "result": "edgistry.gateway.api.cli:result_cmd",
    "cluster": "edgistry.cluster.cli:cluster_group",
    "discover": "edgistry.gateway.discovery.cli:discover_cmd",
    "twin": "edgistry.gateway.twins.cli:twin_group",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "EDGISTRY", "help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="edgistry")
def main(verbose: int) -> None:
    """Edgistry: a distributed edge registry for the Internet of Things."""
    # what the CLI prints includes remote strings (answers, errors, registry records): none
    # may drive the terminal (textsafe)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, SafeStream):
            setattr(sys, name, SafeStream(stream))
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler()
    handler.setFormatter(SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
