"""``edgistry token``: mint, derive, inspect, verify and revoke CAPLets tokens.

TOKEN arguments take the text form, ``@FILE`` (text or binary token in a
file) or ``-`` (read from standard input). Secret files hold the origin's raw
secret bytes (at least 16).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path

import click

from ...clikit import UserError

from ...firmware.caplets import cap_h3
from ...firmware.caplets.cap_token import Token, decode
from ...firmware.caplets.cap_errors import MalformedToken, TokenError
from ...firmware.caplets.cap_entries import RIGHT_LETTERS, Entry, Identity, Region, Resource, Service
from ...firmware.caplets.cap_entries import (
    BoundTo, Endpoint, ExpiresAt, Gateway, NotBefore, RequireIdentity, SequenceWindow,
)
from ...firmware.caplets.cap_token import permits
from ...firmware.caplets.cap_verify import Context
from ...firmware.caplets.cap_verify import verify as core_verify
from ...firmware.caplets.mint import (
    MIN_SECRET_SIZE, derive, from_text, new_secret, parse_time, request_token, root, to_text,
)
from ...firmware.caplets.cap_crypto import revocation_hash
from ...firmware.caplets.revocation import RevocationSet
from .app_tokens import mint_app_token


def read_token(value: str) -> Token:
    """A token from text, ``@FILE`` or ``-`` (stdin); errors name the file."""
    source = "standard input" if value == "-" else f"token file {value[1:]}" if value.startswith("@") else "TOKEN"
    try:
        if value == "-":
            data = sys.stdin.buffer.read()
        elif value.startswith("@"):
            data = Path(value[1:]).read_bytes()
        else:
            return from_text(value)
        try:
            return from_text(data.decode("ascii"))
        except (UnicodeDecodeError, MalformedToken):
            return decode(data)  # a binary token
    except OSError as exc:
        raise UserError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except TokenError as exc:
        hint = "" if value.startswith(("@", "-")) else " (to read a file, write @FILE)"
        raise UserError(f"{source} is not a token: {exc}{hint}") from exc


def read_secret(path: str) -> bytes:
    try:
        secret = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read secret: {exc}") from exc
    if len(secret) < MIN_SECRET_SIZE:
        raise UserError(f"{path}: a secret is at least {MIN_SECRET_SIZE} bytes")
    return secret


def _split_pair(text: str, what: str) -> tuple[str, str]:
    head, sep, tail = text.partition(":")
    if not sep or not head or not tail:
        raise click.BadParameter(f"expected {what}, got {text!r}")
    return head, tail


def _parse_service(text: str) -> Service:
    stype, sep, methods = text.partition(":")
    names = methods.split(",") if sep else ["*"]
    try:
        return Service(stype, names)
    except ValueError as exc:
        raise click.BadParameter(f"--service {text!r}: {exc}") from exc


def _parse_resource(text: str) -> Resource:
    prefix, sep, letters = text.rpartition(":")
    if not sep:
        prefix, letters = text, "r"
    bits = dict(RIGHT_LETTERS)
    rights = 0
    for ch in letters:
        if ch not in bits:
            raise click.BadParameter(f"--resource rights are letters of 'rwxa', got {letters!r}")
        rights |= bits[ch]
    return Resource(prefix, rights)


def _parse_cell(text: str) -> Region:
    try:
        cell = int(text, 16)
    except ValueError as exc:
        raise click.BadParameter(f"--region takes an H3 cell in hex, got {text!r}") from exc
    if not cap_h3.is_valid_cell(cell):
        raise click.BadParameter(f"--region {text!r} is not a valid H3 cell")
    return Region(cell)


def _time(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


@click.group("token")
def token_group() -> None:
    """Capability tokens (CAPLets): mint, derive, inspect, verify, revoke."""


@token_group.command("root")
@click.option("--secret-file", required=True, type=click.Path(dir_okay=False),
              help="The origin's secret (raw bytes).")
@click.option("--generate", is_flag=True,
              help="Create the secret file with a fresh random secret if it is missing.")
def root_cmd(secret_file: str, generate: bool) -> None:
    """Print the root token of the origin holding the secret."""
    if generate and not os.path.exists(secret_file):
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(new_secret())
    click.echo(to_text(root(read_secret(secret_file))))


@token_group.command("derive")
@click.argument("token")
@click.option("--service", "services", multiple=True, metavar="TYPE[:m1,m2]",
              help="Service type and methods (all methods when omitted).")
@click.option("--resource", "resources", multiple=True, metavar="PREFIX[:rwxa]",
              help="A path prefix and rights (r read, w write, x invoke, a admin).")
@click.option("--region", "regions", multiple=True, metavar="CELL", help="An H3 cell (hex).")
@click.option("--identity", "identities", multiple=True, metavar="ID",
              help="An identity capability (an identity token).")
@click.option("--request", "request", metavar="SERVICE:METHOD",
              help="Make a request token for exactly this operation.")
@click.option("--args", "args", default="", help="Request arguments (text, or @FILE).")
@click.option("--sequence", type=int, help="Request sequence (default: now in ms).")
@click.option("--expires", metavar="ISO8601|+DURATION", help="Expires-at constraint.")
@click.option("--not-before", metavar="ISO8601|+DURATION", help="Not-before constraint.")
@click.option("--endpoint", help="Endpoint binding constraint.")
@click.option("--gateway", help="Gateway binding constraint.")
@click.option("--require-identity", metavar="ID", help="Valid only beside an identity token.")
@click.option("--bind", metavar="TOKEN", help="Valid only beside this (request) token.")
@click.option("--sequence-window", metavar="LOW:HIGH", help="Request sequences LOW <= s < HIGH.")
def derive_cmd(token: str, services: tuple[str, ...], resources: tuple[str, ...],
               regions: tuple[str, ...], identities: tuple[str, ...], request: str | None,
               args: str, sequence: int | None, expires: str | None, not_before: str | None,
               endpoint: str | None, gateway: str | None, require_identity: str | None,
               bind: str | None, sequence_window: str | None) -> None:
    """Print TOKEN derived with narrower capabilities and/or more constraints.

    Without capability options the new frame keeps the current capabilities.
    """
    parent = read_token(token)
    caps: list[Entry] = [_parse_service(s) for s in services]
    caps += [_parse_resource(r) for r in resources]
    caps += [_parse_cell(c) for c in regions]
    caps += [Identity(i) for i in identities]
    cons: list[Entry] = []
    if expires is not None:
        cons.append(ExpiresAt(_time(expires, "--expires")))
    if not_before is not None:
        cons.append(NotBefore(_time(not_before, "--not-before")))
    if endpoint:
        cons.append(Endpoint(endpoint))
    if gateway:
        cons.append(Gateway(gateway))
    if require_identity:
        cons.append(RequireIdentity(require_identity))
    if bind:
        cons.append(BoundTo(read_token(bind).tag))
    if sequence_window:
        low, high = _split_pair(sequence_window, "LOW:HIGH")
        try:
            cons.append(SequenceWindow(int(low), int(high)))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--sequence-window") from exc
    try:
        if request:
            if caps:
                raise click.UsageError("--request takes no capability options")
            service, method = _split_pair(request, "SERVICE:METHOD")
            data = (Path(args[1:]).read_bytes() if args.startswith("@")
                    else args.encode("utf-8"))
            new = request_token(parent, service, method, data, sequence, cons)
        else:
            new = derive(parent, caps or None, cons)
    except TokenError as exc:
        raise UserError(f"{type(exc).__name__}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    click.echo(to_text(new))


def describe(token: Token) -> dict:
    """A JSON-able description of a token."""
    return {
        "tag": token.tag.hex(),
        "size": len(token.to_bytes()),
        "frames": [{
            "capabilities": [{"type": c.name, **c.fields()} for c in f.capabilities],
            "constraints": [{"type": c.name, **c.fields()} for c in f.constraints],
        } for f in token.frames],
    }


def _show_entry(entry: dict) -> str:
    fields = {k: v for k, v in entry.items() if k != "type"}
    if entry["type"] in ("expires_at", "not_before"):
        when = _dt.datetime.fromtimestamp(fields["value"], _dt.timezone.utc)
        fields["value"] = f"{fields['value']} ({when.isoformat()})"
    return entry["type"] + " " + " ".join(
        f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in fields.items())


@token_group.command("inspect")
@click.argument("token")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(token: str, as_json: bool) -> None:
    """Show the frames of TOKEN (no secret needed; nothing is verified)."""
    info = describe(read_token(token))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"token: {len(info['frames'])} frame(s), {info['size']} bytes, tag {info['tag']}")
    last = len(info["frames"]) - 1
    for i, frame in enumerate(info["frames"]):
        click.echo(f"frame {i}{' (leaf)' if i == last else ''}")
        for cap in frame["capabilities"]:
            click.echo(f"  * {_show_entry(cap)}")
        for con in frame["constraints"]:
            click.echo(f"  ? {_show_entry(con)}")


@token_group.command("verify")
@click.argument("token")
@click.option("--secret-file", required=True, type=click.Path(dir_okay=False))
@click.option("--request", "request", metavar="SERVICE:METHOD",
              help="Also require that the token grants this operation.")
@click.option("--revoked", "revoked_file", type=click.Path(dir_okay=False),
              help="A revocation list file (see `token revoke`).")
@click.option("--endpoint", help="The endpoint the token is presented from.")
@click.option("--gateway", help="The gateway the token is presented at.")
@click.option("--aux", multiple=True, metavar="TOKEN", help="Auxiliary (identity) tokens.")
@click.option("--at", "at", metavar="ISO8601|+DURATION", help="Check as of this time.")
def verify_cmd(token: str, secret_file: str, request: str | None, revoked_file: str | None,
               endpoint: str | None, gateway: str | None, aux: tuple[str, ...],
               at: str | None) -> None:
    """Exit 0 when TOKEN is valid for this origin, 1 with the reason otherwise."""
    tok = read_token(token)
    secret = read_secret(secret_file)
    revoked = _load_list(revoked_file) if revoked_file else None
    now = _time(at, "--at") if at else int(_dt.datetime.now().timestamp())
    ctx = Context(now=now, endpoint=endpoint, gateway=gateway,
                  aux=tuple(read_token(a) for a in aux), revoked=revoked)
    try:
        core_verify(tok, secret, ctx)
        if request:
            permits(tok, *_split_pair(request, "SERVICE:METHOD"))
    except TokenError as exc:
        raise UserError(f"invalid: {type(exc).__name__}: {exc}") from exc
    click.echo(f"valid: {len(tok.frames)} frame(s), leaf "
               + ", ".join(c.name for c in tok.capabilities))


def _load_list(path: str) -> RevocationSet:
    try:
        return RevocationSet.load(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"revocation list: {exc}") from exc


# A revocation on chain needs an expiry; a token that never expires is revoked
# until this far-future time (the registry prunes records only after it).
CHAIN_FOREVER = 2**62


@token_group.command("revoke")
@click.argument("tokens", nargs=-1)
@click.option("--list", "list_file", default=None, type=click.Path(dir_okay=False),
              help="A local revocation list file to update (created if missing).")
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="Node home: revoke on the registry, signed by this home's gateway key.")
@click.option("--rpc", default=None, help="Node RPC URL (default: from the home's config).")
@click.option("--wait-all", is_flag=True,
              help="Return only once every registered gateway reports the revocation in force.")
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for the gateway(s) to report the revocation in force.")
@click.option("--prune", is_flag=True, help="Drop expired entries from the --list file.")
def revoke_cmd(tokens: tuple[str, ...], list_file: str | None, home: str | None, rpc: str | None,
               wait_all: bool, timeout: float, prune: bool) -> None:
    """Revoke TOKENS and every token derived from them.

    With --home, on the replicated registry: only each tag's one-way hash
    (computed here) goes on chain. It returns once the revocation is committed
    and in force at this home's gateway (--wait-all: at every registered
    gateway), asking each gateway's Status call for the revocation height it
    has applied; from then on nothing made with these tokens runs (queued work
    ends REVOKED). With --list, in a local list file.
    """
    if not list_file and not home:
        raise click.UsageError("give --list FILE and/or --home DIR")
    if not tokens and not prune:
        raise click.UsageError("give TOKENS to revoke and/or --prune")
    parsed = [read_token(value) for value in tokens]
    if home and parsed:
        _revoke_on_chain(parsed, home, rpc, wait_all, timeout)
    if list_file:
        revoked = _load_list(list_file)
        for token in parsed:
            revoked.revoke_token(token)
        if prune:
            click.echo(f"pruned {revoked.prune()} expired entr(ies)")
        try:
            revoked.save(list_file)
        except OSError as exc:
            raise UserError(f"cannot write {list_file}: {exc}") from exc
    for token in parsed:
        click.echo(f"revoked {revocation_hash(token.tag).hex()}")


def _revoke_on_chain(tokens: list, home: str, rpc: str | None, wait_all: bool, timeout: float) -> None:
    import asyncio

    from ...config import HomeError, NodeConfig, load_ed25519_pem
    from ...chain import ChainClient, ChainError
    from ...proto import registry_pb2 as pb
    from ..submitter import RegistrySubmitter
    from ..tls import Pin, PinError
    from .revoke_wait import InForceTimeout, wait_in_force

    try:
        cfg = NodeConfig.load(home)
        key = load_ed25519_pem(cfg.keys_dir / "gateway.pem")
    except HomeError as exc:
        raise UserError(str(exc)) from exc

    async def submit() -> None:
        async with ChainClient(rpc or cfg.rpc_url) as chain:
            submitter = RegistrySubmitter(chain, key)  # revocations are sent at once, never held for a window
            try:
                done = await asyncio.gather(*(submitter.submit(pb.RevokeToken(
                    tag_hash=revocation_hash(token.tag),
                    expires_at=int(token.expires_at if token.expires_at is not None else CHAIN_FOREVER)))
                    for token in tokens))
            finally:
                await submitter.close()
            height = max(d.height for d in done)
            click.echo(f"committed at height {height}")
            pin = None if cfg.insecure else Pin.from_file(cfg.tls_cert_path)
            where = await wait_in_force(chain, cfg.grpc_listen, height, wait_all, timeout, pin)
            click.echo(f"in force at height {height} at {where}")

    try:
        asyncio.run(submit())
    except (ChainError, InForceTimeout, PinError) as exc:
        raise UserError(str(exc)) from exc


def load_gateway_secret(home: Path) -> bytes:
    """The gateway's HMAC secret from a node home (keys/gateway.secret)."""
    home = Path(home)
    path = home / "keys" / "gateway.secret"
    if not home.is_dir():
        raise UserError(f"no node home at {home}: give the --home of a node (made by `edgistry init` or "
                        "`edgistry up`)")
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{home} is not a node home (no keys/gateway.secret): give the --home of a node "
                        "(made by `edgistry init` or `edgistry up`)") from exc
    except OSError as exc:
        raise UserError(f"cannot read the gateway secret {path}: {exc.strerror or exc}") from exc


@token_group.command("app")
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), required=True, help="Node home.")
@click.option("--name", required=True, help="The application's identity.")
@click.option("--region", default=None, metavar="CELL", help="Limit discovery to this H3 cell (hex).")
@click.option("--service", "services", multiple=True, metavar="TYPE[:m1,m2]",
              help="Also grant these methods (default: read-only, non-mutating methods only).")
@click.option("--expires", default=None, metavar="ISO8601|+DURATION", help="Expiry (e.g. +30d).")
def app_cmd(home: Path, name: str, region: str | None, services: tuple[str, ...], expires: str | None) -> None:
    """Print an application token issued by this node's gateway (only the token)."""
    cell = _parse_cell(region).cell if region else None
    expires_at = _time(expires, "--expires") if expires else None
    try:
        token = mint_app_token(load_gateway_secret(home), name, cell, expires_at,
                               [_parse_service(s) for s in services])
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    click.echo(to_text(token))
