"""Where a fusion model comes from: shipped weights, a state-dict file, a bundle or an MLflow registry.

:func:`resolve_fuser` is the single entry point used by ``monai-emma fuse``, ``fuse-folder``
and :func:`monai_emma.fusion.fuse_volumes`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from monai_emma.errors import first_line

__all__ = ["ModelSourceError", "resolve_fuser", "load_state_dict_file", "read_state_dict", "scoped_tracking_uri"]


class ModelSourceError(ValueError):
    """A model could not be loaded; one line naming the source and the problem."""


def read_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a plain state dict, or the one inside a training checkpoint
    (``{"network": …}``, ``"fuser"``, ``"model"`` or ``"state_dict"``).

    Raises:
        ModelSourceError: missing file, not a PyTorch file, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and OS errors alike
        raise ModelSourceError(f"{path}: not a PyTorch weights file ({first_line(err)})") from err
    if isinstance(state, dict):
        for key in ("network", "fuser", "model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path}: not a U-Fuser state dict")
    return state


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """A U-Fuser from a file holding its state dict, a training checkpoint (``{"network": …}``) or
    an official EMMA checkpoint (``EMMA.pth``), in eval mode."""
    from monai_emma.networks import UFuser
    from monai_emma.networks.official import is_official_ufuser_state

    state = read_state_dict(path, map_location)
    try:
        if is_official_ufuser_state(state):
            return UFuser.from_official(state).eval()
        net = UFuser()
        net.load_state_dict(state)
    except Exception as err:
        raise ModelSourceError(f"{path}: not a U-Fuser state dict ({first_line(err)})") from err
    return net.eval()


def _from_bundle(bundle: Path, map_location) -> torch.nn.Module:
    model = bundle / "models" / "model.pt"
    if not bundle.is_dir():
        raise ModelSourceError(f"{bundle}: no such bundle folder")
    if not model.is_file():
        raise ModelSourceError(f"{bundle}: not an EMMA bundle (no models/model.pt)")
    return load_state_dict_file(model, map_location)


@contextlib.contextmanager
def scoped_tracking_uri(tracking_uri: str | None) -> Iterator[None]:
    """Use ``tracking_uri`` inside the block only. ``mlflow.set_tracking_uri`` also sets the
    ``MLFLOW_TRACKING_URI`` variable, which later MLflow users in the process (MONAI's
    ``MLFlowHandler`` among them) prefer over their own arguments; both are restored."""
    import mlflow

    if not tracking_uri:
        yield
        return
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if previous_env or mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _from_mlflow(uri: str, tracking_uri: str | None, map_location) -> torch.nn.Module:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    with scoped_tracking_uri(tracking_uri):
        try:
            model = mlflow.pytorch.load_model(uri, map_location=map_location)
        except Exception as err:
            where = mlflow.get_tracking_uri()
            raise ModelSourceError(f"{uri}: cannot load from MLflow at {where} ({first_line(err)})") from err
    if not callable(model):
        raise ModelSourceError(f"{uri}: the MLflow model is not a PyTorch module")
    return model.eval() if isinstance(model, torch.nn.Module) else model


def resolve_fuser(
    weights: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    weight_set: str = "default",
    map_location: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, str]:
    """The fusion network to use, and a short description of where it came from.

    At most one source may be given; with none, the package's shipped weights (``weight_set``).

    Args:
        weights: a state-dict or checkpoint file, or the name of a shipped set (``"v1"``) when no
            such file exists.
        bundle: an EMMA MONAI bundle folder (``models/model.pt``).
        model_uri: an MLflow model URI, e.g. ``models:/emma-ufuser@candidate``.
        tracking_uri: the MLflow tracking URI for ``model_uri`` (default: MLflow's own default,
            ``MLFLOW_TRACKING_URI`` if set).
        weight_set: which shipped set to use when no source is given.
        map_location: device for the weights.

    Raises:
        ModelSourceError: conflicting or unusable sources.
    """
    sources = (("--weights", weights), ("--bundle", bundle), ("--model-uri", model_uri))
    given = [name for name, value in sources if value]
    if len(given) > 1:
        raise ModelSourceError(f"choose one model source, not {' and '.join(given)}")
    if weights:
        if not Path(weights).exists() and _is_weight_set(str(weights)):
            weight_set = str(weights)  # a shipped set by name, e.g. --weights v1
        else:
            return load_state_dict_file(weights, map_location), f"weights {weights}"
    if bundle:
        return _from_bundle(Path(bundle), map_location), f"bundle {bundle}"
    if model_uri:
        return _from_mlflow(model_uri, tracking_uri, map_location), f"MLflow model {model_uri}"
    from monai_emma.weights import load_ufuser, resolve_set

    try:
        real = resolve_set(weight_set)
        return load_ufuser(real, map_location), f"shipped weights '{real}'"
    except (FileNotFoundError, KeyError) as err:
        raise ModelSourceError(err.args[0] if err.args else str(err)) from err


def _is_weight_set(name: str) -> bool:
    from monai_emma.weights import DEFAULT, weight_sets

    try:
        return name == DEFAULT or name in weight_sets()
    except FileNotFoundError:
        return False
