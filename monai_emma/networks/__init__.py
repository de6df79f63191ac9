"""Networks of EMMA: the U-Fuser (deployed) and the pseudo-sensors (training only).

This layer imports nothing else from monai_emma: weights, transforms and engines build on it.
"""

from monai_emma.networks.blocks import RestormerCNNBlock
from monai_emma.networks.sensor import SENSOR_PRESETS, PseudoSensor
from monai_emma.networks.sensor_bank import IDENTITY_SENSORS, SensorBank, load_sensor_bank, pseudo_sensors
from monai_emma.networks.ufuser import UFuser, ufuser

__all__ = [
    "UFuser",
    "ufuser",
    "PseudoSensor",
    "RestormerCNNBlock",
    "SENSOR_PRESETS",
    "SensorBank",
    "IDENTITY_SENSORS",
    "load_sensor_bank",
    "pseudo_sensors",
]
