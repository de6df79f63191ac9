"""EMMA's two stages on Ray Train V2, tracked in MLflow and registered in its model registry
(needs the ``distributed`` and ``tracking`` extras).

* :mod:`~monai_emma.pipeline.driver`: :func:`run_pipeline` (CLI ``pipelines/train.py``) runs stage 1
  (pseudo-sensors) and stage 2 (U-Fuser) as two ``TorchTrainer.fit()`` calls, opens one MLflow
  parent run (reused when the same ``--name`` runs again) and one child run per stage, registers
  the results and mirrors the run in ``monai-emma train``'s folder layout.
* :mod:`~monai_emma.pipeline.worker`: every Ray Train worker runs the package's single training
  engine with DDP through Ray's ``prepare_model`` and a distributed sampler, reports a checkpoint
  every epoch and resumes from ``ray.train.get_checkpoint()``; world rank 0 logs parameters,
  per-epoch losses, learning rate, validation metrics, system metrics and (stage 2) a PNG of fused
  validation slices.
* :mod:`monai_emma.registry` (shared with ``monai-emma register``): logs the U-Fuser as an MLflow model (pickle format,
  signature with dynamic batch, height and width, an input example) with the bundle files,
  registers it (``emma-ufuser``) and the sensors (``emma-sensor-<modality>``), and sets the alias
  (``candidate``).
"""

from monai_emma.pipeline.driver import PipelineOptions, PipelineResult, local_defaults, run_pipeline, write_run_folder
from monai_emma.pipeline.worker import train_loop_per_worker

__all__ = [
    "PipelineOptions",
    "PipelineResult",
    "run_pipeline",
    "train_loop_per_worker",
    "local_defaults",
    "write_run_folder",
]
