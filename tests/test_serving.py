"""REST serving for real: ``monai-emma register`` the shipped U-Fuser into a SQLite registry, start
``mlflow models serve`` on loopback, post pairs (good and bad) and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mlflow")

from monai_emma.cli import main  # noqa: E402
from monai_emma.data.phantom import phantom_slice_pair  # noqa: E402
from monai_emma.networks import ufuser  # noqa: E402
from monai_emma.serving import ServingError, fuse_remote, post_batch  # noqa: E402
from monai_emma.weights import UFuserWeights  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    pytest.fail(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def served_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["register", "--tracking-uri", uri]) == 0
    port = _free_port()
    # the server starts uvicorn from the environment's bin/: put it on PATH (an activated venv has it)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/emma-ufuser/1"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_registered_model_serves_the_in_process_result_and_refuses_bad_input(served_model):
    url = served_model
    net = ufuser(weights=UFuserWeights.DEFAULT)
    mri, ct = phantom_slice_pair(96, "ct")
    fused = fuse_remote(url, mri, ct)
    with torch.inference_mode():
        expected = net(torch.from_numpy(np.stack([mri, ct])[None]))[0, 0].numpy()
    assert fused.shape == mri.shape
    np.testing.assert_allclose(fused, expected, atol=1e-4)
    # a batch of two pairs of another size in one request
    mri2, pet = phantom_slice_pair(64, "pet")
    batch = np.stack([np.stack([mri2, pet]), np.stack([pet, mri2])])
    out = post_batch(url, batch)
    with torch.inference_mode():
        np.testing.assert_allclose(out, net(torch.from_numpy(batch)).numpy(), atol=1e-4)

    bad = {
        "channels": np.zeros((1, 3, 32, 32), np.float32),
        "rank": np.zeros((2, 32, 32), np.float32),
    }
    for name, x in bad.items():
        with pytest.raises(ServingError) as err:
            post_batch(url, x)
        assert err.value.status == 400, name
        assert "shape" in str(err.value).lower() and len(str(err.value)) < 600, str(err.value)
    req = urllib.request.Request(
        url + "/invocations", data=b'{"inputs": [["a", "b"]]}', headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=60)
    assert http.value.code == 400 and b"could not convert" in http.value.read()
    # the server is still up and still right
    np.testing.assert_allclose(fuse_remote(url, mri, ct), expected, atol=1e-4)


def test_client_names_the_server_when_nothing_answers():
    with pytest.raises(ServingError, match="no answer"):
        fuse_remote(f"http://127.0.0.1:{_free_port()}", np.zeros((8, 8)), np.zeros((8, 8)), timeout=5)
    with pytest.raises(ValueError, match="two 2D images"):
        fuse_remote("http://127.0.0.1:1", np.zeros((8, 8)), np.zeros((8, 9)))
