"""Fine-tuning: stage 2 starting from trained U-Fuser weights, against the pseudo-sensors that came
with them (``monai-emma train --init``, ``pipelines/train.py --init``, the bundle's ``init``).

:func:`resolve_init` turns what the user gave (a shipped set name such as ``v3``, a weights file
or training checkpoint, a run or bundle folder, an MLflow model URI) into a :class:`FuserInit`:
the U-Fuser's state dict, the sensor bank to fine-tune against, and a record of both (what was
given, what it resolved to, SHA-256 of the weights) that goes into the run's ``config.json``
(``extra.init``) and its MLflow parameters. The init is weights only: stage 2's optimiser and
schedule start fresh, and a run folder with its own stage-2 checkpoints resumes from those.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from monai_emma.engines.config import TrainConfig
from monai_emma.engines.stages import FUSER, SENSORS, RunLayout
from monai_emma.networks.sensor_bank import IDENTITY_SENSORS, SensorBank, sensor_bank_state

__all__ = [
    "InitError",
    "FuserInit",
    "resolve_init",
    "resolve_sensors",
    "state_sha256",
    "finetune_config",
    "check_stage1",
    "publish_init_sensors",
]

#: where the record goes in ``TrainConfig.extra`` (and so in ``config.json``)
INIT_KEY = "init"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


class InitError(ValueError):
    """The init cannot be used as asked; one line naming it and the problem."""


def state_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (nested dicts included), the
    same whichever file, checkpoint or MLflow model the tensors came from."""
    h = hashlib.sha256()

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value, key=str):
                add(f"{prefix}{key}.", value[key])
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{prefix}={value!r}".encode())

    add("", state)
    return h.hexdigest()


@dataclass
class FuserInit:
    """Resolved starting weights of stage 2 and the sensors that go with them."""

    given: str  # what the user gave: "v3", "runs/a/stage2_fuser/ufuser.pt", "models:/emma-ufuser@candidate"
    weights: str  # what it resolved to, e.g. "shipped weights 'v3'", "weights /abs/path/ufuser.pt"
    state: dict[str, torch.Tensor] = field(repr=False)
    sensors: SensorBank | None = field(default=None, repr=False)
    sensors_source: str = ""  # e.g. "shipped sensors 'v3'", "sensors /abs/run/stage1_sensors/sensors.pt"

    @cached_property
    def sha256(self) -> str:
        return state_sha256(self.state)

    @cached_property
    def sensors_sha256(self) -> str:
        return state_sha256(sensor_bank_state(self.sensors)) if self.sensors is not None else ""

    @property
    def record(self) -> dict[str, str]:
        """What ``config.json`` (``extra.init``) and MLflow (``init_*`` parameters) keep."""
        return {
            "given": self.given,
            "weights": self.weights,
            "sha256": self.sha256,
            "sensors": self.sensors_source,
            "sensors_sha256": self.sensors_sha256,
        }

    def check_modalities(self, modalities: Sequence[str], flag: str = "--init-sensors") -> None:
        """Every modality of the data needs a pseudo-sensor.

        Raises:
            InitError: one line naming the sensors and the missing modalities.
        """
        if self.sensors is None:
            raise InitError(f"{self.given}: no pseudo-sensors to fine-tune against; give them with {flag}")
        missing = sorted(set(modalities) - set(self.sensors.modalities))
        if missing:
            raise InitError(
                f"{self.sensors_source} have no pseudo-sensor for {', '.join(missing)} (the data has "
                f"{', '.join(sorted(set(modalities)))}; they have {', '.join(self.sensors.modalities)}): "
                f"give matching ones with {flag}"
            )


def _shipped_names() -> str:
    from monai_emma.weights import UFuserWeights

    return ", ".join(sorted({m.set_name for m in UFuserWeights}) + ["default"])


def _is_shipped(name: str, kind: str = "ufuser") -> bool:
    from monai_emma.weights import get_weights

    try:
        get_weights(name, kind)
    except KeyError:
        return False
    return True


def _load_bank(path: Path) -> SensorBank:
    from monai_emma.networks.sensor_bank import load_sensor_bank

    try:
        return load_sensor_bank(path)
    except Exception as err:  # not a sensors file, unreadable
        from monai_emma.errors import first_line

        raise InitError(f"{path}: not a monai-emma sensors file ({first_line(err)})") from err


