"""A small client for a U-Fuser served with ``mlflow models serve`` (see ``docs/serving.md``).

The server's ``POST /invocations`` takes ``{"inputs": <N x 2 x H x W float32 nested list>}``
(channel 0 the anatomical image, channel 1 the other modality, both in [0, 1]) and answers
``{"predictions": <N x 1 x H x W>}``. JSON of floats costs about 20 bytes per pixel each way, so
send volumes slice by slice (or a few slices per request), never as one request::

    from monai_emma.serving import fuse_remote

    fused = fuse_remote("http://127.0.0.1:5000", mri_slice, ct_slice)  # (H, W) float32
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ServingError", "fuse_remote", "post_batch", "LoadResult", "load_test", "MALFORMED", "mlflow_server"]


class ServingError(RuntimeError):
    """The server refused the request (status code and its message) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _short(message: str) -> str:
    """MLflow prefixes schema errors with a (numpy-summarised) echo of the input: keep the error."""
    tail = message.rsplit("Error:", 1)[-1].strip()
    return tail[:500]


def post_batch(url: str, batch: np.ndarray, timeout: float = 120.0) -> np.ndarray:
    """POST an ``(N, 2, H, W)`` batch to ``<url>/invocations``; returns the ``(N, 1, H, W)`` result.

    Raises:
        ServingError: a 4xx/5xx answer (its status and the server's message, without the echo of
            the input) or no connection.
    """
    batch = np.asarray(batch, dtype=np.float32)
    body = json.dumps({"inputs": batch.tolist()}).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("message", "")
        except ValueError:
            message = ""
        raise ServingError(f"{url}: HTTP {err.code}: {_short(message) or err.reason}", err.code) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise ServingError(f"{url}: no answer ({getattr(err, 'reason', err)})") from None
    return np.asarray(answer["predictions"], dtype=np.float32)


def fuse_remote(url: str, anatomical: np.ndarray, other: np.ndarray, timeout: float = 120.0) -> np.ndarray:
    """Fuse one ``(H, W)`` pair (both scaled to [0, 1], on the same grid) on a served U-Fuser.

    Returns:
        The fused ``(H, W)`` float32 image in [0, 1].
    """
    a, b = np.asarray(anatomical, np.float32), np.asarray(other, np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two 2D images of one shape, got {a.shape} and {b.shape}")
    return post_batch(url, np.stack([a, b])[None], timeout=timeout)[0, 0]


#: malformed requests a load test mixes in, each of which must get HTTP 400
MALFORMED: dict[str, bytes] = {
    "three channels": json.dumps({"inputs": np.zeros((1, 3, 8, 8)).tolist()}).encode(),
    "rank 3": json.dumps({"inputs": np.zeros((2, 8, 8)).tolist()}).encode(),
    "not numbers": b'{"inputs": [["a", "b"]]}',
    "not JSON": b'{"inputs": [[',
}


@dataclass
class LoadResult:
    """What :func:`load_test` measured. Latencies are of the well-formed requests, in seconds."""

    clients: int
    requests: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wrong: int = 0  # well-formed answers that differ from the expected fusion
    malformed_sent: int = 0
    malformed_refused: int = 0  # of those, answered with HTTP 400
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        """Well-formed requests answered per second of wall time."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "requests_per_client": self.requests,
            "answered": len(self.latencies),
            "errors": len(self.errors),
            "wrong": self.wrong,
            "malformed_sent": self.malformed_sent,
            "malformed_refused_400": self.malformed_refused,
            "p50_s": round(self.percentile(50), 4),
            "p95_s": round(self.percentile(95), 4),
            "throughput_per_s": round(self.throughput, 3),
            "seconds": round(self.seconds, 2),
        }


def load_test(
    url: str,
    batch: np.ndarray,
    expected: np.ndarray,
    clients: int = 8,
    requests: int = 25,
    malformed_every: int = 5,
    atol: float = 1e-4,
    timeout: float = 300.0,
) -> LoadResult:
    """``clients`` threads each POST ``requests`` copies of ``batch`` ((N, 2, H, W)) at once, with a
    malformed request (one of :data:`MALFORMED`, in turn) after every ``malformed_every``-th.
    Every answer to a good request is compared with ``expected`` to ``atol``; every malformed
    one must be refused with HTTP 400.
    """
    import threading
    import time

    result = LoadResult(clients, requests)
    lock = threading.Lock()
    bad = list(MALFORMED.values())
    start = threading.Barrier(clients)

    def raw(body: bytes) -> int:
        req = urllib.request.Request(
            url.rstrip("/") + "/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def client(index: int) -> None:
        start.wait()
        for n in range(requests):
            t = time.perf_counter()
            try:
                out = post_batch(url, batch, timeout=timeout)
            except ServingError as err:
                with lock:
                    result.errors.append(str(err))
                continue
            elapsed = time.perf_counter() - t
            ok = out.shape == expected.shape and bool(np.abs(out - expected).max() <= atol)
            with lock:
                result.latencies.append(elapsed)
                result.wrong += not ok
            if malformed_every and (n + 1) % malformed_every == 0:
                status = raw(bad[(index + n) % len(bad)])
                with lock:
                    result.malformed_sent += 1
                    result.malformed_refused += status == 400

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    result.seconds = time.perf_counter() - t0
    return result


@contextlib.contextmanager
def mlflow_server(
    model_uri: str,
    tracking_uri: str,
    workers: int = 1,
    port: int | None = None,
    log: str | os.PathLike | None = None,
    threads_per_worker: int | None = None,
    startup_timeout: float = 240.0,
) -> Iterator[str]:
    """Run ``mlflow models serve`` for ``model_uri`` on 127.0.0.1 with ``workers`` worker
    processes (``--env-manager local``, this Python's environment) and yield its URL once
    ``/ping`` answers; the whole process group is stopped on exit.

    Each worker computes with ``threads_per_worker`` threads (default: this process's usable CPUs
    shared between the workers, at least one: :func:`monai_emma.threads.usable_cpus`), set in
    its environment whatever this process's shell exported (:func:`monai_emma.threads.worker_env`).

    Raises:
        ServingError: the server exited or did not answer within ``startup_timeout`` (with the
            end of its log).
    """
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="mlflow-serve-", suffix=".log")[1])
    from monai_emma.threads import usable_cpus, worker_env

    threads = threads_per_worker or max(1, usable_cpus() // max(1, workers))
    env = worker_env(threads, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"})
    # the server starts uvicorn from the environment's bin/: put it on PATH (an activated venv has it)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise ServingError(f"mlflow models serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                raise ServingError(f"{url}: no answer within {startup_timeout:.0f} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
