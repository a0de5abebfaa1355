"""``edgistry gateway``: run a gateway beside a node; ``edgistry gateway info``: describe one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import click

from ..clikit import UserError, echo_json, home_option, load_config, wait_for_signal
from ..config import HomeError, NodeConfig


def code_line(code: str, path: Path) -> str:
    """How a running gateway announces a new commissioning code (a plain line; the code
    itself only on a terminal: pairing.channel.code_announcement)."""
    from .pairing.channel import code_announcement

    return code_announcement(code, path)


STOP_HINT = "stop with Ctrl-C (or SIGTERM)"


@click.group("gateway", invoke_without_command=True)
@click.option("--home", type=click.Path(path_type=Path), default=None, help="Node home directory (required to run).")
@click.option("--rpc", default=None, help="Node RPC URL (default from the home's config).")
@click.option("--grpc-listen", default=None, help="gRPC address (default 127.0.0.1:26670).")
@click.option("--link-listen", default=None, help="Device link address (default 127.0.0.1:26671).")
@click.option("--http-listen", default=None, help="HTTPS /healthz and /metrics address (default 127.0.0.1:26672).")
@click.option("--peer-listen", default=None,
              help="Mutual-TLS address other gateways forward to (default 127.0.0.1:26673).")
@click.option("--insecure", is_flag=True, default=None,
              help="Serve every port in PLAINTEXT (no TLS): development on a trusted network only.")
@click.pass_context
def gateway_cmd(ctx: click.Context, home: Path | None, rpc: str | None, grpc_listen: str | None,
                link_listen: str | None, http_listen: str | None, peer_listen: str | None,
                insecure: bool | None) -> None:
    """Run the gateway alone, beside a node: pairing, device link, client API (TLS on every port).

    `edgistry gateway --home DIR` runs it; `edgistry gateway info --home DIR`
    prints its id, public key and endpoints.
    """
    if ctx.invoked_subcommand is not None:
        given = (home, rpc, grpc_listen, link_listen, http_listen, peer_listen, insecure or None)
        if any(v is not None for v in given):
            raise click.UsageError(f"put the options after the subcommand: edgistry gateway {ctx.invoked_subcommand} "
                                   "--home DIR")
        return
    if home is None:
        raise click.UsageError("Missing option '--home' (the node home to run the gateway of).")
    cfg = load_config(home)
    cfg.grpc_listen = grpc_listen or cfg.grpc_listen
    cfg.link_listen = link_listen or cfg.link_listen
    cfg.http_listen = http_listen or cfg.http_listen
    cfg.peer_listen = peer_listen or cfg.peer_listen
    cfg.insecure = bool(insecure) or cfg.insecure
    try:
        asyncio.run(_serve(cfg, rpc, lambda m: click.echo(m, err=True)))
    except OSError as exc:
        raise UserError(f"cannot start the gateway: {exc}") from exc


async def _serve(cfg: NodeConfig, rpc_url: str | None, announce: Callable[[str], None]) -> None:
    """Run until SIGINT/SIGTERM, printing each new commissioning code as a plain line."""
    from ..gc_policy import freeze_startup_objects
    from .app import create_gateway

    gateway = create_gateway(cfg, rpc_url, announce)
    await gateway.start()
    gateway.code.on_rotate = lambda code: announce(code_line(code, gateway.code.path))
    freeze_startup_objects()  # no 35 ms full collections under load (gc_policy.py)
    announce(f"gateway running; {STOP_HINT}")
    try:
        await wait_for_signal()
    finally:
        announce("stopping gateway")
        await gateway.stop()


def gateway_info(cfg: NodeConfig) -> dict:
    """What others need to know of this home's gateway (registering it, pinning it, reaching it)."""
    from ..abci_app.txs import gateway_id_for
    from ..config import load_ed25519_pem, public_bytes

    pub = public_bytes(load_ed25519_pem(cfg.keys_dir / "gateway.pem"))
    opts = cfg.extra.get("gateway", {})
    return {
        "gateway_id": gateway_id_for(pub),
        "public_key": pub.hex(),
        "chain_id": cfg.chain_id,
        "rpc_url": cfg.rpc_url,
        "endpoints": {"grpc": str(opts.get("grpc_advertise") or cfg.grpc_listen),
                      "link": str(opts.get("link_advertise") or cfg.link_listen),
                      "http": cfg.http_listen,
                      "peer": str(opts.get("peer_advertise") or cfg.peer_listen)},
        "tls_pin": _pin_info(cfg),
        "commission_code_file": str(cfg.home / "commission.code"),
    }


def _pin_info(cfg: NodeConfig) -> dict | None:
    """The gateway's TLS pin: its certificate file, SHA-256 and name (None: it runs --insecure)."""
    from .tls import Pin, PinError

    if cfg.insecure:
        return None
    try:
        pin = Pin.from_file(cfg.tls_cert_path)
    except PinError:
        return {"file": str(cfg.tls_cert_path), "sha256": None, "name": None}  # made at the gateway's first start
    return {"file": str(cfg.tls_cert_path), "sha256": pin.sha256, "name": pin.name}


@gateway_cmd.command("info")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_cmd(home: Path, as_json: bool) -> None:
    """Print this home's gateway: id, public key (for `registry add-gateway --pubkey`), endpoints, TLS pin."""
    cfg = load_config(home)
    try:
        info = gateway_info(cfg)
    except HomeError as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        echo_json(info)
        return
    ends = info["endpoints"]
    click.echo(f"gateway id    {info['gateway_id']}")
    click.echo(f"public key    {info['public_key']}")
    click.echo(f"chain         {info['chain_id']} (RPC {info['rpc_url']})")
    click.echo(f"gRPC          {ends['grpc']}  (clients, discovery, pairing)")
    click.echo(f"device link   {ends['link']}")
    click.echo(f"HTTPS         {ends['http']}  (/healthz, /metrics)")
    click.echo(f"peers         {ends['peer']}  (mutual TLS, other gateways)")
    pin = info["tls_pin"]
    if pin is None:
        click.echo("TLS pin       none: this gateway runs --insecure (plaintext)")
    elif pin["sha256"] is None:
        click.echo(f"TLS pin       {pin['file']} (written when the gateway first starts)")
    else:
        click.echo(f"TLS pin       {pin['file']}")
        click.echo(f"  SHA-256     {pin['sha256']}")
        click.echo(f"  name        {pin['name']}")
        click.echo(f"clients pin it: --pin {pin['file']} (a copy will do), or --tls-from-registry {info['rpc_url']}",
                   err=True)
    click.echo(f"register it with another registry: edgistry registry add-gateway --home ADMIN_HOME "
               f"--endpoint {ends['grpc']} --pubkey {info['public_key']}", err=True)