def _sensors_in_folder(folder: Path) -> Path | None:
    """A sensors file in a run folder (RunLayout), a bundle (``models/sensors.pt``) or the folder itself."""
    for candidate in (RunLayout(folder).weights(SENSORS), folder / "models" / "sensors.pt", folder / "sensors.pt"):
        if candidate.is_file():
            return candidate
    return None


def _sensors_next_to(weights_file: Path) -> Path | None:
    """The sensors of the run a weights file belongs to: ``sensors.pt`` beside it (a bundle's
    ``models/``), or the run's stage-1 sensors when it sits in a ``stage2_fuser`` folder."""
    folder = weights_file.resolve().parent
    if (folder / SENSORS.weights_file).is_file():
        return folder / SENSORS.weights_file
    if folder.name == FUSER.folder and RunLayout(folder.parent).weights(SENSORS).is_file():
        return RunLayout(folder.parent).weights(SENSORS)
    return None


def resolve_sensors(spec: str) -> tuple[SensorBank, str]:
    """A sensor bank from a sensors file, a run or bundle folder, or a shipped set name.

    Raises:
        InitError: nothing usable there (one line).
    """
    from monai_emma.networks.sensor_bank import pseudo_sensors
    from monai_emma.weights import get_weights

    path = Path(spec)
    if path.is_file():
        return _load_bank(path), f"sensors {path.resolve()}"
    if path.is_dir():
        found = _sensors_in_folder(path)
        if found is None:
            raise InitError(f"{spec}: no sensors.pt in this folder (nor stage1_sensors/ or models/)")
        return _load_bank(found), f"sensors {found.resolve()}"
    if _is_shipped(spec, "sensors"):
        member = get_weights(spec, "sensors")
        return pseudo_sensors(weights=member), f"shipped sensors '{member.set_name}'"
    raise InitError(f"{spec}: no such sensors file or folder, and not a shipped weight set ({_shipped_names()})")


def _registered_sensors(uri: str, tracking_uri: str | None) -> tuple[SensorBank | None, str]:
    from monai_emma.registry import registered_sensors

    try:
        return registered_sensors(uri, tracking_uri)
    except Exception as err:  # the registry cannot say: treated as "none registered"
        from monai_emma.errors import first_line

        return None, first_line(err)


def resolve_init(
    init: str,
    sensors: str | None = None,
    tracking_uri: str | None = None,
    need_sensors: bool = True,
    sensors_flag: str = "--init-sensors",
) -> FuserInit:
    """What ``--init`` names, resolved (nothing is written).

    ``init`` is a shipped set (``v3``, ``default``), a U-Fuser weights file (a state dict, a
    training checkpoint ``{"network": ...}``, the official ``EMMA.pth``), a run folder of
    ``monai-emma train`` or the pipeline (``stage2_fuser/ufuser.pt``), a bundle folder
    (``models/model.pt``) or a bundle training folder (``model.pt``), or an MLflow model URI
    (``models:/emma-ufuser@candidate``; ``tracking_uri`` names the registry). The sensors come with
    it: a shipped set's own, the run's stage-1 sensors beside a file or in a folder, the sensors
    registered from the same MLflow run as the model. ``sensors`` (a sensors file, a folder or a
    shipped set name) replaces them; without either it is an error naming ``sensors_flag``.
    ``need_sensors=False`` (the identity-sensor ablation) looks for none.

    Raises:
        InitError: one line naming the source and the problem.
    """
    from monai_emma.model_source import ModelSourceError, resolve_fuser
    from monai_emma.networks import UFuser
    from monai_emma.weights import get_weights

    init = str(init)
    path = Path(init)
    found_sensors: tuple[SensorBank | None, str] = (None, "")
    look = need_sensors and not sensors  # the sensors that come with the init are needed
    hint = ""
    try:
        if path.is_dir():
            if (path / "models" / "model.pt").is_file():
                net, source = resolve_fuser(bundle=path)
            else:
                candidates = (RunLayout(path).weights(FUSER), path / "model.pt", path / FUSER.weights_file)
                weights_file = next((c for c in candidates if c.is_file()), None)
                if weights_file is None:
                    raise InitError(
                        f"{init}: no U-Fuser weights in this folder (looked for {FUSER.folder}/{FUSER.weights_file}, "
                        "models/model.pt, model.pt)"
                    )
                net, _ = resolve_fuser(weights=weights_file)
                source = f"weights {weights_file.resolve()}"
            sensors_file = _sensors_in_folder(path) if look else None
            if sensors_file is not None:
                found_sensors = (_load_bank(sensors_file), f"sensors {sensors_file.resolve()}")
            hint = f"no sensors.pt in {init} (nor stage1_sensors/ or models/)"
        elif path.is_file():
            net, _ = resolve_fuser(weights=path)
            source = f"weights {path.resolve()}"
            sensors_file = _sensors_next_to(path) if look else None
            if sensors_file is not None:
                found_sensors = (_load_bank(sensors_file), f"sensors {sensors_file.resolve()}")
            hint = "no sensors.pt beside it, nor the run's stage1_sensors/sensors.pt"
        elif _URI.match(init):
            net, source = resolve_fuser(model_uri=init, tracking_uri=tracking_uri)
            if look:
                found_sensors = _registered_sensors(init, tracking_uri)
                hint = found_sensors[1] or "the registry has no pseudo-sensors from the run that logged it"
        elif _is_shipped(init):
            member = get_weights(init)
            net, source = resolve_fuser(weights=member)
            if look and _is_shipped(member.set_name, "sensors"):
                found_sensors = resolve_sensors(member.set_name)
            hint = f"shipped set '{member.set_name}' has no sensors"
        else:
            shipped = _shipped_names()
            raise InitError(f"{init}: no such weights file or folder, and not a shipped weight set ({shipped})")
    except ModelSourceError as err:
        raise InitError(str(err)) from err
    if not isinstance(net, UFuser):
        raise InitError(f"{init}: not a U-Fuser ({type(net).__name__})")
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if not need_sensors:
        bank, sensors_source = None, ""
    elif sensors:
        bank, sensors_source = resolve_sensors(sensors)
    else:
        bank, sensors_source = found_sensors if found_sensors[0] is not None else (None, "")
        if bank is None:
            raise InitError(f"{init}: which pseudo-sensors go with it? {hint}; give them with {sensors_flag}")
    return FuserInit(init, source, state, bank.freeze() if bank is not None else None, sensors_source)


