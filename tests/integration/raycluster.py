"""A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address` nodes.

Every node is a `ray start --block` process in its own process session; the PIDs of it and of everything it
starts are recorded, and only those are ended (never `ray stop`, which matches processes machine-wide).
Nodes listen on 127.0.0.2: Ray rewrites 127.0.0.1 to the machine's outward address, other loopback
addresses are kept as they are, so all cluster traffic stays on the loopback interface.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

NODE_IP = "127.0.0.2"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def raylet(self) -> psutil.Process | None:
        return next((p for p in self.descendants() if _name(p) == "raylet"), None)

    def worker_pids(self) -> set[int]:
        """PIDs of the Ray worker processes this node's raylet started."""
        raylet = self.raylet()
        if raylet is None:
            return set()
        try:
            return {p.pid for p in raylet.children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()


@dataclass
class LocalRayCluster:
    temp_dir: Path
    port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)
    started: set[int] = field(default_factory=set)   # every PID we started or saw our nodes start

    @property
    def address(self) -> str:
        return f"{NODE_IP}:{self.port}"

    def _start(self, name: str, args: list[str], cpus: int, resources: dict[str, float]) -> RayNode:
        log = self.temp_dir / f"{name}.log"
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"]
        cmd = [RAY, "start", "--block", f"--node-ip-address={NODE_IP}", f"--num-cpus={cpus}",
               f"--resources={json.dumps(resources)}", "--object-store-memory=80000000", "--disable-usage-stats",
               *ports, *args]
        proc = subprocess.Popen(cmd, env=cluster_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.add(proc.pid)
        node = RayNode(name, proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, cpus: int = 1) -> RayNode:
        node = self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                                    f"--temp-dir={self.temp_dir / 'ray'}"], cpus, {"head": 1.0})
        self._wait_for_nodes(1, node)
        return node

    def add_node(self, name: str, cpus: int = 1) -> RayNode:
        node = self._start(name, [f"--address={self.address}"], cpus, {name: 1.0})
        self._wait_for_nodes(len(self.nodes), node)
        return node

    def _wait_for_nodes(self, count: int, node: RayNode, timeout_s: float = 90) -> None:
        """Until `count` raylets run (ours) and the newest node's raylet has registered (its log says so)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray node {node.name} exited {node.proc.returncode}:\n"
                                   f"{node.log.read_text()[-3000:]}")
            self.remember_pids()
            if all(n.raylet() is not None for n in self.nodes if n.proc.poll() is None) and _registered(node):
                return
            time.sleep(0.25)
        raise RuntimeError(f"ray node {node.name} did not come up in {timeout_s} s:\n{node.log.read_text()[-3000:]}")

    def remember_pids(self) -> None:
        for node in self.nodes:
            self.started.update(p.pid for p in node.descendants())

    def kill_raylet(self, node: RayNode) -> int:
        """SIGKILL the node's raylet, as when a machine dies; returns its PID."""
        self.remember_pids()
        raylet = node.raylet()
        assert raylet is not None, f"node {node.name} has no raylet"
        raylet.kill()
        return raylet.pid

    def shutdown(self) -> None:
        """End every process we started, by PID (SIGTERM, then SIGKILL whatever is left)."""
        self.remember_pids()
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in sorted(self.started):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for node in self.nodes:
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _registered(node: RayNode) -> bool:
    text = node.log.read_text(errors="replace") if node.log.exists() else ""
    return "Ray runtime started" in text


def short_temp_dir() -> Path:
    """Ray's socket paths must stay short: a fresh directory right under /tmp."""
    return Path(tempfile.mkdtemp(prefix="bsr-", dir="/tmp"))
