"""Body-weight SUV for PET DICOM series.

    SUV = C [Bq/ml] x body weight [g] / injected dose decayed to the reference time [Bq]

The reference time is the series start (``DecayCorrection`` START, pixels already decay-corrected
to it) or the administration itself (ADMIN: no decay factor). Everything comes from the headers:
``Units`` BQML, ``PatientWeight``, and in ``RadiopharmaceuticalInformationSequence`` the
``RadionuclideTotalDose``, ``RadionuclideHalfLife`` and the start (date)time; stored values are
already rescaled per slice (``RescaleSlope``) by the reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

__all__ = ["SUVError", "SUVInfo", "suv_info"]


class SUVError(ValueError):
    """SUV cannot be computed: the message names the tag that is missing or inconsistent."""


@dataclass(frozen=True)
class SUVInfo:
    """What an SUV conversion used: ``suv = value * factor``."""

    factor: float
    weight_kg: float
    dose_bq: float
    half_life_s: float
    injection: datetime
    reference: datetime
    decay_correction: str

    @property
    def decay_minutes(self) -> float:
        return (self.reference - self.injection).total_seconds() / 60.0

    def describe(self) -> str:
        return (
            f"PET in body-weight SUV: weight {self.weight_kg:g} kg, dose {self.dose_bq / 1e6:.4g} MBq, "
            f"half-life {self.half_life_s:g} s, decay {self.decay_minutes:.1f} min to the "
            f"{'series start' if self.decay_correction == 'START' else 'administration'}"
        )


def _time(value) -> timedelta:
    text = str(value).strip()
    if not text:
        raise ValueError("empty time")
    main, _, frac = text.partition(".")
    main = main.ljust(6, "0")
    seconds = int(main[:2]) * 3600 + int(main[2:4]) * 60 + int(main[4:6])
    return timedelta(seconds=seconds + (float("0." + frac) if frac else 0.0))


def _date(value) -> datetime:
    return datetime.strptime(str(value).strip()[:8], "%Y%m%d")


def _datetime(value) -> datetime:
    text = str(value).strip()
    for sign in ("+", "-"):  # drop a UTC offset (&ZZXX): both times come from the same scanner clock
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return _date(text[:8]) + _time(text[8:] or "000000")


def _number(ds, keyword: str, where: str) -> float:
    value = ds.get(keyword)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SUVError(f"{keyword} missing or not a number in {where}") from None
    if not number > 0 or not math.isfinite(number):
        raise SUVError(f"{keyword} is {value!r} in {where}; it must be positive")
    return number


def suv_info(headers: Sequence) -> SUVInfo:
    """The SUV factor of a PET series from its headers (one per slice; all must agree).

    Raises:
        SUVError: not PET, Units not BQML, a tag missing or inconsistent across slices, decay
            correction NONE (per-slice decay, not supported), or times out of order.
    """
    if not headers:
        raise SUVError("no DICOM headers")
    first = headers[0]
    if str(first.get("Modality", "")).upper() != "PT":
        raise SUVError(f"Modality is {first.get('Modality', '?')!r}, not PT")
    units = str(first.get("Units", "")).upper()
    if units != "BQML":
        raise SUVError(f"Units is {units or 'missing'!r}, not BQML (activity concentration)")
    weight = _number(first, "PatientWeight", "the header")
    seq = first.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SUVError("RadiopharmaceuticalInformationSequence missing")
    radio = seq[0]
    where = "RadiopharmaceuticalInformationSequence"
    dose = _number(radio, "RadionuclideTotalDose", where)
    half_life = _number(radio, "RadionuclideHalfLife", where)
    decay = str(first.get("DecayCorrection", "")).upper()
    if decay not in ("START", "ADMIN"):
        raise SUVError(
            f"DecayCorrection is {decay or 'missing'!r}: only START (or ADMIN) decay-corrected series are converted"
        )
    series_date = first.get("SeriesDate") or first.get("AcquisitionDate") or first.get("StudyDate")
    try:
        if radio.get("RadiopharmaceuticalStartDateTime"):
            injection = _datetime(radio.RadiopharmaceuticalStartDateTime)
        elif radio.get("RadiopharmaceuticalStartTime") and series_date:
            injection = _date(series_date) + _time(radio.RadiopharmaceuticalStartTime)
        else:
            raise SUVError(f"RadiopharmaceuticalStartTime (or StartDateTime) missing in {where}")
    except ValueError as err:
        raise SUVError(f"RadiopharmaceuticalStartTime unreadable ({err})") from None
    if decay == "ADMIN":
        reference = injection
    else:
        series_time = first.get("SeriesTime") or min(
            (h.get("AcquisitionTime") for h in headers if h.get("AcquisitionTime")), default=None
        )
        if not series_time or not series_date:
            raise SUVError("SeriesTime (or AcquisitionTime) and SeriesDate missing: no reference time for the decay")
        try:
            reference = _date(series_date) + _time(series_time)
        except ValueError as err:
            raise SUVError(f"SeriesTime unreadable ({err})") from None
        if reference < injection:  # a scan that crosses midnight after a late injection
            reference += timedelta(days=1)
        if reference - injection > timedelta(hours=24):
            raise SUVError(f"SeriesTime is {reference - injection} after the injection: inconsistent times")
    for h in headers[1:]:
        for keyword in ("Units", "PatientWeight", "DecayCorrection"):
            if str(h.get(keyword, "")) != str(first.get(keyword, "")):
                raise SUVError(f"{keyword} differs between slices of the series")
    decayed = dose * 2.0 ** (-(reference - injection).total_seconds() / half_life)
    factor = weight * 1000.0 / decayed
    return SUVInfo(float(np.float64(factor)), weight, dose, half_life, injection, reference, decay)
