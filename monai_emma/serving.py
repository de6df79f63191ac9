"""A small client for a U-Fuser served with ``mlflow models serve`` (see ``docs/serving.md``).

The server's ``POST /invocations`` takes ``{"inputs": <N x 2 x H x W float32 nested list>}``
(channel 0 the anatomical image, channel 1 the other modality, both in [0, 1]) and answers
``{"predictions": <N x 1 x H x W>}``. JSON of floats costs about 20 bytes per pixel each way, so
send volumes slice by slice (or a few slices per request), never as one request::

    from monai_emma.serving import fuse_remote

    fused = fuse_remote("http://127.0.0.1:5000", mri_slice, ct_slice)  # (H, W) float32
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np

__all__ = ["ServingError", "fuse_remote", "post_batch"]


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
