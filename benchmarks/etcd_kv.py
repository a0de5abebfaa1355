"""A minimal etcd v3 KV client over gRPC (Put, Range, Txn) without generated code.

The few etcdserverpb / mvccpb messages the discovery benchmark needs are
declared here as descriptors with etcd's own field numbers (api/etcdserverpb/
rpc.proto, api/mvccpb/kv.proto), so no etcd Python package or extra binary is
needed. Also: start and stop a throwaway etcd 3.4 server on loopback, or a
3-member cluster (:class:`EtcdCluster`, default durability: every write fsynced
by a quorum before it is acknowledged), and drive it with concurrent Puts
(:func:`put_load`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="edgistry_bench_etcd.proto", package="etcdserverpb", syntax="proto3")

    def msg(name: str, *fields: tuple) -> None:
        m = f.message_type.add(name=name)
        for num, fname, ftype, *rest in fields:
            fd = m.field.add(name=fname, number=num, type=ftype,
                             label=_F.LABEL_REPEATED if rest and rest[0] == "rep" else _F.LABEL_OPTIONAL)
            if ftype == _F.TYPE_MESSAGE:
                fd.type_name = ".etcdserverpb." + rest[-1]
            if rest and rest[0] == "oneof":
                fd.oneof_index = 0
        if any(r[3:4] == ("oneof",) for r in fields):
            m.oneof_decl.add(name="request" if name == "RequestOp" else "response")

    B, I64, U64, BOOL, M = _F.TYPE_BYTES, _F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_BOOL, _F.TYPE_MESSAGE
    msg("ResponseHeader", (1, "cluster_id", U64), (2, "member_id", U64), (3, "revision", I64), (4, "raft_term", U64))
    msg("KeyValue", (1, "key", B), (2, "create_revision", I64), (3, "mod_revision", I64), (4, "version", I64),
        (5, "value", B), (6, "lease", I64))
    msg("RangeRequest", (1, "key", B), (2, "range_end", B), (3, "limit", I64), (4, "revision", I64),
        (7, "serializable", BOOL), (8, "keys_only", BOOL), (9, "count_only", BOOL))
    msg("RangeResponse", (1, "header", M, "ResponseHeader"), (2, "kvs", M, "rep", "KeyValue"), (3, "more", BOOL),
        (4, "count", I64))
    msg("PutRequest", (1, "key", B), (2, "value", B))
    msg("PutResponse", (1, "header", M, "ResponseHeader"))
    msg("RequestOp", (1, "request_range", M, "oneof", "RangeRequest"), (2, "request_put", M, "oneof", "PutRequest"))
    msg("ResponseOp", (1, "response_range", M, "oneof", "RangeResponse"),
        (2, "response_put", M, "oneof", "PutResponse"))
    msg("TxnRequest", (2, "success", M, "rep", "RequestOp"))
    msg("TxnResponse", (1, "header", M, "ResponseHeader"), (2, "succeeded", BOOL),
        (3, "responses", M, "rep", "ResponseOp"))
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
_cls = {n: message_factory.GetMessageClass(_pool.FindMessageTypeByName("etcdserverpb." + n))
        for n in ("RangeRequest", "RangeResponse", "PutRequest", "PutResponse", "RequestOp", "TxnRequest",
                  "TxnResponse")}
RangeRequest, RangeResponse = _cls["RangeRequest"], _cls["RangeResponse"]
PutRequest, RequestOp, TxnRequest, TxnResponse = _cls["PutRequest"], _cls["RequestOp"], _cls["TxnRequest"], _cls["TxnResponse"]
PutResponse = _cls["PutResponse"]


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key with this prefix"."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    b[-1] += 1
    return bytes(b)


class EtcdKV:
    """Range and Txn on an aio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.range = channel.unary_unary("/etcdserverpb.KV/Range", request_serializer=RangeRequest.SerializeToString,
                                         response_deserializer=RangeResponse.FromString)
        self.txn = channel.unary_unary("/etcdserverpb.KV/Txn", request_serializer=TxnRequest.SerializeToString,
                                       response_deserializer=TxnResponse.FromString)

    async def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        await self.txn(TxnRequest(success=[RequestOp(request_put=PutRequest(key=k, value=v)) for k, v in items]))

    async def prefixes(self, prefixes: list[bytes], limit: int) -> int:
        """One read-only Txn of prefix range reads; returns the keys read."""
        req = TxnRequest(success=[RequestOp(request_range=RangeRequest(key=p, range_end=prefix_end(p), limit=limit))
                                  for p in prefixes])
        resp = await self.txn(req)
        return sum(len(r.response_range.kvs) for r in resp.responses)


