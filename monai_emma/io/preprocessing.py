"""The preprocessing every fusion runs, from a job to the 2-channel ``image``: one MONAI ``Compose``
for ``monai-emma fuse`` (:mod:`monai_emma.fusion`, which re-exports it), the bundle's
``inference.json`` (the same list) and the studies of a datalist that training and evaluation read
(:mod:`monai_emma.studies`). It sits in the io layer so that the training engines, below
:mod:`monai_emma.fusion`, use the very same transforms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from monai_emma.transforms.intensity import IntensityRule

__all__ = ["fusion_preprocessing"]


def fusion_preprocessing(
    rules: Mapping[str, IntensityRule] | None = None,
    anatomical_rule: IntensityRule | None = None,
    other_rule: IntensityRule | None = None,
    resize: bool = False,
    suv: str = "auto",
    register: str = "none",
):
    """The MONAI ``Compose`` from a job ``{"anatomical", "other", "modality"}`` to the 2-channel
    ``image`` (display orientation). The bundle's ``preprocessing`` is the same list.

    Args:
        rules: ``{modality: IntensityRule}`` replacing defaults of :data:`DEFAULT_INTENSITY`.
        anatomical_rule: the anatomical image's rule (overrides ``rules``).
        other_rule: the second modality's rule, whatever it is (overrides ``rules``).
        resize: 2D only: resample the second image to the anatomical size when they differ.
        suv: PET DICOM to body-weight SUV: ``"auto"``, ``"on"`` or ``"off"``
            (:class:`~monai_emma.io.dictionary.ToSUVd`).
        register: ``"none"``, ``"rigid"`` or ``"affine"``: align the second modality to the
            anatomical image first (:class:`~monai_emma.transforms.registration.RegisterToMatchd`).
    """
    from monai.transforms import Compose, ConcatItemsd, Orientationd, ResampleToMatchd

    from monai_emma.io.dictionary import DISPLAY_AXCODES, LoadFusionPaird, ToSUVd
    from monai_emma.transforms.intensity import ModalityScaled
    from monai_emma.transforms.registration import RegisterToMatchd

    return Compose(
        [
            LoadFusionPaird(("anatomical", "other"), resize=resize),
            ToSUVd("other", mode=suv),
            ModalityScaled("anatomical", modality_key="anatomical_modality", rules=_rules(rules, anatomical_rule)),
            ModalityScaled("other", modality_key="modality", rules=_rules(rules, other_rule)),
            RegisterToMatchd("other", key_dst="anatomical", mode=register),
            ResampleToMatchd("other", key_dst="anatomical", mode="bilinear", padding_mode="zeros", dtype=torch.float32),
            Orientationd(("anatomical", "other"), axcodes=DISPLAY_AXCODES, labels=None),
            ConcatItemsd(("anatomical", "other"), name="image", dim=0),
        ]
    )


def _rules(rules: Mapping[str, IntensityRule] | None, override: IntensityRule | None):
    return [override] if override is not None else dict(rules or {})
