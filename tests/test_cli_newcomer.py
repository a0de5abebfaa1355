"""What a newcomer meets on the command line (CliRunner, against a live `edgistry up`): progress
on long waits, one --json format, one-line errors naming what to fix, consistent exit codes
(0 success, 1 fixable failure, 2 usage), `gateway info`, and pairing that says when k hides
a device."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgistry.cli import main
from edgistry.clikit import Progress, progress_echo
from edgistry.gateway.tls import Pin
from proc_helpers import free_port
from sdk_helpers import DEMO_NEAR, DEMO_RADIUS_KM, start_demo_node

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"^\[\s*\d+ s\] ", re.M)
NEAR = ["--near", f"{DEMO_NEAR[0]},{DEMO_NEAR[1]}", "--radius-km", str(DEMO_RADIUS_KM)]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(res) -> str:
    """The error a failed command printed: exactly one line on stderr starting "Error: "."""
    lines = [ln for ln in res.stderr.splitlines() if not STAMP.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    demo = start_demo_node(tmp_path_factory.mktemp("cli-node"))
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def sleeper(node, tmp_path_factory):
    """A device paired (k=1) that never runs: whatever is sent to it waits."""
    home = tmp_path_factory.mktemp("sleeper") / "dev"
    init = run("device", "init", "--home", str(home), "--service", "actuator", "--location", "52.52,13.40",
               "--duty-cycle", "600", "--json")
    assert init.exit_code == 0, init.output
    code = (node.home / "commission.code").read_text().strip()
    res = run("pair", "--device", str(home), "--gateway", node.grpc, "--code", code, "--k", "1", "--rpc",
              node.rpc_url, "--json")
    assert res.exit_code == 0, res.output
    paired = json.loads(res.stdout)
    # the pin `pair` writes beside the app token is the gateway's own certificate
    assert Pin.from_file(home / "gateway.pem") == Pin.from_file(node.pin)
    assert paired["tls_pin_file"] == str(home / "gateway.pem")
    assert paired["tls_pin_sha256"] == Pin.from_file(node.pin).sha256
    return {"home": home, "handle": paired["owner_handle"], "token": paired["app_token_file"], "paired": paired}


def conn(node, token) -> list[str]:
    return ["--gateway", node.grpc, "--token", str(token), "--pin", str(node.pin)]


# ---- progress ----

def test_invoke_shows_progress_and_says_how_to_fetch_later(node, sleeper):
    """A wait of more than a second prints stamped progress lines on stderr (the device's
    expected wake included); on timeout one line says which `edgistry result` fetches it;
    with --json, stdout is the last state as JSON and nothing else."""
    res = run("invoke", sleeper["handle"], "actuator.get", "--timeout", "2.5", *conn(node, sleeper["token"]))
    assert res.exit_code == 1
    progress = STAMP.findall(res.stderr)
    assert progress and "waiting for the device (actuator.get): queued; the device is expected" in res.stderr
    err = one_line_error(res)
    rid = re.search(r"request ([0-9a-f]{32}) stays QUEUED", err).group(1)
    assert f"edgistry result {rid} --wait 60 --gateway {node.grpc} --token {sleeper['token']} --pin {node.pin}" in err
    res = run("invoke", sleeper["handle"], "actuator.get", "--timeout", "1.5", "--json", *conn(node, sleeper["token"]))
    assert res.exit_code == 1 and json.loads(res.stdout)["state"] == "QUEUED" and STAMP.search(res.stderr)


def test_result_wait_shows_progress(node, sleeper):
    """`result --wait` prints progress while it waits and ends with a one-line hint (exit 1)."""
    rid = run("invoke", sleeper["handle"], "actuator.get", "--async", *conn(node, sleeper["token"])).stdout.strip()
    res = run("result", rid, "--wait", "2", *conn(node, sleeper["token"]))
    assert res.exit_code == 1 and f"waiting for request {rid}: queued" in res.stderr
    assert "stays QUEUED" in one_line_error(res)


def test_quick_answers_print_no_progress(node):
    """An answer within a second prints no progress line (a cached read)."""
    handle = json.loads(run("discover", "sensor", *NEAR, "--json", *conn(node, node.app_token)).stdout)[0]["handle"]
    run("invoke", handle, "sensor.info", *conn(node, node.app_token))  # warms the gateway's cache
    res = run("invoke", handle, "sensor.info", *conn(node, node.app_token))
    assert res.exit_code == 0 and "from the gateway's cache" in res.stderr and not STAMP.search(res.stderr)


def test_progress_lines_are_stamped_and_quiet_for_a_second():
    """Progress: nothing before first_s, then a stamped line per tick and per status change;
    progress_echo stamps a command's lines with the seconds since its first one."""
    lines: list[str] = []
    with Progress("waiting", first_s=0.05, every_s=0.05, echo=lines.append) as p:
        time.sleep(0.2)
        p.update("queued")
    assert len(lines) >= 2 and all(STAMP.match(ln) for ln in lines) and lines[-1].endswith("waiting: queued")
    quiet: list[str] = []
    with Progress("waiting", first_s=5, echo=quiet.append):
        pass
    assert quiet == []

    @click.command()
    def cmd():
        progress_echo("generated")
        progress_echo("waiting for height 1")

    res = CliRunner().invoke(cmd)
    assert res.stdout == "" and re.fullmatch(r"\[  0 s\] generated\n\[  0 s\] waiting for height 1\n", res.stderr)


