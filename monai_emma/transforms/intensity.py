"""Intensity scaling to [0, 1]: fixed maxima for 8-bit images, per-modality rules for volumes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = [
    "ScaleToUnit",
    "ScaleToUnitd",
    "IntensityRule",
    "DEFAULT_INTENSITY",
    "CT_WINDOWS",
    "ct_window",
    "intensity_bounds",
    "ModalityScale",
    "ModalityScaled",
    "SCALED",
]


class ScaleToUnit(Transform):
    """Divide by a fixed maximum (255 for 8-bit images) and clip to [0, 1].

    Args:
        max_value: the value that maps to 1.
    """

    def __init__(self, max_value: float = 255.0) -> None:
        self.max_value = float(max_value)

    def __call__(self, img):
        if isinstance(img, torch.Tensor):
            return (img.float() / self.max_value).clamp_(0, 1)
        return np.clip(np.asarray(img, np.float32) / self.max_value, 0, 1)


class ScaleToUnitd(MapTransform):
    """Dictionary version of :class:`ScaleToUnit`."""

    def __init__(self, keys: KeysCollection, max_value: float = 255.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleToUnit(max_value)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


@dataclass(frozen=True)
class IntensityRule:
    """How one modality's values map to [0, 1].

    ``kind="window"``: ``low`` and ``high`` are values (e.g. Hounsfield units).
    ``kind="percentile"``: ``low`` and ``high`` are percentiles of the foreground (voxels above
    the image minimum, so background and padding do not dilute them).

    ``units="HU"`` marks a window that only a CT can take (the presets of :data:`CT_WINDOWS`, a
    CT base's window): :class:`ModalityScaled` refuses it for any other modality. ``label`` is
    what the user wrote (``"--window lung"``), for messages. Neither takes part in comparisons.
    """

    kind: str
    low: float
    high: float
    units: str | None = field(default=None, compare=False, repr=False)
    label: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("window", "percentile"):
            raise ValueError(f"intensity rule kind must be 'window' or 'percentile', not {self.kind!r}")
        if not self.high > self.low:
            raise ValueError(f"intensity rule needs low < high, got {self.low} and {self.high}")
        if self.kind == "percentile" and not (0 <= self.low and self.high <= 100):
            raise ValueError(f"percentiles must lie in [0, 100], got {self.low} and {self.high}")

    def describe(self) -> str:
        if self.kind == "window":
            return f"window [{self.low:g}, {self.high:g}]"
        return f"percentiles [{self.low:g}, {self.high:g}] of the foreground"


#: Defaults per modality. CT: a [-100, 300] HU window puts brain parenchyma near 0.35 and
#: saturates bone, the look of the CT slices the shipped model learnt from; PET/SPECT: 0 to
#: the 99.5th percentile of the uptake (zero stays zero); MRI and others: robust 0.5-99.5
#: percentiles of the foreground.
DEFAULT_INTENSITY: dict[str, IntensityRule] = {
    "mri": IntensityRule("percentile", 0.5, 99.5),
    "ct": IntensityRule("window", -100.0, 300.0),
    "pet": IntensityRule("percentile", 0.0, 99.5),
    "spect": IntensityRule("percentile", 0.0, 99.5),
    "ir": IntensityRule("percentile", 0.5, 99.5),
    "vis": IntensityRule("percentile", 0.5, 99.5),
}

#: CT window presets in Hounsfield units (LOW, HIGH), from the usual level/width pairs: brain
#: L40/W80, subdural L75/W215, soft tissue L40/W400, lung L-600/W1500, bone L400/W1800; ``head``
#: is the default above (L100/W400), the look of the CT slices the shipped model learnt from.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "head": (-100.0, 300.0),
    "brain": (0.0, 80.0),
    "subdural": (-32.5, 182.5),
    "soft-tissue": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-500.0, 1300.0),
}


def ct_window(text: str) -> IntensityRule:
    """A window rule from a preset name of :data:`CT_WINDOWS` (``soft_tissue`` also works) or
    ``"LOW,HIGH"`` (``LOW:HIGH``).

    Raises:
        ValueError: neither a preset nor two increasing numbers; the message lists the presets.

    Example:
        >>> ct_window("brain")
        IntensityRule(kind='window', low=0.0, high=80.0)
        >>> ct_window("-160,240").high
        240.0
    """
    key = text.strip().lower().replace("_", "-").replace(" ", "-")
    if key in CT_WINDOWS:
        return IntensityRule("window", *CT_WINDOWS[key], units="HU", label=text)
    try:
        low, high = (float(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise ValueError(
            f"{text!r}: expected a window preset ({', '.join(CT_WINDOWS)}) or two numbers LOW,HIGH"
        ) from None
    if not high > low:
        raise ValueError(f"{text!r}: LOW must be below HIGH")
    return IntensityRule("window", low, high, label=text)


def intensity_bounds(img: np.ndarray, rule: IntensityRule) -> tuple[float, float]:
    """The values that map to 0 and 1 under ``rule`` for this image (NaN and infinite voxels,
    "no data", take no part)."""
    if rule.kind == "window":
        return rule.low, rule.high
    arr = np.asarray(img, np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return 0.0, 1.0
    floor = float(arr.min())
    fg = arr[arr > floor]
    if fg.size == 0:  # constant image
        return floor, floor + 1.0
    if rule.low == 0 and floor >= 0:
        lo = 0.0  # uptake images: zero stays zero
    else:
        lo = float(np.percentile(fg, rule.low))
    hi = float(np.percentile(fg, rule.high))
    if hi <= lo:
        hi = float(fg.max()) if fg.max() > lo else lo + 1.0
    return lo, hi


#: meta key of an image already on the network's [0, 1] scale (the luminance of a 2D 8-bit image,
#: divided by 255 like the training slices): :class:`ModalityScaled` leaves it as it is
SCALED = "emma_scaled"


class ModalityScale(Transform):
    """Scale a scalar image of a given modality to [0, 1] (clipped), following
    :data:`DEFAULT_INTENSITY` or an explicit rule.

    Windows are MONAI's ``ScaleIntensityRange`` (clipped). Percentile rules are computed here
    rather than with MONAI's ``ScaleIntensityRangePercentiles``, which takes percentiles of all
    voxels: over a head volume that is mostly air, its 99.5th percentile of an MRI falls inside the
    brain (and the 0.5th is the background), whereas these rules use the foreground only, and keep
    zero uptake at zero for PET and SPECT.

    Args:
        modality: ``"mri"``, ``"ct"``, ``"pet"``, ``"spect"``, ``"ir"`` or ``"vis"``.
        rule: overrides the modality's default.

    NaN and infinite voxels ("no data") take no part in percentiles and are 0 after scaling.

    Example:
        >>> ModalityScale("ct")(np.array([-1000.0, 100.0, 1000.0]))
        array([0. , 0.5, 1. ], dtype=float32)
    """

    def __init__(self, modality: str, rule: IntensityRule | None = None) -> None:
        modality = modality.lower()
        if rule is None and modality not in DEFAULT_INTENSITY:
            raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(DEFAULT_INTENSITY)}")
        self.modality = modality
        self.rule = rule or DEFAULT_INTENSITY[modality]

    def bounds(self, img) -> tuple[float, float]:
        """The values of ``img`` that map to 0 and 1."""
        return intensity_bounds(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img, self.rule)

    def __call__(self, img):
        if self.rule.kind == "window":
            from monai.transforms import ScaleIntensityRange

            scale = ScaleIntensityRange(self.rule.low, self.rule.high, 0.0, 1.0, clip=True, dtype=np.float32)
            out = scale(img.float() if isinstance(img, torch.Tensor) else np.asarray(img, np.float64))
        else:
            lo, hi = intensity_bounds(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img, self.rule)
            if isinstance(img, torch.Tensor):
                out = ((img.float() - lo) / (hi - lo)).clamp_(0, 1)
            else:
                out = np.clip((np.asarray(img, np.float64) - lo) / (hi - lo), 0, 1)
        # NaN and infinite voxels mean "no data": zero after scaling
        if isinstance(img, torch.Tensor):
            return out.masked_fill_(~torch.isfinite(img.to(out.device)), 0.0)
        out = np.asarray(out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out, np.float32)
        return np.where(np.isfinite(np.asarray(img, np.float64)), out, np.float32(0.0))


class ModalityScaled(MapTransform):
    """Dictionary version of :class:`ModalityScale`.

    Each key's modality is given (``modalities``: one name, or one per key) or read from the
    data (``modality_key``: e.g. a fusion job's ``"modality"``). Images marked as already scaled
    (meta ``emma_scaled``: the luminance of 2D 8-bit images, set by
    :class:`~monai_emma.io.dictionary.LoadFusionPaird`) are left as they are. The values that
    mapped to 0 and 1 go to ``<key>_scale`` (so a threshold in the input's units, e.g. SUV, can be
    put on the [0, 1] scale later).

    Args:
        keys: images to scale.
        modalities: modality per key (or one for all); ``None`` with ``modality_key``.
        modality_key: the data key holding the modality name.
        rules: ``{modality: IntensityRule}`` replacing defaults of :data:`DEFAULT_INTENSITY`
            (e.g. another CT window), or a list with one rule (or ``None``) per key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: str | Sequence[str] | None = None,
        rules: Mapping[str, IntensityRule] | Sequence[IntensityRule | None] | None = None,
        modality_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if modalities is None and modality_key is None:
            raise ValueError("ModalityScaled needs modalities or a modality_key")
        if isinstance(modalities, str):
            modalities = [modalities] * len(self.keys)
        self.modalities = dict(zip(self.keys, modalities)) if modalities is not None else {}
        self.modality_key = modality_key
        if rules is None or isinstance(rules, Mapping):
            self.rules = {k.lower(): r for k, r in (rules or {}).items()}
            self.key_rules: dict = {}
        else:  # one rule per key
            self.rules, self.key_rules = {}, dict(zip(self.keys, rules))

    def scaler(self, key: Hashable, data: Mapping[Hashable, object]) -> ModalityScale:
        """The scaling of ``key``.

        Raises:
            FusionError: a CT-only window (``units="HU"``) for an image that is not CT.
        """
        modality = self.modalities.get(key) or str(data[self.modality_key]).lower()
        rule = self.key_rules.get(key) or self.rules.get(modality)
        if rule is not None and rule.units == "HU" and modality != "ct":
            from monai_emma.errors import FusionError

            volume = data.get(f"{key}_volume")
            name = getattr(getattr(volume, "path", None), "name", None) or str(key)
            what = rule.label or f"window [{rule.low:g}, {rule.high:g}] HU"
            raise FusionError(
                f"{what}: a CT window in HU, but {name} is {modality.upper()}; "
                + (
                    "give LOW,HIGH in its own units (SUV or stored values) or --percentiles"
                    if key != "anatomical"
                    else "use --mri-percentiles, or --anatomical-modality ct if it is a CT"
                )
            )
        return ModalityScale(modality, rule)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        scaling = dict(d.get("scaling") or {})
        for key in self.key_iterator(d):
            img = d[key]
            if getattr(img, "meta", {}).get(SCALED):
                d[f"{key}_scale"] = (0.0, 1.0)
                scaling[str(key)] = "8-bit luminance / 255"
            else:
                scaler = self.scaler(key, d)
                d[f"{key}_scale"] = lo, hi = scaler.bounds(img)
                d[key] = scaler(img)
                units = str(d.get(f"{key}_units") or ("HU" if scaler.modality == "ct" else ""))
                scaling[str(key)] = _describe_scaling(scaler, lo, hi, units)
        d["scaling"] = scaling
        return d


def _describe_scaling(scaler: ModalityScale, lo: float, hi: float, units: str) -> str:
    """``"CT: window [-100, 300] HU"``, ``"PET (SUVbw): window [0, 8]"``,
    ``"MRI: percentiles [0.5, 99.5] of the foreground (12.5 to 845)"``."""
    name = scaler.modality.upper() + (f" ({units})" if units and units != "HU" else "")
    unit = " HU" if units == "HU" else ""
    if scaler.rule.kind == "window":
        return f"{name}: window [{lo:g}, {hi:g}]{unit}"
    return f"{name}: {scaler.rule.describe()} ({lo:.4g} to {hi:.4g}{unit})"
