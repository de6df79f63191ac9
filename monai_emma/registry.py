"""The MLflow model registry: runs (found again on a rerun), and logging and registering a U-Fuser
and pseudo-sensors as MLflow models, one code path for the Ray pipeline and ``monai-emma
register`` (needs the ``tracking`` extra)."""

from __future__ import annotations

from pathlib import Path

import torch

from monai_emma.networks.sensor_bank import SensorBank

__all__ = [
    "find_or_create_run",
    "experiment_id",
    "local_artifact_location",
    "log_and_register",
    "register_fuser",
    "registered_sensors",
]

SENSOR_MODEL_PREFIX = "emma-sensor-"


def find_or_create_run(client, experiment_id: str, tags: dict[str, str], name: str, parent: str | None = None) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    order = ["attributes.start_time DESC"]
    found = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=order)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = dict(tags)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def experiment_id(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def log_and_register(
    client, parent_id: str, fuser: torch.nn.Module, sensors: SensorBank | None, model_name: str, alias: str
) -> tuple[str, str, dict[str, str]]:
    """Log ``fuser`` (and each of ``sensors``) as MLflow models in the run ``parent_id``, register
    them (``model_name``, ``emma-sensor-<modality>``), attach the bundle's configs and model card,
    and point ``alias`` at the new versions.

    Returns:
        (model URI ``models:/<name>/<version>``, version, {modality: sensor version}).
    """
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    requirements = [f"torch=={torch.__version__.split('+')[0]}", "monai-emma"]
    net = fuser.eval()
    example = np.random.default_rng(0).random((1, 2, 64, 64), dtype=np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),
    )
    while mlflow.active_run() is not None:
        mlflow.end_run()
    sensor_versions: dict[str, str] = {}
    with mlflow.start_run(run_id=parent_id):
        info = mlflow.pytorch.log_model(
            net,
            name="ufuser",
            serialization_format="pickle",
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=model_name,
        )
        bundle = Path(__file__).resolve().parents[1] / "bundles" / "emma"  # a source checkout
        for sub in ("configs", "docs"):
            if (bundle / sub).is_dir():
                client.log_artifacts(parent_id, str(bundle / sub), artifact_path=f"bundle/{sub}")
        for modality, sensor in sensors.sensors.items() if sensors is not None else ():
            sinfo = mlflow.pytorch.log_model(
                sensor.eval(),
                name=f"sensor-{modality}",
                serialization_format="pickle",
                pip_requirements=requirements,
                registered_model_name=f"{SENSOR_MODEL_PREFIX}{modality}",
            )
            sensor_versions[modality] = str(sinfo.registered_model_version)
            client.set_registered_model_alias(f"{SENSOR_MODEL_PREFIX}{modality}", alias, sinfo.registered_model_version)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model_name, alias, version)
    return f"models:/{model_name}/{version}", version, sensor_versions


def local_artifact_location(tracking_uri: str) -> str | None:
    """``<folder of the database>/mlartifacts`` for a SQLite tracking URI (where the pipeline keeps
    its artifacts), so that nothing lands in the working directory; ``None`` (the server's
    default) otherwise."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix) :]).resolve().parent / "mlartifacts").as_uri()


def register_fuser(
    fuser: torch.nn.Module,
    tracking_uri: str,
    model_name: str = "emma-ufuser",
    alias: str = "candidate",
    experiment: str = "emma",
    run_name: str = "register",
    source: str = "",
    sensors: SensorBank | None = None,
) -> tuple[str, str]:
    """Log and register ``fuser`` (and ``sensors``) in its own MLflow run, exactly as the pipeline
    registers a trained U-Fuser, so that any weights can be served with ``mlflow models serve``.

    Returns:
        (model URI ``models:/<name>/<version>``, version).
    """
    import mlflow

    from monai_emma.extras import scoped_tracking_uri

    with scoped_tracking_uri(tracking_uri):  # log_and_register logs through MLflow's fluent API
        client = mlflow.MlflowClient(tracking_uri)
        exp = experiment_id(client, experiment, local_artifact_location(tracking_uri))
        tags = {"emma.role": "register", "emma.source": source}
        run_id = client.create_run(exp, run_name=run_name, tags=tags).info.run_id
        try:
            uri, version, _ = log_and_register(client, run_id, fuser, sensors, model_name, alias)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return uri, version


def registered_sensors(model_uri: str, tracking_uri: str | None = None) -> tuple[SensorBank | None, str]:
    """The pseudo-sensors registered beside a U-Fuser: the ``emma-sensor-<modality>`` versions
    logged by the same MLflow run as the model ``model_uri`` (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION`` or ``runs:/RUN/PATH``), as the pipeline and ``monai-emma register``
    log them.

    Returns:
        (the bank, a description naming the versions), or ``(None, "")`` when none were registered.
    """
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from monai_emma.extras import scoped_tracking_uri
    from monai_emma.networks.sensor_bank import SENSORS_FORMAT, sensor_bank_from_state

    with scoped_tracking_uri(tracking_uri):
        client = mlflow.MlflowClient()
        if model_uri.startswith("runs:/"):
            run_id = model_uri[len("runs:/") :].split("/")[0]
        elif model_uri.startswith("models:/"):
            name, version = get_model_name_and_version(client, model_uri)
            run_id = client.get_model_version(name, version).run_id
        else:
            return None, ""
        if not run_id:
            return None, ""
        versions = {}
        for mv in client.search_model_versions(f"run_id = '{run_id}'"):
            if mv.name.startswith(SENSOR_MODEL_PREFIX):
                modality = mv.name[len(SENSOR_MODEL_PREFIX) :]
                if modality not in versions or int(mv.version) > int(versions[modality].version):
                    versions[modality] = mv
        if not versions:
            return None, ""
        sensors = {
            m: mlflow.pytorch.load_model(f"models:/{mv.name}/{mv.version}", map_location="cpu")
            for m, mv in sorted(versions.items())
        }
    first = next(iter(sensors.values()))
    state = {
        "format": SENSORS_FORMAT,
        "preset_features": list(first.features),
        "sensors": {m: s.state_dict() for m, s in sensors.items()},
    }
    names = ", ".join(f"{mv.name} v{mv.version}" for mv in versions.values())
    return sensor_bank_from_state(state, model_uri), f"sensors registered with {model_uri} ({names})"
