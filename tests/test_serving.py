"""REST serving for real: ``monai-emma register`` the shipped U-Fuser into a SQLite registry, start
``mlflow models serve`` on loopback, post pairs (good and bad) and stop it."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("mlflow")

from monai_emma.cli import main  # noqa: E402
from monai_emma.data.phantom import phantom_slice_pair  # noqa: E402
from monai_emma.networks import ufuser  # noqa: E402
from monai_emma.serving import MALFORMED, ServingError, fuse_remote, load_test, mlflow_server, post_batch  # noqa: E402
from monai_emma.weights import UFuserWeights  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["register", "--tracking-uri", uri]) == 0
    return uri


@pytest.fixture
def served_model(registry, tmp_path):
    with mlflow_server("models:/emma-ufuser/1", registry, log=tmp_path / "serve.log") as url:
        yield url


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


def test_concurrent_clients_with_malformed_requests_mixed_in(registry, tmp_path):
    """8 clients x 25 requests at once against 2 server workers, a malformed request after every
    fifth: no errors, every answer equal to in-process fusion, every malformed one a 400. (64²
    here to keep the suite short; benchmarks/bench_serving.py runs 256² at 1, 2 and 4 workers.)"""
    net = ufuser(weights=UFuserWeights.DEFAULT)
    mri, pet = phantom_slice_pair(64, "pet")
    batch = np.stack([mri, pet])[None]
    with torch.inference_mode():
        expected = net(torch.from_numpy(batch)).numpy()
    with mlflow_server("models:/emma-ufuser/1", registry, workers=2, log=tmp_path / "serve.log") as url:
        result = load_test(url, batch, expected, clients=8, requests=25, malformed_every=5)
        assert fuse_remote(url, mri, pet).shape == mri.shape  # still serving afterwards
    assert result.errors == [] and result.wrong == 0 and len(result.latencies) == 200
    assert result.malformed_sent == 8 * 5 and result.malformed_refused == result.malformed_sent
    assert len(MALFORMED) == 4 and 0 < result.percentile(50) <= result.percentile(95)


def test_a_server_that_cannot_start_is_one_error(tmp_path):
    with pytest.raises(ServingError, match="exited with"):
        with mlflow_server("models:/nothing/1", f"sqlite:///{tmp_path / 'none.db'}", startup_timeout=120):
            pass
