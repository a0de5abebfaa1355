"""The commissioning tool: pair or unpair a device home with a gateway (``edgistry pair``).

Reads the device home written by ``edgistry device init`` (firmware/runtime/home.py),
runs the Commissioning exchange (pairing.ToolSession), and writes back
``paired.json`` (link endpoint, identity token, pseudonym, gateway id) and a
read-only application token file ``app.token`` (0600) beside it. Usable in
process (``await pair_device(...)``, e.g. by ``edgistry up --demo-devices``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...config import write_secret_file
from ...firmware.caplets.mint import to_text
from ...firmware.runtime.home import DeviceHome, HomeError
from ..client.aio import AsyncClient
from ..client.errors import EdgistryError
from ..errors import GatewayError
from .channel import ToolSession
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


def location_cell(manifest: dict) -> int:
    """The device's H3 cell at the finest resolution (0 without a location)."""
    loc = manifest.get("location")
    if not loc:
        return 0
    import h3

    return h3.str_to_int(h3.latlng_to_cell(float(loc["lat"]), float(loc["lon"]), EXACT_RESOLUTION))


async def pair_device(device_home: Path | str, gateway: str, code: str = "", resolution: int = DEFAULT_RESOLUTION,
                      k: int = DEFAULT_K, unpair: bool = False, expect_gateway: str | None = None,
                      registry_rpc: str | None = None) -> dict:
    """Pair (or unpair) the device at ``device_home`` with the gateway at ``gateway`` (gRPC HOST:PORT).

    Returns {pseudonym, owner_handle, app_token_file, gateway_id, link_endpoint, height}
    (unpairing: {unpaired, pseudonym, gateway_id}). Raises PairError.
    """
    home = DeviceHome(device_home)
    try:
        root, link_id, manifest = home.root_token(), home.link_id(), home.manifest()
        previous = home.paired() if home.paired_path.exists() else None
    except HomeError as exc:
        raise PairError(str(exc)) from exc
    payload = gw.PairPayload(root_token=root, manifest=json.dumps(manifest).encode(), resolution=resolution, k=k,
                             encrypt=bool(manifest.get("encrypt", False)), link_id=link_id, commission_code=code,
                             unpair=unpair, cell=location_cell(manifest))
    tool = ToolSession()
    try:
        # no token travels here (the payload is sealed), so any address may be plaintext
        async with AsyncClient(gateway) as client:
            offer = await client.unary("commissioning", "Begin", tool.begin(), timeout=15)
            tool.accept(offer, expect_gateway)
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
    return {"pseudonym": result.pseudonym.hex(), "owner_handle": result.owner_handle,
            "app_token_file": str(token_path.resolve()) if result.app_token else None,
            "gateway_id": result.gateway_id, "link_endpoint": result.link_endpoint, "height": result.height}
