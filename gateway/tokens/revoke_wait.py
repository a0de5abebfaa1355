"""Waiting until a revocation is in force: what ``edgistry token revoke`` does
after its transaction commits.

Each gateway reports, on its gRPC Status call, the registry height up to which
every revocation is in force there (``revocation_height``: its follower has
applied the block, ended the matching queued requests and had forwards
cancelled). The local gateway is asked at its node home's gRPC address;
``--wait-all`` asks every gateway registered on chain at its registered
endpoint, and a timeout names the ones that lag (or cannot be reached).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from ...chain import ChainClient
from ...proto import gateway_pb2 as gw
from ...proto import gateway_pb2_grpc as gw_grpc

POLL_S = 0.02  # a Status call is a few hundred microseconds on loopback
CALL_TIMEOUT_S = 2.0


class InForceTimeout(Exception):
    """The revocation is committed but not (yet) in force at some gateway."""


async def status(endpoint: str, timeout: float = CALL_TIMEOUT_S) -> gw.GatewayStatus:
    """One gateway's Status (raises grpc.aio.AioRpcError when unreachable)."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        return await gw_grpc.GatewayStub(channel).Status(gw.StatusRequest(), timeout=timeout)


async def wait_in_force(chain: ChainClient, local: str, height: int, wait_all: bool, timeout: float) -> str:
    """Until the gateway(s) report ``revocation_height >= height``; returns
    who (for the message). Raises InForceTimeout naming the laggards."""
    if wait_all:
        targets = {g.id: g.endpoint for g in await chain.gateways()}
    else:
        targets = {"the local gateway": local}
    deadline = time.monotonic() + timeout
    behind: dict[str, str] = dict.fromkeys(targets, "not asked yet")
    channels = {name: grpc.aio.insecure_channel(ep) for name, ep in targets.items()}
    try:
        while True:
            for name in list(behind):
                try:
                    st = await gw_grpc.GatewayStub(channels[name]).Status(gw.StatusRequest(), timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    behind[name] = f"unreachable at {targets[name]} ({exc.code().name})"
                    continue
                if st.revocation_height >= height:
                    del behind[name]
                else:
                    behind[name] = f"at revocation height {st.revocation_height}" + (
                        " (fails closed: its chain node is silent)" if st.fail_closed else "")
            if not behind:
                return f"{len(targets)} gateway(s)" if wait_all else f"the local gateway ({local})"
            if time.monotonic() >= deadline:
                lag = "; ".join(f"{name}: {why}" for name, why in sorted(behind.items()))
                raise InForceTimeout(f"revocation committed at height {height} but not in force within "
                                     f"{timeout:g} s at: {lag}")
            await asyncio.sleep(POLL_S)
    finally:
        await asyncio.gather(*(c.close() for c in channels.values()), return_exceptions=True)
