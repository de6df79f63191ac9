"""A Ray cluster of separate node processes and an MLflow tracking server, all on 127.0.0.1.

Test support for ``tests/test_cluster.py``. It runs the commands of docs/cluster.md ("Several
nodes on one machine") as they are written there:

* every node gets its own ``--temp-dir`` (two nodes sharing one break the job's working directory)
  and its own ports (with Ray's default ports a second node on the same machine leaves the job
  server answering "No available agent to submit job");
* every command starts in a session of its own (``ray start --block``), and stopping a node sends
  SIGKILL to exactly the processes of that session, found through ``/proc``: Ray's agents ignore
  SIGTERM and rename themselves, so neither ``ray stop`` (which would also hit other Ray
  processes of the user) nor matching command lines is safe.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LoopbackCluster", "ManagedProcess", "free_ports", "session_pids"]

HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid`` (Linux ``/proc``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the command name (which may hold spaces) in parentheses: state ppid pgrp session
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class ManagedProcess:
    """One command started in a session of its own; :meth:`kill` ends the whole session."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self

    @property
    def pids(self) -> list[int]:
        return session_pids(self.popen.pid) if self.popen is not None else []

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, timeout: float = 30.0) -> list[int]:
        """SIGKILL every process of the session until none is left; returns the pids killed."""
        if self.popen is None:
            return []
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {pids} survived SIGKILL")
            time.sleep(0.2)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return sorted(killed)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


@dataclass
class LoopbackCluster:
    """A head node, worker nodes and an MLflow server as separate processes on 127.0.0.1.

    Args:
        root: folder for temp dirs, logs, the MLflow store and the shared Ray storage. Ray needs
            short temp-dir paths (its socket paths must stay under 107 characters).
        bin_dir: the environment's ``bin/`` (``ray``, ``mlflow``, ``python``); put first on PATH so
            that job entrypoints and ``mlflow``'s ``uvicorn`` come from the same environment.
    """

    root: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    processes: list[ManagedProcess] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    mlflow_port: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.env = {
            **os.environ,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",  # loopback only: no token to hand to the job client
            "RAY_USAGE_STATS_ENABLED": "0",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("RAY_ADDRESS", None)

    # ------------------------------------------------------------------ commands (as in the guide)
    def head_command(self, num_cpus: int = 1) -> list[str]:
        (
            self.gcs_port,
            self.dashboard_port,
            client,
            manager,
            objects,
            metrics,
            agent_http,
            agent_grpc,
            runtime_env,
        ) = free_ports(9)
        return [
            str(self.bin_dir / "ray"), "start", "--head", "--block",
            "--node-ip-address", HOST, "--port", str(self.gcs_port),
            "--num-cpus", str(num_cpus), "--temp-dir", str(self.root / "head"),
            "--include-dashboard", "true", "--dashboard-host", HOST, "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(client),
            *self._node_ports(manager, objects, metrics, agent_http, agent_grpc, runtime_env),
            "--disable-usage-stats",
        ]  # fmt: skip

    def worker_command(self, name: str, num_cpus: int = 1) -> list[str]:
        manager, objects, metrics, agent_http, agent_grpc, runtime_env = free_ports(6)
        return [
            str(self.bin_dir / "ray"), "start", "--block",
            "--address", f"{HOST}:{self.gcs_port}", "--node-ip-address", HOST,
            "--num-cpus", str(num_cpus), "--temp-dir", str(self.root / name),
            *self._node_ports(manager, objects, metrics, agent_http, agent_grpc, runtime_env),
            "--disable-usage-stats",
        ]  # fmt: skip

    @staticmethod
    def _node_ports(manager, objects, metrics, agent_http, agent_grpc, runtime_env) -> list[str]:
        return [
            "--node-manager-port", str(manager), "--object-manager-port", str(objects),
            "--metrics-export-port", str(metrics),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env),
            "--worker-port-list", ",".join(str(p) for p in free_ports(24)),
        ]  # fmt: skip

    def mlflow_command(self) -> list[str]:
        (self.mlflow_port,) = free_ports(1)
        store = self.root / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        return [
            str(self.bin_dir / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"),
            "--host", HOST, "--port", str(self.mlflow_port), "--workers", "1",
        ]  # fmt: skip

    # ------------------------------------------------------------------ lifecycle
    @property
    def dashboard(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.root / "logs" / f"{name}.log", self.env).start()
        self.processes.append(proc)
        return proc

    def start_head(self, timeout: float = 120.0) -> ManagedProcess:
        proc = self._start("head", self.head_command())
        self.wait_for_nodes(1, timeout, proc)
        return proc

    def start_worker(self, name: str = "node2", timeout: float = 120.0) -> ManagedProcess:
        alive = len(self.alive_nodes())
        proc = self._start(name, self.worker_command(name))
        self.wait_for_nodes(alive + 1, timeout, proc)
        return proc

    def start_mlflow(self, timeout: float = 120.0) -> ManagedProcess:
        proc = self._start("mlflow", self.mlflow_command())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"mlflow server exited:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return proc
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not up after {timeout:.0f} s:\n{proc.tail()}")

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes, from the dashboard's state API (``ray list nodes``)."""
        try:
            data = _http_json(f"{self.dashboard}/api/v0/nodes?limit=100&detail=true")
        except (urllib.error.URLError, OSError, ValueError):
            return []
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [n for n in rows if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float, proc: ManagedProcess | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited while starting:\n{proc.tail()}")
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                return nodes
            time.sleep(1.0)
        tails = "\n".join(f"--- {p.name}\n{p.tail(20)}" for p in self.processes)
        raise TimeoutError(f"{count} Ray node(s) not alive after {timeout:.0f} s\n{tails}")

    def submit_command(self, working_dir: Path, entrypoint: list[str], submission_id: str) -> list[str]:
        return [
            str(self.bin_dir / "ray"), "job", "submit", "--address", self.dashboard,
            "--working-dir", str(working_dir), "--submission-id", submission_id, "--no-wait",
            "--", *entrypoint,
        ]  # fmt: skip

    def submit(self, working_dir: Path, entrypoint: list[str], submission_id: str) -> None:
        argv = self.submit_command(working_dir, entrypoint, submission_id)
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def job_status(self, submission_id: str) -> str:
        return str(_http_json(f"{self.dashboard}/api/jobs/{submission_id}").get("status"))

    def job_logs(self, submission_id: str) -> str:
        try:
            return str(_http_json(f"{self.dashboard}/api/jobs/{submission_id}/logs").get("logs", ""))
        except (urllib.error.URLError, OSError, ValueError) as err:
            return f"(logs unavailable: {err})"

    def wait_for_job(self, submission_id: str, timeout: float, poll: float = 2.0) -> str:
        deadline = time.monotonic() + timeout
        status = "UNKNOWN"
        while time.monotonic() < deadline:
            try:
                status = self.job_status(submission_id)
            except (urllib.error.URLError, OSError, ValueError):
                status = "UNKNOWN"
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(poll)
        return status

    def stop(self) -> list[int]:
        """Kill every process this cluster started (latest first); returns their pids."""
        killed = []
        for proc in reversed(self.processes):
            killed += proc.kill()
        return killed
