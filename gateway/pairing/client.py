"""The commissioning tool: pair or unpair a device home with a gateway (``edgistry pair``).

Reads the device home written by ``edgistry device init`` (firmware/runtime/home.py),
runs the Commissioning exchange (pairing.ToolSession), and writes back
``paired.json`` (link endpoint, identity token, pseudonym, gateway id), a
read-only application token file ``app.token`` (0600) and the gateway's TLS
pin ``gateway.pem`` beside it. Usable in process (``await pair_device(...)``,
e.g. by ``edgistry up --demo-devices``).

TLS. With a pin (``pin``), the tool trusts exactly that certificate. Without
one it takes the certificate the gateway presents on first contact, and keeps
it only if the gateway's offer, signed by its Ed25519 key, binds that very
certificate to that key (and, with ``registry_rpc``, if the registry holds the
same key and certificate for the gateway's id; with ``expect_gateway``, if the
id is the expected one). No token travels before that check: the pairing
payload is sealed to the offer's key in any case. ``insecure`` pairs in
plaintext with a gateway run with ``--insecure``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ...config import write_secret_file
from ...firmware.caplets.mint import to_text
from ...firmware.runtime.home import DeviceHome, HomeError
from ..client.aio import AsyncClient
from ..client.errors import ConfigError, EdgistryError
from ..client.transport import TLS, parse_target
from ..errors import GatewayError
from ..tls import Pin, PinError, fetch_certificate
from .channel import ToolSession
from .visibility import to_dicts
from ...proto import gateway_pb2 as gw

DEFAULT_RESOLUTION = 7  # ~5 km^2 cells: a neighbourhood, not a street
DEFAULT_K = 5
EXACT_RESOLUTION = 15  # what the tool gives the gateway; the gateway coarsens it and keeps it


class PairError(Exception):
    """Pairing failed; the message says why (one line)."""


async def check_registered(offer: gw.PairOffer, rpc_url: str) -> None:
    """Refuse a gateway whose signing key is not the one the registry holds for its id."""
    from ...chain import ChainClient, ChainError
    from ...proto import registry_pb2 as pb

    try:
        async with ChainClient(rpc_url) as chain:
            res = await chain.query("/gateway", offer.gateway_id.encode())
    except ChainError as exc:
        raise PairError(f"cannot check the gateway against the registry: {exc}") from exc
    if res.code != 0:
        raise PairError(f"gateway {offer.gateway_id} is not in the registry at {rpc_url}: refusing to pair with it")
    record = pb.GatewayRecord.FromString(res.value)
    if record.pubkey != offer.gateway_pubkey:
        raise PairError(f"gateway {offer.gateway_id} presents a key the registry does not hold for it")
    if not record.tls_cert:
        raise PairError(f"gateway {offer.gateway_id} has not published its TLS certificate in the registry yet "
                        "(a gateway does so a block or two after it starts): try again shortly")
    if record.tls_cert != offer.tls_cert:
        raise PairError(f"gateway {offer.gateway_id} presents a TLS certificate the registry does not hold for it")


async def first_contact(gateway: str) -> Pin:
    """The certificate the gateway presents, unverified: :func:`check_offer` decides whether to keep it."""
    try:
        target = parse_target(gateway)
        return Pin.from_der(await asyncio.to_thread(fetch_certificate, target.host, target.port))
    except (PinError, ConfigError) as exc:
        plain = "does not speak TLS" in str(exc)
        hint = " (give --insecure to pair with a gateway run with --insecure)" if plain else ""
        raise PairError(f"{exc}{hint}") from exc


def check_offer(offer: gw.PairOffer, pin: Pin) -> None:
    """The offer (signed by the gateway's key) must bind the certificate this connection trusts."""
    if offer.tls_cert != pin.cert_der:
        raise PairError(f"gateway {offer.gateway_id}'s offer names another TLS certificate than the one its port "
                        "presents: refusing to pair through it")
    try:
        Pin.from_record(offer.gateway_id, offer.gateway_pubkey, offer.tls_cert, offer.tls_cert_signature)
    except PinError as exc:
        raise PairError(f"gateway {offer.gateway_id}'s TLS certificate: {exc}") from exc


def location_cell(manifest: dict) -> int:
    """The device's H3 cell at the finest resolution (0 without a location)."""
    loc = manifest.get("location")
    if not loc:
        return 0
    import h3

    return h3.str_to_int(h3.latlng_to_cell(float(loc["lat"]), float(loc["lon"]), EXACT_RESOLUTION))


async def pair_device(device_home: Path | str, gateway: str, code: str = "", resolution: int = DEFAULT_RESOLUTION,
                      k: int = DEFAULT_K, unpair: bool = False, expect_gateway: str | None = None,
                      registry_rpc: str | None = None, *, pin: Pin | None = None, insecure: bool = False) -> dict:
    """Pair (or unpair) the device at ``device_home`` with the gateway at ``gateway`` (gRPC HOST:PORT).

    Returns {pseudonym, owner_handle, app_token_file, gateway_id, link_endpoint, height,
    tls_pin_file, tls_pin_sha256} and, when the gateway could tell, ``discovery``: per
    service type whether discovery shows the device (visibility.to_dicts) (unpairing:
    {unpaired, pseudonym, gateway_id}). Raises PairError.
    """
    if insecure and pin is not None:
        raise PairError("--insecure (plaintext) does not go with a pin")
    home = DeviceHome(device_home)
    try:
        root, link_id, manifest = home.root_token(), home.link_id(), home.manifest()
        previous = home.paired() if home.paired_path.exists() else None
    except HomeError as exc:
        raise PairError(str(exc)) from exc
    payload = gw.PairPayload(root_token=root, manifest=json.dumps(manifest).encode(), resolution=resolution, k=k,
                             encrypt=bool(manifest.get("encrypt", False)), link_id=link_id, commission_code=code,
                             unpair=unpair, cell=location_cell(manifest))
    if not insecure and pin is None:
        pin = await first_contact(gateway)
    tool = ToolSession()
    try:
        # no token travels here (the payload is sealed), so plaintext may go to any address
        async with AsyncClient(gateway, tls=None if pin is None else TLS.pinned(pin), insecure=insecure) as client:
            offer = await client.unary("commissioning", "Begin", tool.begin(), timeout=15)
            tool.accept(offer, expect_gateway)
            if pin is not None:
                check_offer(offer, pin)
            if registry_rpc:
                await check_registered(offer, registry_rpc)
            if previous is not None and previous.gateway_id and previous.gateway_id != offer.gateway_id:
                raise PairError(f"this device is paired with gateway {previous.gateway_id}; unpair it there first "
                                f"(`edgistry pair --unpair --device {home.path} --gateway THAT_HOST:PORT`)")
            # the code is one-time: a Complete that reached the gateway must not be sent again
            sealed = await client.unary("commissioning", "Complete", tool.complete(payload), timeout=60,
                                        idempotent=False)
            result = tool.result(sealed)
    except EdgistryError as exc:
        raise PairError(str(exc)) from exc
    except GatewayError as exc:
        raise PairError(str(exc)) from exc
    token_path = home.path / "app.token"
    if unpair:
        home.paired_path.unlink(missing_ok=True)
        token_path.unlink(missing_ok=True)
        return {"unpaired": True, "pseudonym": result.pseudonym.hex(), "gateway_id": result.gateway_id}
    home.write_paired(result.link_endpoint, result.identity_token, result.pseudonym.hex(), result.gateway_id)
    if result.app_token:
        write_secret_file(token_path, (to_text(result.app_token) + "\n").encode())
    pin_path = home.path / "gateway.pem"
    if pin is not None:
        pin.to_pem_file(pin_path, f"pin it: --pin {pin_path.resolve()}")
    out = {"pseudonym": result.pseudonym.hex(), "owner_handle": result.owner_handle,
           "app_token_file": str(token_path.resolve()) if result.app_token else None,
           "gateway_id": result.gateway_id, "link_endpoint": result.link_endpoint, "height": result.height,
           "tls_pin_file": str(pin_path.resolve()) if pin is not None else None,
           "tls_pin_sha256": pin.sha256 if pin is not None else None}
    discovery = to_dicts(result, resolution, k)
    if discovery is not None:
        out["discovery"] = discovery
    return out
