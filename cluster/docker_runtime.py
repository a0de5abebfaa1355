"""``edgistry cluster up | status | down --runtime docker``: the container project, driven
through the Docker SDK for Python (``pip install 'edgistry[docker]'``): no compose CLI needed.

The containers are made from the very service dictionaries that ``cluster compose``
writes into docker-compose.yml (:func:`~edgistry.cluster.compose.services`), so both paths
run the same cluster: same images, commands, bind mounts, published ports, health checks,
restart policy and labels. What Compose would add is done here:

* images: ``edgistry:VERSION`` is built from ``DIR/image`` (network "none") unless an image
  of that tag already carries the digest of these wheels; the CometBFT image is pulled
  when absent;
* one bridge network per project (``<project>-net``) where each container answers to its
  service name (``node2``, ``gateway2``); ``abci{i}`` joins no network at all;
* order: per node the app, until healthy, then its cometbft; once every node commits and
  all agree on the app hash, the gateways, until healthy. Every wait is bounded.

Resume, as for processes: ``up`` again starts what is not running and leaves running
containers alone; a stopped container whose configuration changed (a rebuilt image, a
new spec) is recreated. Data lives in the bind-mounted node folders, so ``down`` (stop
and remove the containers and the network) loses nothing and ``up`` brings it all back.
Containers are found by the project labels, so ``status`` and ``down`` also see
containers that Compose created from the same project.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cometbft_files import ConsensusSettings
from .compose import (
    IMAGE_DIR, LABEL_PROJECT, LABEL_SERVICE, LABEL_WHEELS, PUBLISH, ContainerProject, load_project, services,
    write_project,
)
from .localnet import DEFAULT_BASE_PORT, MANIFEST, NodeLayout
from .ops import Agreement, ClusterError, agreement, chain_report, gateway_health, wait_agreement

LABEL_CONFIG = "io.edgistry.config"  # digest of a container's creation settings and image id
ROLES = {"app": "abci{i}", "cmt": "node{i}", "gw": "gateway{i}"}  # start order; stop order is the reverse
APP_READY_TIMEOUT = 60.0
GATEWAY_WAIT = 90.0
STOP_TIMEOUT = 10  # seconds `docker stop` waits before SIGKILL
MAX_RESTARTS = 3  # an app that restarted this often while we waited will not come up
PROGRESS_EVERY = 2.0
LOG_TAIL = 15
INSTALL_HINT = "the Docker runtime needs the Docker SDK for Python: pip install 'edgistry[docker]'"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def connect() -> Any:
    """A client of the Docker engine named by the environment (DOCKER_HOST, or the default socket)."""
    try:
        import docker
    except ImportError as exc:
        raise ClusterError(INSTALL_HINT) from exc
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ClusterError(f"cannot reach the Docker engine (DOCKER_HOST or the default socket): {exc}") from exc
    return client


def endpoints(node: NodeLayout) -> dict[str, str]:
    """Where a container node is reached from this host (published on 127.0.0.1) and inside."""
    p = node.ports
    return {"rpc": f"http://{PUBLISH}:{p.rpc}", "grpc": f"{PUBLISH}:{p.grpc}", "link": f"{PUBLISH}:{p.link}",
            "http": f"https://{PUBLISH}:{p.http}", "p2p": f"{node.node_id}@{node.moniker}:26656 (project network)",
            "abci": f"unix://{node.root / 'abci' / 'abci.sock'} (no network)"}


def _duration_ns(text: str) -> int:
    """A compose duration of whole or fractional seconds ("2s", "0.5s") in nanoseconds."""
    if not text.endswith("s") or text.endswith("ms"):
        raise ValueError(f"unsupported duration {text!r}")
    return int(float(text[:-1]) * 1_000_000_000)


class Runtime:
    """One container project on one Docker engine."""

    def __init__(self, client: Any, directory: Path) -> None:
        self.client = client
        self.directory = directory.expanduser().resolve()
        self.layouts, self.project = load_project(self.directory)
        self.specs = services(self.layouts, self.project)
        self.network = f"{self.project.name}-net"

    # ---- finding ----

    def containers(self) -> dict[str, Any]:
        """Service name -> container of this project (a running one first, when there are several)."""
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={self.project.name}"})
        found.sort(key=lambda c: c.status != "running", reverse=True)  # running ones last: they win below
        return {c.labels.get(LABEL_SERVICE, c.name): c for c in found}

    def service(self, role: str, node: NodeLayout) -> str:
        return ROLES[role].format(i=node.index)

    # ---- creating ----

    def create_kwargs(self, service: str) -> dict[str, Any]:
        """``containers.create`` arguments equivalent to the compose service ``service``."""
        spec = self.specs[service]
        kw: dict[str, Any] = {
            "image": spec["image"], "command": spec.get("command"), "entrypoint": spec.get("entrypoint"),
            "user": spec["user"], "init": bool(spec.get("init")), "name": f"{self.project.name}-{service}",
            "labels": dict(spec["labels"]), "restart_policy": {"Name": spec["restart"]},
            "volumes": {}, "ports": {}, "detach": True,
            "cap_drop": list(spec.get("cap_drop", [])), "security_opt": list(spec.get("security_opt", [])),
        }
        for volume in spec["volumes"]:
            source, target, *mode = volume.split(":")
            kw["volumes"][str((self.directory / source).resolve())] = {"bind": target, "mode": mode[0] if mode else "rw"}
        for port in spec.get("ports", []):
            address, host, container = port.rsplit(":", 2)
            kw["ports"][f"{container}/tcp"] = (address, int(host))
        check = spec["healthcheck"]
        kw["healthcheck"] = {"test": check["test"], "retries": check["retries"],
                             **{k: _duration_ns(check[k]) for k in ("interval", "timeout", "start_period")}}
        if spec.get("network_mode") == "none":
            kw["network_mode"] = "none"
        else:
            kw["network"] = self.network
        return kw

    def _config_digest(self, kw: dict[str, Any]) -> str:
        image_id = self.client.images.get(kw["image"]).id
        return hashlib.sha256(json.dumps([kw, image_id], sort_keys=True).encode()).hexdigest()[:16]

    def ensure_images(self, progress: Progress = _quiet) -> None:
        """Build the Edgistry image unless current; pull the CometBFT image when absent."""
        import docker

        project = self.project
        try:
            current = self.client.images.get(project.edgistry_image).labels.get(LABEL_WHEELS) == project.wheels_digest
        except docker.errors.ImageNotFound:
            current = False
        if not current:
            progress(f"building {project.edgistry_image} from {self.directory / IMAGE_DIR} (no network)")
            try:
                self.client.images.build(path=str(self.directory / IMAGE_DIR), tag=project.edgistry_image, rm=True,
                                         forcerm=True, network_mode="none")
            except docker.errors.BuildError as exc:
                tail = "".join(str(line.get("stream", line.get("error", ""))) for line in exc.build_log)[-2000:]
                raise ClusterError(f"building {project.edgistry_image} failed: {exc.msg}\n{tail}") from exc
            except docker.errors.APIError as exc:
                raise ClusterError(f"building {project.edgistry_image} failed: {exc}") from exc
        try:
            self.client.images.get(project.cometbft_image)
        except docker.errors.ImageNotFound:
            progress(f"pulling {project.cometbft_image}")
            repository, _, tag = project.cometbft_image.rpartition(":")
            try:
                self.client.images.pull(repository, tag=tag)
            except docker.errors.APIError as exc:
                raise ClusterError(f"cannot pull {project.cometbft_image}: {exc}") from exc

    def ensure_network(self) -> None:
        label = f"{LABEL_PROJECT}={self.project.name}"
        if not self.client.networks.list(filters={"label": label}):
            self.client.networks.create(self.network, driver="bridge", labels={LABEL_PROJECT: self.project.name})

    def ensure(self, service: str, existing: dict[str, Any]) -> str | None:
        """Start ``service`` unless it runs (creating or recreating its container); what was done."""
        container = existing.get(service)
        if container is not None and container.status in ("running", "restarting"):
            return None
        kw = self.create_kwargs(service)
        digest = self._config_digest(kw)
        done = "started"
        if container is not None and container.labels.get(LABEL_CONFIG) != digest:
            container.remove(force=True)
            container, done = None, "recreated"
        if container is None:
            kw["labels"][LABEL_CONFIG] = digest
            if "network" in kw:
                aliases = self.client.api.create_endpoint_config(aliases=[service])
                kw["networking_config"] = {self.network: aliases}
            container = self.client.containers.create(**kw)
            done = "created" if done == "started" else done
        container.start()
        return done

    # ---- waiting ----

    def wait_healthy(self, service: str, timeout: float) -> None:
        """Until the container's health check passes; fails early when it keeps restarting."""
        deadline = time.monotonic() + timeout
        while True:
            container = self.containers()[service]
            state = container.attrs["State"]
            if state.get("Health", {}).get("Status") == "healthy":
                return
            if container.attrs.get("RestartCount", 0) >= MAX_RESTARTS or state["Status"] in ("exited", "dead") \
                    and container.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("", "no"):
                raise ClusterError(f"{container.name} is {state['Status']} (restarted "
                                   f"{container.attrs.get('RestartCount', 0)} times); its log:\n{self.log_tail(container)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{container.name} not healthy after {timeout:.0f} s; its log:\n"
                                   f"{self.log_tail(container)}")
            time.sleep(0.25)

    def wait_gateways(self, timeout: float, progress: Progress = _quiet) -> None:
        deadline, last_report = time.monotonic() + timeout, 0.0
        while True:
            health = {n.moniker: gateway_health(n) for n in self.layouts}
            if all(ok for ok, _ in health.values()):
                return
            now = time.monotonic()
            waiting = ", ".join(f"{m} ({detail})" for m, (ok, detail) in health.items() if not ok)
            if now > deadline:
                raise ClusterError(f"gateways not healthy after {timeout:.0f} s: {waiting}\n{self.diagnose()}")
            if now - last_report >= PROGRESS_EVERY:
                progress(f"waiting for gateways: {waiting}")
                last_report = now
            time.sleep(0.25)

    @staticmethod
    def log_tail(container: Any, lines: int = LOG_TAIL) -> str:
        text = container.logs(tail=lines).decode(errors="replace")
        return "\n".join(f"  | {line}" for line in text.splitlines())

    def diagnose(self) -> str:
        """State and log tail of every container that is not running and healthy."""
        parts = []
        for service, container in sorted(self.containers().items()):
            state = container.attrs["State"]
            health = state.get("Health", {}).get("Status")
            if state["Status"] != "running" or health not in (None, "healthy"):
                parts.append(f"{container.name}: {state['Status']} {health or ''}\n{self.log_tail(container)}")
        return "\n".join(parts)