def check_stage1(
    cfg: TrainConfig,
    init: FuserInit | None,
    flag: str = "--sensor-epochs 0",
    identity: str = " or the identity sensors (--sensors identity)",
) -> None:
    """Stage 2 needs sensors: without an init, ``sensor_epochs`` 0 (no stage 1) is only possible
    with the identity sensors.

    Raises:
        InitError: one line (``flag`` and ``identity`` say how the caller spells the options).
    """
    if init is None and cfg.sensor.epochs == 0 and cfg.sensor_preset != IDENTITY_SENSORS:
        raise InitError(
            f"{flag} skips stage 1, so stage 2 needs pseudo-sensors from elsewhere: start from trained weights "
            f"with --init NAME|PATH|URI (they bring their sensors){identity}"
        )


def finetune_config(cfg: TrainConfig, init: FuserInit | None) -> TrainConfig:
    """``cfg`` for a run starting from ``init``: no stage 1 (``sensor_epochs`` 0) and the init's
    record in ``extra["init"]`` (so in ``config.json`` and the MLflow parameters); ``cfg`` itself
    without an init."""
    if init is None:
        return cfg
    out = cfg.with_overrides(sensor_epochs=0)
    record = init.record
    if cfg.sensor_preset == IDENTITY_SENSORS:
        record.update(sensors=IDENTITY_SENSORS, sensors_sha256="")
    out.extra = {**out.extra, INIT_KEY: record}
    return out


def publish_init_sensors(
    init: FuserInit, path: str | os.PathLike, overwrite: bool = False, sensors_flag: str = "--init-sensors"
) -> Path:
    """Write the init's sensors where the run keeps its stage-1 sensors (``path``), so the run
    folder is complete (a later ``--init`` of it, ``scripts/ship_weights.py``).

    Raises:
        InitError: ``path`` already holds other sensors (a run folder of another run), unless ``overwrite``.
    """
    from monai_emma.engines.trainer import save_state

    path = Path(path)
    state = sensor_bank_state(init.sensors)
    if path.is_file() and not overwrite:
        try:
            same = state_sha256(torch.load(path, map_location="cpu", weights_only=True)) == state_sha256(state)
        except Exception:  # unreadable: not ours to replace
            same = False
        if not same:
            raise InitError(
                f"{path}: this run folder already has other pseudo-sensors; fine-tune into a new output folder, "
                f"or fine-tune against them with {sensors_flag} {path}"
            )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_state(state, path)
