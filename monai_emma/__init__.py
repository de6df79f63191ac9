"""monai-emma: EMMA (Equivariant Multi-Modality Image Fusion) for MONAI."""

__version__ = "0.1.0"