# ---- the cluster ----


def up(directory: Path, nodes: int = 4, base_port: int | None = None, consensus: ConsensusSettings | None = None,
       snapshot_interval: int = 10, chain_id: str | None = None, timeout: float = 120.0,
       wheel_dir: Path | None = None, cometbft_image: str | None = None,
       progress: Progress = _quiet) -> tuple[list[NodeLayout], Agreement]:
    """Write the container project in ``directory`` unless there is one, start every container
    that is not running, and wait until all nodes commit and agree, then for the gateways."""
    directory = directory.expanduser().resolve()
    if not ContainerProject.exists(directory):
        if (directory / MANIFEST).exists():
            raise ClusterError(f"{directory} holds a localnet of processes: run it without --runtime docker")
        kwargs = {"cometbft_image": cometbft_image} if cometbft_image else {}
        write_project(directory, nodes, chain_id, snapshot_interval, base_port=base_port or DEFAULT_BASE_PORT,
                      consensus=consensus, wheel_dir=wheel_dir, **kwargs)
        progress(f"wrote a {nodes}-node container project in {directory}")
    else:
        progress(f"resuming the container project in {directory}")
    runtime = Runtime(connect(), directory)
    runtime.ensure_images(progress)
    runtime.ensure_network()
    before = [chain_report(n)["height"] for n in runtime.layouts]
    for node in runtime.layouts:
        for role in ("app", "cmt"):
            service = runtime.service(role, node)
            done = runtime.ensure(service, runtime.containers())
            if done:
                progress(f"{service}: {done}")
            if role == "app":
                runtime.wait_healthy(service, APP_READY_TIMEOUT)
    target = max([h for h in before if h is not None] + [1]) + 1  # one new block at least
    try:
        agreed = wait_agreement(runtime.layouts, target, timeout, progress)
    except ClusterError as exc:
        raise ClusterError(f"{exc}\n{runtime.diagnose()}") from exc
    if runtime.project.gateway:
        for node in runtime.layouts:
            service = runtime.service("gw", node)
            done = runtime.ensure(service, runtime.containers())
            if done:
                progress(f"{service}: {done}")
        runtime.wait_gateways(min(timeout, GATEWAY_WAIT), progress)
    return runtime.layouts, agreed


