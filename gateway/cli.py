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
@click.option("--http-listen", default=None, help="HTTPS /healthz and /metrics address (default 127.0.0.1:26672).")
@click.option("--peer-listen", default=None,
              help="Mutual-TLS address other gateways forward to (default 127.0.0.1:26673).")
@click.option("--insecure", is_flag=True, default=None,
              help="Serve every port in PLAINTEXT (no TLS): development on a trusted network only.")
def gateway_cmd(home: Path, rpc: str | None, grpc_listen: str | None, link_listen: str | None,
                http_listen: str | None, peer_listen: str | None, insecure: bool | None) -> None:
    """Run the gateway alone, beside a node: pairing, device link, client API (TLS on every port)."""
    from .app import serve

    cfg = load_config(home)
    cfg.grpc_listen = grpc_listen or cfg.grpc_listen
    cfg.link_listen = link_listen or cfg.link_listen
    cfg.http_listen = http_listen or cfg.http_listen
    cfg.peer_listen = peer_listen or cfg.peer_listen
    cfg.insecure = bool(insecure) or cfg.insecure
    try:
        asyncio.run(serve(cfg, rpc, announce=lambda m: click.echo(m, err=True)))
    except OSError as exc:
        raise UserError(f"cannot start the gateway: {exc}") from exc
