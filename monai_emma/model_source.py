"""Where a fusion model comes from: shipped weights, a state-dict file (ours or the official
``EMMA.pth``), a bundle or an MLflow registry.

:func:`resolve_fuser` is the one resolver: ``monai-emma fuse``, ``fuse-folder``, ``evaluate``,
:func:`monai_emma.fusion.fuse_volumes` and the bundle load their U-Fuser through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from monai_emma.errors import first_line
from monai_emma.extras import scoped_tracking_uri

__all__ = ["ModelSourceError", "resolve_fuser", "read_state_dict", "scoped_tracking_uri", "load_state_dict_file"]


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


def _from_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
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


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Deprecated: use ``resolve_fuser(weights=path)[0]``."""
    import warnings

    warnings.warn("load_state_dict_file is deprecated; use resolve_fuser(weights=path)", DeprecationWarning, 2)
    return resolve_fuser(weights=path, map_location=map_location)[0]


def _from_bundle(bundle: Path, map_location) -> torch.nn.Module:
    model = bundle / "models" / "model.pt"
    if not bundle.is_dir():
        raise ModelSourceError(f"{bundle}: no such bundle folder")
    if not model.is_file():
        raise ModelSourceError(f"{bundle}: not an EMMA bundle (no models/model.pt)")
    return _from_file(model, map_location)


def _check_registry(uri: str, tracking_uri: str | None) -> None:
    """A registry URI needs to know its registry, and an SQLite registry must exist: otherwise
    MLflow would create an empty ``mlflow.db`` (in the working folder by default) and then fail."""
    if uri.split(":", 1)[0] not in ("models", "runs"):
        return  # a model folder or file URI
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking:
        raise ModelSourceError(
            f"{uri}: say which MLflow registry holds it: --tracking-uri URI "
            "(e.g. sqlite:///emma-runs/mlflow.db or http://host:5000) or MLFLOW_TRACKING_URI"
        )
    if tracking.startswith("sqlite:///"):
        db = Path(tracking[len("sqlite:///") :])
        if not db.is_file():
            raise ModelSourceError(f"{uri}: no MLflow database at {db} (--tracking-uri {tracking})")


def _from_mlflow(uri: str, tracking_uri: str | None, map_location) -> torch.nn.Module:
    from monai_emma.extras import require

    _check_registry(uri, tracking_uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow = require("mlflow", f"loading {uri}")

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
    weights: Any = None,
    bundle: str | os.PathLike | None = None,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, str]:
    """The fusion network to use (eval mode), and a short description of where it came from.

    At most one source may be given; with none, the shipped default weights.

    Args:
        weights: a :class:`~monai_emma.weights.UFuserWeights` member, the name of a shipped set
            (``"v1"``, ``"default"``) when no file of that name exists, or a state-dict /
            checkpoint / official ``EMMA.pth`` file.
        bundle: an EMMA MONAI bundle folder (``models/model.pt``).
        model_uri: an MLflow model URI, e.g. ``models:/emma-ufuser@candidate``.
        tracking_uri: the MLflow tracking URI for ``model_uri`` (default: MLflow's own default,
            ``MLFLOW_TRACKING_URI`` if set).
        map_location: device for the weights.

    Raises:
        ModelSourceError: conflicting or unusable sources (one line naming the source).
    """
    from monai_emma.networks import ufuser
    from monai_emma.weights import UFuserWeights, get_weights

    sources = (("--weights", weights), ("--bundle", bundle), ("--model-uri", model_uri))
    given = [name for name, value in sources if value is not None and value != ""]
    if len(given) > 1:
        raise ModelSourceError(f"choose one model source, not {' and '.join(given)}")
    if bundle:
        return _from_bundle(Path(bundle), map_location), f"bundle {bundle}"
    if model_uri:
        return _from_mlflow(model_uri, tracking_uri, map_location), f"MLflow model {model_uri}"
    member = None
    if weights is None or weights == "":
        member = "default"
    elif isinstance(weights, UFuserWeights):
        member = weights
    elif not Path(weights).exists() and _is_weight_set(str(weights)):
        member = str(weights)  # a shipped set by name, e.g. --weights v1
    if member is None:
        return _from_file(weights, map_location), f"weights {weights}"
    try:
        member = get_weights(member)
        net = ufuser(weights=member)
    except (FileNotFoundError, KeyError) as err:
        raise ModelSourceError(err.args[0] if err.args else str(err)) from err
    return net.to(map_location), f"shipped weights '{member.set_name}'"


def _is_weight_set(name: str) -> bool:
    from monai_emma.weights import get_weights

    try:
        get_weights(name)
    except KeyError:
        return False
    return True
