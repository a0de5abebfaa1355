"""``edgistry gateway``: run a gateway beside a node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..clikit import UserError, load_config


@click.command("gateway")
@click.option("--home", type=click.Path(path_type=Path), required=True, help="Node home directory.")
@click.option("--rpc", default=None, help="Node RPC URL (default from the home's config).")
@click.option("--grpc-listen", default=None, help="gRPC address (default 127.0.0.1:26670).")
@click.option("--link-listen", default=None, help="Device link address (default 127.0.0.1:26671).")
@click.option("--http-listen", default=None, help="HTTP /healthz and /metrics address (default 127.0.0.1:26672).")
def gateway_cmd(home: Path, rpc: str | None, grpc_listen: str | None, link_listen: str | None,
                http_listen: str | None) -> None:
    """Run the gateway alone, beside a node: pairing, device link, client API."""
    from .app import serve

    cfg = load_config(home)
    cfg.grpc_listen = grpc_listen or cfg.grpc_listen
    cfg.link_listen = link_listen or cfg.link_listen
    cfg.http_listen = http_listen or cfg.http_listen
    try:
        asyncio.run(serve(cfg, rpc, announce=lambda m: click.echo(m, err=True)))
    except OSError as exc:
        raise UserError(f"cannot start the gateway: {exc}") from exc
