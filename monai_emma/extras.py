"""Optional dependency stacks behind extras: ``tracking`` (MLflow), ``distributed`` (Ray Train),
``registration`` (SimpleITK).

The base install fuses, trains in-process, evaluates and runs the bundle; a feature that needs an
extra imports it through :func:`require`, which fails with one line naming what to install.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "require", "scoped_tracking_uri"]

#: which extra provides which top-level module
EXTRAS = {"mlflow": "tracking", "psutil": "tracking", "ray": "distributed", "SimpleITK": "registration"}
#: pip names of modules that differ from them
PIP_NAMES = {"nrrd": "pynrrd", "h5py": "h5py"}


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message says which extra."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError`.

    Example:
        >>> require("json", "reading records").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"pip install 'monai-emma[{extra}]'" if extra else f"pip install {PIP_NAMES.get(top, top)}"
        raise MissingExtraError(f"{feature} needs {top}, which is not installed: {hint}") from err


@contextlib.contextmanager
def scoped_tracking_uri(tracking_uri: str | None) -> Iterator[None]:
    """Use ``tracking_uri`` inside the block only. ``mlflow.set_tracking_uri`` also sets the
    ``MLFLOW_TRACKING_URI`` variable, which later MLflow users in the process (MONAI's
    ``MLFlowHandler`` among them) prefer over their own arguments; both are restored."""
    mlflow = require("mlflow", "an MLflow tracking URI")

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