class EtcdServer:
    """A throwaway etcd on loopback in a temp dir; stopped by pid."""

    def __init__(self, workdir: Path, client_port: int, peer_port: int, max_txn_ops: int = 10_000) -> None:
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"
        self.workdir, self.client_port, self.peer_port, self.max_txn_ops = workdir, client_port, peer_port, max_txn_ops
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].split(":")[-1].strip() if out else "?"

    def start(self) -> None:
        cu, pu = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        args = [self.binary, "--name", "bench", "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", cu, "--advertise-client-urls", cu,
                "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
                "--initial-cluster", f"bench={pu}", "--max-txn-ops", str(self.max_txn_ops),
                "--max-request-bytes", str(16 * 1024 * 1024), "--quota-backend-bytes", str(8 * 1024 ** 3),
                "--snapshot-count", "1000000", "--log-level", "error"]
        with open(self.workdir / "etcd.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def wait_ready(self, timeout: float = 20.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.workdir / 'etcd.log').read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.client_port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError("etcd did not start")


class EtcdCluster:
    """``members`` etcd processes on loopback forming one cluster, with etcd's default
    durability (no --unsafe-no-fsync: a write is acknowledged once a quorum fsynced
    it). Started and stopped by pid; ports ``base_port + 2*i`` (client) and ``+1`` (peer)."""

    def __init__(self, workdir: Path, base_port: int, members: int = 3) -> None:
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"
        self.workdir, self.base_port, self.members = workdir, base_port, members
        self.procs: list[subprocess.Popen] = []

    def _urls(self, i: int) -> tuple[str, str]:
        return f"http://127.0.0.1:{self.base_port + 2 * i}", f"http://127.0.0.1:{self.base_port + 2 * i + 1}"

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{self.base_port + 2 * i}" for i in range(self.members)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        initial = ",".join(f"m{i}={self._urls(i)[1]}" for i in range(self.members))
        for i in range(self.members):
            cu, pu = self._urls(i)
            args = [self.binary, "--name", f"m{i}", "--data-dir", str(self.workdir / f"m{i}"),
                    "--listen-client-urls", cu, "--advertise-client-urls", cu,
                    "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", f"bench-{self.base_port}", "--log-level", "error",
                    "--logger", "zap"]
            with open(self.workdir / f"m{i}.log", "ab") as log:
                self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until a Put through every member succeeds (a leader is elected and all are serving)."""
        import asyncio

        async def probe() -> None:
            for ep in self.endpoints:
                async with grpc.aio.insecure_channel(ep) as ch:
                    put = ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=PutRequest.SerializeToString,
                                         response_deserializer=PutResponse.FromString)
                    await put(PutRequest(key=b"probe", value=b"1"), timeout=2)

        deadline = time.monotonic() + timeout
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"etcd member exited ({p.returncode}); see {self.workdir}")
            try:
                asyncio.run(probe())
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise TimeoutError("etcd cluster did not become ready")
                time.sleep(0.3)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs = []


async def put_load(endpoints: list[str], clients: int, value_size: int, warmup: float, duration: float,
                   tag: str) -> dict:
    """``clients`` concurrent closed-loop writers (one Put in flight each, unique keys), spread
    over one channel per 16 clients round-robin on ``endpoints``; counts Puts acknowledged in
    the measured window and their latencies, and this process's CPU over that window."""
    import asyncio

    value = os.urandom(value_size // 2).hex().encode()[:value_size]
    channels = [grpc.aio.insecure_channel(endpoints[i % len(endpoints)]) for i in range((clients + 15) // 16)]
    puts = [ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=PutRequest.SerializeToString,
                           response_deserializer=PutResponse.FromString) for ch in channels]
    start = time.monotonic()
    t_measure, t_end = start + warmup, start + warmup + duration
    lat: list[float] = []
    errors = 0
    cpu0: list[float] = []

    async def writer(c: int) -> None:
        nonlocal errors
        put, n = puts[c % len(puts)], 0
        while True:
            t0 = time.monotonic()
            if t0 >= t_end:
                return
            if t0 >= t_measure and not cpu0:
                cpu0.append(time.process_time())
            try:
                await put(PutRequest(key=f"{tag}/{c}/{n}".encode(), value=value), timeout=10)
            except grpc.RpcError:
                errors += 1
                continue
            t1 = time.monotonic()
            n += 1
            if t_measure <= t0 and t1 <= t_end:
                lat.append(t1 - t0)

    await asyncio.gather(*(writer(c) for c in range(clients)))
    cpu = time.process_time() - (cpu0[0] if cpu0 else 0.0)
    for ch in channels:
        await ch.close()
    return {"writes": len(lat), "errors": errors, "cpu_s": round(cpu, 2), "lat": lat}