# ---- exit codes of results ----

def test_cancel_succeeds_with_exit_0_and_a_cancelled_request_reads_as_a_failure(node, sleeper):
    """`result --cancel` of a queued request: exit 0 (text or JSON); reading it afterwards:
    exit 1 in both forms, JSON still on stdout."""
    c = conn(node, sleeper["token"])
    rid = run("invoke", sleeper["handle"], "actuator.get", "--async", *c).stdout.strip()
    res = run("result", rid, "--cancel", *c)
    assert res.exit_code == 0 and res.stdout.strip() == f"cancelled request {rid}", res.output
    res = run("result", rid, "--cancel", "--json", *c)
    assert res.exit_code == 0 and json.loads(res.stdout)["state"] == "CANCELLED"
    plain, as_json = run("result", rid, *c), run("result", rid, "--json", *c)
    assert plain.exit_code == as_json.exit_code == 1
    assert json.loads(as_json.stdout)["state"] == "CANCELLED" and "CANCELLED" in one_line_error(plain)


def test_expired_exits_1_with_and_without_json(node, sleeper):
    """An EXPIRED request: exit 1 whether printed as text or as JSON."""
    c = conn(node, sleeper["token"])
    rid = run("invoke", sleeper["handle"], "actuator.get", "--async", "--ttl", "1", *c).stdout.strip()
    deadline = time.monotonic() + 15
    while (res := run("result", rid, "--json", *c)).exit_code == 0 and time.monotonic() < deadline:
        time.sleep(0.3)  # QUEUED until the gateway's sweeper dead-letters it
    assert res.exit_code == 1 and json.loads(res.stdout)["state"] == "EXPIRED"
    plain = run("result", rid, *c)
    assert plain.exit_code == 1 and "EXPIRED" in one_line_error(plain)


def test_usage_errors_exit_2(node, sleeper):
    """Malformed or contradictory options are usage errors (exit 2), not failures."""
    for args in (["invoke", sleeper["handle"]], ["result", "ab" * 16, "--cancel", "--wait", "5"],
                 ["invoke", "--any", "sensor", "read"], ["discover", "sensor", "--near", "91,0"],
                 ["invoke", "h", "m", "--gateway", "127.0.0.1:http"], ["invoke", "h", "m", "--arg", "{oops"]):
        res = run(*args, "--token", str(node.app_token)) if args[0] != "result" else run(*args)
        assert res.exit_code == 2, (args, res.output)


# ---- one --json format ----

def test_registry_json_uses_hex_like_the_table_and_cell_filter(node, sleeper):
    """`registry ls devices --json`: pseudonyms and cells in hex, as the table prints them and
    as --cell takes them (cells are sealed on chain: the gateway's --home opens them)."""
    key = ["--rpc", node.rpc_url, "--home", str(node.home)]
    res = run("registry", "ls", "devices", *key, "--json")
    assert res.exit_code == 0
    devices = json.loads(res.stdout)
    table = run("registry", "ls", "devices", *key).stdout
    mine = next(d for d in devices if d["pseudonym"] == sleeper["paired"]["pseudonym"])
    assert re.fullmatch(r"[0-9a-f]{32}", mine["pseudonym"]) and re.fullmatch(r"8[0-9a-f]{14}", mine["cell"])
    row = next(ln.split() for ln in table.splitlines() if ln.startswith(mine["pseudonym"]))
    assert row[:4] == [mine["pseudonym"], mine["gateway_id"], str(mine["sealed"]["epoch"]), mine["cell"]]
    by_cell = run("registry", "ls", "devices", *key, "--service", "actuator", "--cell", mine["cell"], "--json")
    assert mine["pseudonym"] in {d["pseudonym"] for d in json.loads(by_cell.stdout)}
    outsider = run("registry", "ls", "devices", "--rpc", node.rpc_url, "--cell", mine["cell"])
    assert outsider.exit_code == 1 and "--home" in one_line_error(outsider)
    gateways = json.loads(run("registry", "ls", "gateways", "--rpc", node.rpc_url, "--json").stdout)
    assert re.fullmatch(r"[0-9a-f]{64}", gateways[0]["pubkey"])


