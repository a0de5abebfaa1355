"""A private Docker daemon and registry-free images for the container tests.

:class:`PrivateDockerd` runs ``dockerd`` with every path (data, exec root, pid file,
socket, log) in one folder of its own and touches no global state: no docker0 bridge,
no iptables rules, no forwarding sysctl, its own address pool and cgroup parent. It is
stopped by its pid; its containers and networks are removed first, and leftovers of its
exec root (shims) are killed by pid, found by that folder's unique path.

No registry is reachable in CI, so the images the generated project names are stood in
for by local ones under the same tags:

* the Dockerfile's ``python:X.Y-slim-bookworm``: a ``debootstrap --variant=minbase``
  Debian root file system, imported with ``docker import``. The tarball is cached
  outside the repository (``~/.cache/edgistry-test``, or ``$EDGISTRY_TEST_CACHE``);
* ``cometbft/cometbft:vX.Y.Z``: that base plus the host's cometbft binary (it links only
  glibc, the same glibc as the base).

Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGISTRY_TEST_CACHE") or Path.home() / ".cache" / "edgistry-test")
SUITE_FOR_PYTHON = {(3, 11): "bookworm", (3, 13): "trixie"}  # Debian's python3 in each suite
# python3-venv: Debian's pip refuses system installs (PEP 668), the Dockerfile makes a venv;
# curl: the cometbft healthcheck (the official image has it too); tini: a real PID 1
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates,curl,tini,procps,iproute2,netbase"
MIRROR = "http://deb.debian.org/debian"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
DEBOOTSTRAP_TIMEOUT = 900


def require(condition: object, reason: str) -> None:
    """Skip the test when ``condition`` is false, except in CI (CI=true), where it fails:
    CI must run what it claims to run."""
    if condition:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI=true, and {reason}")
    pytest.skip(reason)


# ---- the daemon ----


class PrivateDockerd:
    """``dockerd`` in a folder of its own; ``url`` is its socket for DOCKER_HOST."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = root.name
        self.sock = root / "docker.sock"
        self.pidfile = root / "docker.pid"
        self.log = root / "dockerd.log"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def start(cls, binary: str) -> PrivateDockerd:
        root = Path(tempfile.mkdtemp(prefix="edgd-", dir="/tmp"))  # short: unix socket paths stop at 108 bytes
        daemon = cls(root)
        daemon._start(binary)
        return daemon

    def _start(self, binary: str) -> None:
        octet = _free_octet()
        argv = [binary, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.pidfile), "--host", self.url, "--storage-driver", _storage_driver(self.root),
                "--log-level", "warn", "--default-address-pool", f"base=10.{octet}.0.0/16,size=24",
                "--cgroup-parent", f"/edgistry-{self.name}",
                # nothing global: no docker0, no iptables rules, no sysctl; ports through docker-proxy
                "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"dockerd did not answer on {self.url}:\n{tail}")
            time.sleep(0.1)

    def client(self, timeout: int = 120):
        import docker

        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def answers(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return bool(self.client(timeout=5).ping())
        except Exception:  # noqa: BLE001 - not up yet, whatever the error
            return False

    def env(self) -> dict[str, str]:
        """Environment for a docker client of this daemon (SDK, compose v1 and v2)."""
        config = self.root / "config"
        config.mkdir(exist_ok=True)
        return {"DOCKER_HOST": self.url, "DOCKER_CONFIG": str(config)}

    def stop(self) -> None:
        """Remove every container and network, SIGTERM the daemon (SIGKILL after a bounded
        wait), kill what is left of its exec root by pid, unmount, delete the folder."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                client = self.client(timeout=30)
                for c in client.containers.list(all=True):
                    with contextlib.suppress(Exception):
                        c.remove(force=True)
                client.networks.prune()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in _pids_mentioning(str(self.root) + "/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mount in sorted(_mounts_under(self.root), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _storage_driver(root: Path) -> str:
    """overlay2 where an overlay mount works on this file system (not on overlayfs), else vfs."""
    probe = Path(tempfile.mkdtemp(dir=root))
    dirs = [probe / d for d in ("l", "u", "w", "m")]
    for d in dirs:
        d.mkdir()
    ok = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                         f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]}", str(dirs[3])],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(dirs[3])], check=False)
    shutil.rmtree(probe, ignore_errors=True)
    return "overlay2" if ok else "vfs"


def _free_octet() -> int:
    """N such that no route of this host is in 10.N.0.0/16 (the daemon's network pool)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used = {int(part.split(".")[1]) for part in routes.split() if part.startswith("10.") and part.count(".") == 3
            and part.split(".")[1].isdigit()}
    return random.choice([n for n in range(100, 200) if n not in used])


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
    return out


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


# ---- images ----


def rootfs_tarball(suite: str) -> Path:
    """The cached debootstrap root file system of ``suite`` (made once, under a lock)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{suite} {PACKAGES}".encode()).hexdigest()[:12]
    tar = CACHE / f"rootfs-{suite}-{key}.tar"
    with open(CACHE / "rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be making it right now
        if tar.exists():
            return tar
        root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
        try:
            proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", suite, str(root),
                                   MIRROR], capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"debootstrap {suite} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True, capture_output=True)
            for junk in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
                shutil.rmtree(root / junk, ignore_errors=True)
            (root / "etc" / "resolv.conf").write_text("")  # the host's: docker mounts its own
            partial = tar.with_suffix(".tmp")
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
            partial.replace(tar)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return tar


def import_base(client, tar: Path, tag: str) -> None:
    """``docker import`` the root file system as ``tag`` (PATH and a UTF-8 locale set)."""
    repository, _, version = tag.rpartition(":")
    with open(tar, "rb") as data:
        client.api.import_image_from_data(
            data, repository=repository, tag=version,
            changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    client.images.get(tag)  # raises if the import did not produce it


COMETBFT_DOCKERFILE = """\
FROM {base}
COPY cometbft /usr/bin/cometbft
ENV CMTHOME=/cometbft
EXPOSE 26656 26657 26660
ENTRYPOINT ["/usr/bin/tini", "--", "cometbft"]
CMD ["node"]
"""


def build_cometbft_image(client, binary: str, base: str, tag: str) -> None:
    """An image of the host's cometbft binary on ``base``, tagged ``tag`` (built offline)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        tar.add(binary, arcname="cometbft")
        dockerfile = COMETBFT_DOCKERFILE.format(base=base).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, network_mode="none")
    # the binary must run on the base (it should link nothing but the base's glibc)
    out = client.containers.run(tag, ["version"], entrypoint=["cometbft"], remove=True, network_mode="none")
    if not out.strip():
        raise RuntimeError(f"{binary} printed no version inside {tag}")