def status(directory: Path) -> dict[str, Any]:
    """Per node: its containers (state, health, restarts), height, app hash, peers, gateway
    health; and whether the reachable nodes agree."""
    runtime = Runtime(connect(), directory)
    found = runtime.containers()
    out = []
    for node in runtime.layouts:
        entry: dict[str, Any] = {"node": node.moniker, "endpoints": endpoints(node), "containers": {}}
        for role in ROLES:
            if role == "gw" and not runtime.project.gateway:
                continue
            container = found.get(runtime.service(role, node))
            state = container.attrs["State"] if container is not None else {}
            entry["containers"][role] = {
                "name": container.name if container is not None else None,
                "running": state.get("Status") == "running", "state": state.get("Status", "absent"),
                "health": state.get("Health", {}).get("Status"),
                "restarts": container.attrs.get("RestartCount", 0) if container is not None else 0,
            }
        entry.update(chain_report(node))
        if runtime.project.gateway:
            ok, detail = gateway_health(node)
            entry["gateway"] = {"healthy": ok, "detail": detail}
        out.append(entry)
    return {"dir": str(runtime.directory), "runtime": "docker", "project": runtime.project.name,
            "nodes": out, "agreement": agreement(runtime.layouts, out)}


def down(directory: Path) -> dict[str, str]:
    """Stop and remove every container of the project (gateways, then cometbft, then the apps)
    and its network; data stays in the node folders. Container name -> outcome."""
    runtime = Runtime(connect(), directory)
    found = runtime.containers()
    order = [runtime.service(r, n) for r in reversed(list(ROLES)) for n in runtime.layouts]
    order += sorted(set(found) - set(order))  # anything else carrying the project label
    out: dict[str, str] = {}
    for service in order:
        container = found.get(service)
        if container is None:
            continue
        was = container.status
        if was == "running":
            container.stop(timeout=STOP_TIMEOUT)
        container.remove(force=True)
        out[container.name] = "stopped and removed" if was == "running" else f"removed ({was})"
    for network in runtime.client.networks.list(filters={"label": f"{LABEL_PROJECT}={runtime.project.name}"}):
        network.remove()
    return out