def test_every_json_and_answer_has_one_indentation(node):
    """invoke and invoke --any print an answer the same way; every --json is 2-space indented."""
    handle = json.loads(run("discover", "sensor", *NEAR, "--json", *conn(node, node.app_token)).stdout)[0]["handle"]
    outputs = [run("invoke", handle, "sensor.info", *conn(node, node.app_token)).stdout,
               run("invoke", "--any", "sensor", *NEAR, "sensor.info", *conn(node, node.app_token)).stdout,
               run("invoke", handle, "sensor.info", "--json", *conn(node, node.app_token)).stdout,
               run("discover", "sensor", *NEAR, "--json", *conn(node, node.app_token)).stdout,
               run("registry", "ls", "gateways", "--rpc", node.rpc_url, "--json").stdout,
               run("gateway", "info", "--home", str(node.home), "--json").stdout]
    for out in outputs:
        assert out == json.dumps(json.loads(out), indent=2) + "\n", out
    assert json.loads(outputs[0]).keys() == json.loads(outputs[1]).keys()  # sensor.info of two demo devices


# ---- errors: one line, naming what to fix ----

def test_an_unreachable_gateway_is_one_line_naming_the_address(node):
    """Nothing at --gateway: one line with the address and a hint, no gRPC internals."""
    port = free_port()
    for args in (["invoke", "dev-" + "00" * 16, "sensor.read"], ["discover", "sensor", *NEAR],
                 ["result", "ab" * 16]):
        res = run(*args, "--gateway", f"127.0.0.1:{port}", "--token", str(node.app_token), "--pin", str(node.pin))
        assert res.exit_code == 1
        err = one_line_error(res)
        assert f"cannot reach the gateway at 127.0.0.1:{port}: connection refused" in err and "--gateway" in err
        assert "UNAVAILABLE" not in err and "failed to connect" not in err


def test_a_gateway_without_port_means_26670_and_clear_text_is_refused(node):
    """--gateway HOST uses the gateway port 26670 (shown); without a pin the CLI asks for one
    (gateways speak TLS); with --insecure a token still never goes in clear to a remote host."""
    res = run("result", "ab" * 16, "--gateway", "192.0.2.1", "--token", str(node.app_token))
    err = one_line_error(res)
    assert res.exit_code == 1 and "192.0.2.1:26670" in err and "--pin" in err and "--tls-from-registry" in err
    res = run("result", "ab" * 16, "--gateway", "192.0.2.1", "--token", str(node.app_token), "--insecure")
    err = one_line_error(res)
    assert res.exit_code == 1 and "refusing to send the token in clear to 192.0.2.1:26670" in err
    assert "--pin" in err


def test_unreachable_rpc_and_missing_homes_are_plain_words(node, tmp_path):
    """No aiohttp reprs, no bare errno: each error names the thing and the fix."""
    res = run("registry", "ls", "devices", "--rpc", f"http://127.0.0.1:{free_port()}")
    err = one_line_error(res)
    assert res.exit_code == 1 and "connection refused" in err and "--rpc" in err and "ClientConnector" not in err
    res = run("token", "app", "--home", str(tmp_path / "nonexistent"), "--name", "x")
    err = one_line_error(res)
    assert res.exit_code == 1 and str(tmp_path / "nonexistent") in err and "[Errno" not in err
    assert "edgistry init" in err


@pytest.mark.parametrize("content,says", [(None, "does not exist"), ("garbage", "not a token")])
def test_a_bad_token_file_is_named(node, tmp_path, content, says):
    """A missing or garbled --token file: exit 1, the file's path and what is wrong with it."""
    path = tmp_path / "my.token"
    if content is not None:
        path.write_text(content)
    res = run("discover", "sensor", *NEAR, "--gateway", node.grpc, "--token", str(path), "--pin", str(node.pin))
    err = one_line_error(res)
    assert res.exit_code == 1 and str(path) in err and says in err
    res = run("token", "inspect", f"@{path}")
    assert res.exit_code == 1 and str(path) in one_line_error(res)


def test_discover_near_out_of_range_gives_the_ranges(node):
    """--near 91,0: a usage error stating both valid ranges."""
    res = run("discover", "sensor", "--near", "91,0", *conn(node, node.app_token))
    assert res.exit_code == 2 and "-90..90" in res.stderr and "-180..180" in res.stderr


# ---- gateway info, device init, pairing ----

