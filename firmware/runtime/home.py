"""The device home: everything a device keeps on its own disk.

Layout of ``<home>/``::

    secret          32 random bytes, the origin secret of the device (0600)
    root.token      the device's root token, text form (base64url); minted from secret
    link_id         16 bytes, hex: the device's name on the link (kept across re-pairing)
    manifest.json   the service manifest (below); the pairing tool hands it to the gateway
    paired.json     written by ``edgistry pair`` (below); absent until paired
    state.json      runtime state (firmware/runtime/state.py): ticket, last sequence,
                    request/response store, revoked tags
    actuator.json   state of the demo actuator service (only when it is configured)

``manifest.json`` (the shape gateway/manifest.py parses; extra keys are ignored
there)::

    {"version": 1, "link_id": "<hex>", "duty_cycle_s": 10, "encrypt": false,
     "link": "tcp" | "udp",   # how the device wakes (absent: tcp); udp: the datagram link
     "location": {"lat": 34.41, "lon": -119.85} | null,
     "services": [{"type": "sensor",
                   "methods": [{"name": "read", "cache_max_age_s": 5, "mutating": false},
                               {"name": "info", "cache_max_age_s": 3600, "mutating": false}]}]}

``paired.json`` (the contract with the pairing tool, ``edgistry pair``)::

    {"version": 1,
     "gateway": "HOST:PORT",            # the gateway's *device link* endpoint (26671)
     "identity_token": "<base64url or hex>",   # gateway-issued, names "link:<link id hex>"
     "pseudonym": "<hex>",              # the device's name on the chain
     "gateway_id": "<id>",
     "link_id": "<hex>"}                # optional; when present it must equal link_id

``link_endpoint`` is accepted as a synonym of ``gateway``. The pairing tool
writes the file atomically (temp file + rename); unpairing deletes it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...config import atomic_write
from ..caplets.mint import new_secret, root, to_text
from ..caplets.mint import load as load_token

LINK_ID_SIZE = 16
MANIFEST_VERSION = 1
PAIRED_VERSION = 1
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class HomeError(Exception):
    """The device home is missing, incomplete or malformed (a user-fixable error)."""


def write_json(path: Path, value: object, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode(), mode)


def decode_blob(text: str) -> bytes:
    """Bytes from hex or (unpadded) base64url text."""
    text = text.strip()
    if _HEX.fullmatch(text):
        return bytes.fromhex(text)
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise HomeError(f"not hex or base64url: {text[:20]}...") from exc


@dataclass(frozen=True)
class Pairing:
    """What ``paired.json`` says."""

    host: str
    port: int
    identity_token: bytes
    pseudonym: str
    gateway_id: str


class DeviceHome:
    """Paths and loaders of one device home."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    secret_path = property(lambda self: self.path / "secret")
    root_path = property(lambda self: self.path / "root.token")
    link_id_path = property(lambda self: self.path / "link_id")
    manifest_path = property(lambda self: self.path / "manifest.json")
    paired_path = property(lambda self: self.path / "paired.json")
    state_path = property(lambda self: self.path / "state.json")

    def exists(self) -> bool:
        return self.secret_path.exists()

    def create(self, manifest: dict, secret: bytes | None = None,
               link_id: bytes | None = None) -> None:
        """Make a new home: secret (0600), root token, link id, manifest."""
        if self.exists():
            raise HomeError(f"{self.path} already holds a device (remove it to start over)")
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        secret = secret or new_secret()
        link_id = link_id or os.urandom(LINK_ID_SIZE)
        atomic_write(self.secret_path, secret, 0o600)
        atomic_write(self.root_path, (to_text(root(secret)) + "\n").encode(), 0o600)
        atomic_write(self.link_id_path, (link_id.hex() + "\n").encode())
        manifest = dict(manifest, version=MANIFEST_VERSION, link_id=link_id.hex())
        write_json(self.manifest_path, manifest)

    def secret(self) -> bytes:
        try:
            data = self.secret_path.read_bytes()
        except FileNotFoundError as exc:
            raise HomeError(f"{self.path} is not a device home (run `edgistry device init`)") from exc
        if len(data) < 16:
            raise HomeError(f"{self.secret_path} is too short")
        return data

    def root_token(self) -> bytes:
        try:
            return load_token(self.root_path.read_text()).to_bytes()
        except FileNotFoundError as exc:
            raise HomeError(f"{self.root_path} is missing") from exc
        except ValueError as exc:
            raise HomeError(f"{self.root_path}: {exc}") from exc

    def link_id(self) -> bytes:
        try:
            lid = bytes.fromhex(self.link_id_path.read_text().strip())
        except (FileNotFoundError, ValueError) as exc:
            raise HomeError(f"{self.link_id_path} is missing or not hex") from exc
        if len(lid) != LINK_ID_SIZE:
            raise HomeError(f"{self.link_id_path}: a link id is {LINK_ID_SIZE} bytes")
        return lid

    def manifest(self) -> dict:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise HomeError(f"{self.manifest_path} is missing or not JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("services"), list):
            raise HomeError(f"{self.manifest_path} has no services list")
        return data

    def paired(self) -> Pairing:
        """The pairing, or HomeError when the device is not paired."""
        try:
            data = json.loads(self.paired_path.read_text())
        except FileNotFoundError as exc:
            raise HomeError(f"{self.path} is not paired yet (run `edgistry pair --device "
                            f"{self.path} --gateway HOST:PORT`)") from exc
        except ValueError as exc:
            raise HomeError(f"{self.paired_path} is not JSON") from exc
        try:
            endpoint = data.get("gateway") or data["link_endpoint"]
            host, _, port = endpoint.rpartition(":")
            token = decode_blob(data["identity_token"])
            if data.get("link_id") and bytes.fromhex(data["link_id"]) != self.link_id():
                raise HomeError(f"{self.paired_path} is for another link id")
            return Pairing(host.strip("[]") or "127.0.0.1", int(port), token,
                           str(data.get("pseudonym", "")), str(data.get("gateway_id", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HomeError(f"{self.paired_path}: bad or missing field ({exc})") from exc

    def write_paired(self, endpoint: str, identity_token: bytes, pseudonym: str = "",
                     gateway_id: str = "") -> None:
        """Write ``paired.json`` (what the pairing tool does; tests use it too)."""
        write_json(self.paired_path, {
            "version": PAIRED_VERSION, "gateway": endpoint,
            "identity_token": to_text(identity_token), "pseudonym": pseudonym,
            "gateway_id": gateway_id, "link_id": self.link_id().hex()}, 0o600)
