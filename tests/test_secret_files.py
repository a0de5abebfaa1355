"""Secrets at rest: a home, a keys folder or a board folder that someone else could write
to is refused rather than adopted, and secret files are new files of mode 0600 that never
write through a planted symlink or hard link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgistry.config import HomeError, write_secret_file
from edgistry.firmware.export import ExportError, export
from edgistry.firmware.runtime.home import DeviceHome


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_init_refuses_a_home_others_can_write_to(tmp_path: Path):
    """A predictable home made beforehand with mode 0777 (as another user could in a shared
    /tmp): `init` refuses it, and writes no key into it."""
    from edgistry.cluster.home import init_home

    home = tmp_path / "shared-home"
    (home / "keys").mkdir(parents=True)
    os.chmod(home, 0o777)
    with pytest.raises(HomeError, match="others cannot write"):
        init_home(home, "c1")
    assert list((home / "keys").iterdir()) == []
    os.chmod(home, 0o755)
    os.chmod(home / "keys", 0o777)
    with pytest.raises(HomeError, match="others cannot write"):
        init_home(home, "c1")
    assert list((home / "keys").iterdir()) == []


def test_a_fresh_home_keeps_its_keys_private(tmp_path: Path):
    from edgistry.cluster.home import init_home

    cfg = init_home(tmp_path / "home", "c1")
    keys = cfg.home / "keys"
    assert mode(keys) == 0o700
    for f in keys.iterdir():
        if f.name.endswith((".key", ".pem", ".secret")) and f.name != "tls.pem":
            assert mode(f) & 0o077 == 0, f


def test_secret_files_replace_planted_links_instead_of_writing_through(tmp_path: Path):
    """A symlink or a hard link planted at a secret's path is replaced: the file it pointed
    at is untouched, and the secret is a new 0600 file."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    precious = tmp_path / "precious.conf"
    precious.write_text("keep me\n")
    (keys / "by-symlink").symlink_to(precious)
    os.link(precious, keys / "by-hardlink")
    for name in ("by-symlink", "by-hardlink"):
        write_secret_file(keys / name, b"secret bytes")
        assert (keys / name).read_bytes() == b"secret bytes" and not (keys / name).is_symlink()
        assert mode(keys / name) == 0o600
    assert precious.read_text() == "keep me\n" and os.stat(precious).st_nlink == 1


def test_device_export_refuses_a_folder_others_can_write_and_writes_secrets_0600(tmp_path: Path):
    """`device export` puts the device's secret and tokens in the board folder: never into
    a folder others can write to, and as new 0600 files (not written through a link)."""
    home = DeviceHome(tmp_path / "dev")
    home.create({"services": [{"type": "sensor", "methods": ["read"]}], "duty_cycle_s": 30})
    home.write_paired("127.0.0.1:26671", b"\x01" * 32, "ab" * 8, "gw")
    shared = tmp_path / "board-shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ExportError, match="others cannot write"):
        export(home, shared, mpy=False)
    assert not (shared / "secret").exists()
    board = tmp_path / "board"
    board.mkdir(mode=0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    os.link(elsewhere, board / "secret")
    export(home, board, mpy=False)
    assert elsewhere.read_bytes() == b""
    assert (board / "secret").read_bytes() == home.secret()
    assert mode(board / "secret") == 0o600 and mode(board / "device.json") == 0o600
