"""Networks of EMMA: the U-Fuser (deployed) and the pseudo-sensors (training only)."""

from monai_emma.networks.blocks import RestormerCNNBlock
from monai_emma.networks.sensor import SENSOR_PRESETS, PseudoSensor
from monai_emma.networks.ufuser import UFuser

__all__ = ["UFuser", "PseudoSensor", "RestormerCNNBlock", "SENSOR_PRESETS"]
