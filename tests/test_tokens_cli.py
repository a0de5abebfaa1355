"""`edgistry token` commands (CliRunner)."""

from __future__ import annotations

import json

import h3
import pytest
from click.testing import CliRunner

from edgistry.firmware.caplets import api as cl
from edgistry.cli import main


@pytest.fixture
def env(tmp_path):
    runner = CliRunner()
    secret = tmp_path / "secret"

    def run(*args: str, input: str | None = None, code: int = 0) -> str:
        result = runner.invoke(main, ["token", *args], input=input)
        assert result.exit_code == code, result.output
        return result.output.strip()

    root = run("root", "--secret-file", str(secret), "--generate")
    return run, str(secret), root, tmp_path


def test_root_prints_a_verifiable_root_token(env) -> None:
    """root --generate creates a secret; the printed token is its root."""
    run, secret, root, _ = env
    token = cl.from_text(root)
    assert token.capabilities == (cl.Root(),)
    cl.verify(token, open(secret, "rb").read())
    assert run("root", "--secret-file", secret) == root


def test_derive_inspect_verify_request(env) -> None:
    """derive narrows, inspect shows frames, verify checks and --request authorises."""
    run, secret, root, _ = env
    cell = h3.latlng_to_cell(34.41, -119.85, 7)
    app = run("derive", root, "--service", "thermo:read,write", "--region", cell,
              "--expires", "+1h", "--endpoint", "10.0.0.1")
    text = run("inspect", app)
    assert "service service=thermo methods=read,write" in text and "expires_at" in text
    info = json.loads(run("inspect", app, "--json"))
    assert info["frames"][1]["capabilities"][1] == {"type": "region", "cell": cell}
    assert "valid" in run("verify", app, "--secret-file", secret, "--endpoint", "10.0.0.1",
                          "--request", "thermo:read")
    out = run("verify", app, "--secret-file", secret, "--endpoint", "10.0.0.1",
              "--request", "thermo:reboot", code=1)
    assert "NotPermitted" in out
    out = run("verify", app, "--secret-file", secret, code=1)
    assert "ConstraintFailed" in out and "endpoint" in out
    req = run("derive", app, "--request", "thermo:read", "--args", "{}")
    assert cl.from_text(req).request.method == "read"
    assert "InvalidDerivation" in run("derive", req, code=1)
    assert "InvalidDerivation" in run("derive", app, "--service", "thermo:*", code=1)


def test_token_from_file_and_stdin(env) -> None:
    """TOKEN may be @FILE (text or binary) or - for stdin."""
    run, secret, root, tmp = env
    (tmp / "t.txt").write_text(root + "\n")
    (tmp / "t.bin").write_bytes(cl.from_text(root).to_bytes())
    assert run("verify", f"@{tmp / 't.txt'}", "--secret-file", secret).startswith("valid")
    assert run("verify", f"@{tmp / 't.bin'}", "--secret-file", secret).startswith("valid")
    assert run("verify", "-", "--secret-file", secret, input=root).startswith("valid")
    assert "cannot read token" in run("inspect", f"@{tmp / 'missing'}", code=1)
    assert "not a token" in run("inspect", "AAAA", code=1)


def test_identity_and_binding_options(env) -> None:
    """--require-identity, --identity and --bind build the identity handshake."""
    run, secret, root, _ = env
    door = run("derive", root, "--service", "door:open", "--require-identity", "bob")
    req = run("derive", door, "--request", "door:open")
    bob = run("derive", root, "--identity", "bob")
    bound = run("derive", bob, "--bind", req)
    assert "require_identity" in run("verify", req, "--secret-file", secret, code=1)
    assert run("verify", req, "--secret-file", secret, "--aux", bound).startswith("valid")


def test_revoke_and_prune(env) -> None:
    """revoke adds to a list file that verify --revoked honours; --prune drops expired."""
    run, secret, root, tmp = env
    listing = str(tmp / "revoked.json")
    app = run("derive", root, "--service", "t:m", "--expires", "+1h")
    child = run("derive", app, "--gateway", "g")
    assert run("revoke", app, "--list", listing).startswith("revoked ")
    out = run("verify", child, "--secret-file", secret, "--gateway", "g", "--revoked", listing,
              code=1)
    assert "Revoked" in out
    assert "pruned 0" in run("revoke", "--list", listing, "--prune")
    old = run("derive", root, "--expires", "2001-01-01T00:00:00Z")
    run("revoke", old, "--list", listing)
    assert "pruned 1" in run("revoke", "--list", listing, "--prune")
    run("revoke", "--list", listing, code=2)


@pytest.mark.parametrize("args", [
    ["derive", "{root}", "--expires", "soon"],
    ["derive", "{root}", "--region", "zz"],
    ["derive", "{root}", "--region", "8"],
    ["derive", "{root}", "--resource", "/a:q"],
    ["derive", "{root}", "--sequence-window", "5"],
    ["derive", "{root}", "--request", "nomethod"],
    ["verify", "{root}"],
])
def test_usage_errors_exit_2(env, args: list[str]) -> None:
    """Malformed options are usage errors (exit 2)."""
    run, _, root, _ = env
    run(*[a.format(root=root) for a in args], code=2)


def test_user_errors_exit_1(env) -> None:
    """A short or missing secret and a bad sequence window are user errors."""
    run, _, root, tmp = env
    (tmp / "short").write_bytes(b"x")
    assert "at least 16" in run("root", "--secret-file", str(tmp / "short"), code=1)
    assert "cannot read secret" in run("root", "--secret-file", str(tmp / "nope"), code=1)
    run("derive", root, "--sequence-window", "5:1", code=2)