def test_gateway_info_gives_what_add_gateway_needs(node):
    """`gateway info`: the id and public key the registry holds, endpoints, the TLS pin (the
    certificate file, its SHA-256 and the name clients check)."""
    info = json.loads(run("gateway", "info", "--home", str(node.home), "--json").stdout)
    gateways = json.loads(run("registry", "ls", "gateways", "--rpc", node.rpc_url, "--json").stdout)
    assert {(g["id"], g["pubkey"]) for g in gateways} == {(info["gateway_id"], info["public_key"])}
    pin = Pin.from_file(node.pin)
    assert info["endpoints"]["grpc"] == node.grpc
    assert info["tls_pin"] == {"file": str(node.pin), "sha256": pin.sha256, "name": pin.name}
    assert pin.gateway_id == info["gateway_id"]
    text = run("gateway", "info", "--home", str(node.home))
    assert text.exit_code == 0 and f"--pubkey {info['public_key']}" in text.stderr
    assert f"TLS pin       {node.pin}" in text.stdout and pin.sha256 in text.stdout
    assert run("gateway", "info", "--home", "/nonexistent").exit_code == 1
    assert run("gateway").exit_code == 2  # running one needs --home


def test_device_init_next_step_names_the_code(tmp_path):
    """The next step `device init` prints is a pair command with --code, and where the code is."""
    res = run("device", "init", "--home", str(tmp_path / "d"), "--service", "sensor", "--location", "1,1")
    assert res.exit_code == 0 and "--code @GATEWAY_HOME/commission.code" in res.stdout


def test_pair_says_when_k_hides_the_device(node, tmp_path):
    """Default k=5 and a lone device of its type: pair says it is hidden and what to do (the
    gateway tells, --rpc or not); with --json the same under "discovery", with no count of
    the devices around it."""
    home = tmp_path / "lonely"
    assert run("device", "init", "--home", str(home), "--service", "actuator", "--location", "-33.86,151.21"
               ).exit_code == 0
    code = (node.home / "commission.code").read_text().strip()
    # the code from standard input: never in the process list
    res = CliRunner().invoke(main, ["pair", "--device", str(home), "--gateway", node.grpc, "--code", "-",
                                    "--rpc", node.rpc_url], input=code + "\n", catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "hidden from discovery" in res.stderr and "k=5" in res.stderr and "--k" in res.stderr
    res = run("pair", "--device", str(home), "--gateway", node.grpc, "--code", f"@{node.home / 'commission.code'}",
              "--json")
    assert res.exit_code == 0 and "hidden from discovery" in res.stderr, res.output
    (visibility,) = json.loads(res.stdout)["discovery"]
    assert visibility == {"service_type": "actuator", "cell": visibility["cell"], "resolution": 7, "k": 5,
                          "visible": False, "disclosed_cell": None}


def test_pair_json_reports_visibility(node, sleeper):
    """A k=1 device is discoverable at once, in its own cell (the one the gateway's key opens on
    chain); pair --json says so."""
    (visibility,) = sleeper["paired"]["discovery"]
    assert visibility["visible"] and visibility["k"] == 1 and visibility["service_type"] == "actuator"
    devices = json.loads(run("registry", "ls", "devices", "--rpc", node.rpc_url, "--home", str(node.home),
                             "--json").stdout)
    mine = next(d for d in devices if d["pseudonym"] == sleeper["paired"]["pseudonym"])
    assert visibility["disclosed_cell"] == visibility["cell"] == mine["cell"]


def test_pair_errors_are_one_line(node, tmp_path):
    """Pairing with no code, a wrong code, or an unreachable gateway: one line saying what to do."""
    home = tmp_path / "dev"
    run("device", "init", "--home", str(home), "--service", "sensor", "--location", "1,1")
    res = run("pair", "--device", str(home), "--gateway", node.grpc)
    assert res.exit_code == 1 and "commission.code" in one_line_error(res)
    res = run("pair", "--device", str(home), "--gateway", node.grpc, "--code", "AAAA-BBBB")
    assert res.exit_code == 1 and "give the current --code" in one_line_error(res)
    res = run("pair", "--device", str(home), "--gateway", f"127.0.0.1:{free_port()}", "--code", "AAAA")
    assert res.exit_code == 1 and "cannot reach the gateway" in one_line_error(res)


# ---- `up`, the repository ----

def test_up_banner_says_how_to_stop_and_prints_codes_plainly(node, sleeper):
    """`up`'s banner shows a discover example and how to stop; each new commissioning code is a
    plain line (no log level), and nothing is logged as a WARNING at start."""
    log = node.log.read_text()
    assert "stop with Ctrl-C" in log and f"edgistry discover sensor --near {DEMO_NEAR[0]},{DEMO_NEAR[1]}" in log
    assert f"edgistry token app --home {node.home}" in log
    # stdout is a log file here, not a terminal: the line names the file, never the code
    assert re.search(r"^next commissioning code: in .*commission\.code \(one-time; shown only on a terminal\)$",
                     log, re.M)
    assert (node.home / "commission.code").read_text().strip() not in log
    assert "WARNING" not in log


def test_the_quick_start_home_is_ignored_by_git():
    """`edgistry up --home ./edgistry-home` in a clone leaves nothing untracked."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("edgistry-home/config.toml", "app.token"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
