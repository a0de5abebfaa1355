"""What a curious reader of the chain learns: pseudonyms and owners, never service types, cells or places.

Devices are paired through the real CLI with a real gateway (`edgistry up`, the
embedded node); some share a cell with k devices, one is alone (discovery
withholds it), one is re-paired (UpdateDevice), one unpaired (UnregisterDevice).
Then an outsider (tests/outsider.py) reads every block, result, query path and
snapshot chunk and looks for each device's service types, every parent of its
cell in every encoding, and its coordinates. A positive control runs the same
search over what a gateway-key holder sees, so the search itself is shown to
find what it looks for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h3
import pytest
from click.testing import CliRunner

from edgistry.chain import NodeUnreachable, RpcFailed, call
from edgistry.cli import main
from gateway_helpers import make_device_home, node_home, wait_file
from outsider import Corpus, KnownDevice, leaks, needles, read_block_store, read_everything, read_snapshots
from proc_helpers import edgistry, stop, wait_for_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

# (name, types, lat, lon, resolution, k): places whose text cannot be part of a timestamp
PLAN = [
    ("d1", ("thermoq7x",), -33.8688, 151.2093, 7, 2),
    ("d2", ("thermoq7x",), -33.8689, 151.2094, 7, 2),
    ("d3", ("valvez3km",), 64.1466, -21.9426, 6, 5),  # alone with k=5: discovery withholds it
    ("d4", ("cameraw9m", "thermoq7x"), -22.9068, -43.1729, 5, 1),
    ("d5", ("anemop4tq",), -41.2865, 174.7762, 8, 1),  # unpaired at the end
]


def cli_stdout(*args: str) -> tuple[int, str]:
    """(exit status, stdout only: progress lines go to stderr)."""
    from click.testing import CliRunner as Runner

    from edgistry.cli import main as entry

    result = Runner().invoke(entry, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def manifest(types: tuple[str, ...], lat: float, lon: float) -> dict:
    return {"duty_cycle_s": 60, "encrypt": False, "location": {"lat": lat, "lon": lon},
            "services": [{"type": t, "methods": [{"name": "read", "mutating": False}]} for t in types]}


def pair(cfg, home: Path, res: int, k: int, *extra: str) -> dict:
    code = wait_file(cfg.home / "commission.code")
    status, out = cli_stdout("pair", "--device", str(home), "--gateway", cfg.grpc_listen, "--code", code,
                      "--resolution", str(res), "--k", str(k), "--json", *extra)
    assert status == 0, out
    time.sleep(0.05)  # the next pairing needs the next one-time code
    return json.loads(out)


def rpc_of(url: str):
    def rpc(method: str, **params):
        return call(url, method, timeout=10.0, **params)
    return rpc


def serves(url: str):
    """has(method): whether the node answers ``method`` (the embedded node serves fewer than CometBFT)."""
    def has(method: str) -> bool:
        try:
            call(url, method, timeout=5.0, **({"height": "1"} if method == "block" else {}))
        except RpcFailed as exc:
            return "not found" not in str(exc).lower()
        except NodeUnreachable:
            return False
        return True
    return has


def known(types, lat, lon, res) -> KnownDevice:
    return KnownDevice(types, h3.str_to_int(h3.latlng_to_cell(lat, lon, res)), lat, lon)


def test_an_outsider_of_the_embedded_node_learns_no_type_cell_or_place(tmp_path):
    """Every block, result, query path and snapshot of a live node holds no service type, no
    cell at any resolution in any encoding, no coordinates; a gateway-key holder sees them all."""
    cfg, _ = node_home(tmp_path / "node")
    cfg.extra["snapshot_interval"] = 3
    cfg.save()
    proc = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    try:
        wait_for_port(int(cfg.grpc_listen.rsplit(":", 1)[1]), proc=proc)
        devices, paired = [], {}
        for name, types, lat, lon, res, k in PLAN:
            home = make_device_home(tmp_path / name, manifest(types, lat, lon))
            paired[name] = pair(cfg, home.path, res, k)
            devices.append(known(types, lat, lon, res))
        # d4 re-paired at a finer resolution (an UpdateDevice: both cells are secrets)
        pair(cfg, tmp_path / "d4", 6, 1)
        devices.append(known(PLAN[3][1], PLAN[3][2], PLAN[3][3], 6))
        status, out = cli("pair", "--device", str(tmp_path / "d5"), "--gateway", cfg.grpc_listen, "--unpair")
        assert status == 0, out

        url = cfg.rpc_url
        height = int(call(url, "abci_info")["response"]["last_block_height"])
        deadline = time.monotonic() + 60
        while not list(cfg.home.glob("data/**/snapshots/*/chunk-*")) and time.monotonic() < deadline:
            time.sleep(0.2)  # a snapshot is taken every 3 blocks; idle blocks come every 30 s
        corpus = Corpus()
        probe = [(t, h3.str_to_int(h3.cell_to_parent(h3.int_to_str(d.cell), r)))
                 for d in devices for t in d.types for r in range(h3.get_resolution(h3.int_to_str(d.cell)) + 1)]
        counts = read_everything(rpc_of(url), corpus, probe, has=serves(url))
        counts["snapshot_chunks"] = read_snapshots([cfg.home], corpus)

        # without a gateway key `registry ls devices` shows pseudonyms, owners and epochs only
        status, out = cli("registry", "ls", "devices", "--rpc", url)
        assert status == 0 and out.count("sealed") == 2 * (len(PLAN) - 1), out
        status, out = cli("registry", "ls", "devices", "--rpc", url, "--service", "thermoq7x")
        assert status == 1 and "sealed" in out

        # positive control: a gateway-key holder's view holds every secret, and the search finds them
        status, out = cli("registry", "ls", "devices", "--rpc", url, "--home", str(cfg.home), "--json")
        assert status == 0, out
        opened = json.loads(out[:out.rindex("]") + 1])
        assert {s["type"] for r in opened for s in r["services"]} == {"thermoq7x", "valvez3km", "cameraw9m"}
        control = Corpus()
        control.add_json("control", "registry ls --home", opened)
        for rec in opened:
            control.add("record bytes", int(rec["cell"], 16).to_bytes(8, "big"))
            control.add("record text", str(int(rec["cell"], 16)).encode())
        for d in devices[:3] + [devices[-1]]:  # the paired devices as they are now (d4 re-paired at res 6)
            found = {label for label, _ in control.find(needles(d))}
            res = h3.get_resolution(h3.int_to_str(d.cell))
            assert {f"type {t}" for t in d.types} | {f"cell res {res} decimal", f"cell res {res} be64"} <= found
        status, out = cli("registry", "ls", "devices", "--rpc", url, "--home", str(cfg.home),
                          "--service", "thermoq7x")
        assert status == 0 and out.count("thermoq7x") == 3, out

        # the outsider really read the registry: every device record, every by-cell probe refused
        assert counts["heights"] >= height and counts["device_records"] == len(PLAN) - 1
        assert counts["by_cell_refused"] == len(probe)
        assert counts["tx_search_txs"] == counts["txs"] > 0  # every tx of every block, also through tx_search
        assert counts["snapshot_chunks"] >= 1
        if not counts["register_device_txs"]:  # the node serves no `block`: read its block store instead
            stop(proc)
            stored = read_block_store(cfg.embedded_dir, corpus)
            counts.update(stored)
        assert counts["register_device_txs"] == len(PLAN) + 1  # every RegisterDevice and the UpdateDevice
        found = leaks(corpus, devices)
        print(f"outsider read {counts} ({len(corpus.items)} items, {sum(len(b) for _, b in corpus.items)} bytes), "
              f"searched {sum(len(needles(d)) for d in devices)} secrets: {len(found)} found")
        assert found == [], found[:10]
    finally:
        stop(proc)
