"""MLflow for the pipeline: parent and stage runs (found again on a rerun), and logging and
registering the trained U-Fuser and pseudo-sensors as MLflow models."""

from __future__ import annotations

from pathlib import Path

import torch

from monai_emma.networks.sensor_bank import SensorBank

__all__ = ["find_or_create_run", "experiment_id", "log_and_register"]


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
        bundle = Path(__file__).resolve().parents[2] / "bundles" / "emma"  # a source checkout
        for sub in ("configs", "docs"):
            if (bundle / sub).is_dir():
                client.log_artifacts(parent_id, str(bundle / sub), artifact_path=f"bundle/{sub}")
        for modality, sensor in sensors.sensors.items() if sensors is not None else ():
            sinfo = mlflow.pytorch.log_model(
                sensor.eval(),
                name=f"sensor-{modality}",
                serialization_format="pickle",
                pip_requirements=requirements,
                registered_model_name=f"emma-sensor-{modality}",
            )
            sensor_versions[modality] = str(sinfo.registered_model_version)
            client.set_registered_model_alias(f"emma-sensor-{modality}", alias, sinfo.registered_model_version)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model_name, alias, version)
    return f"models:/{model_name}/{version}", version, sensor_versions
