import pytest
import torch

from monai_emma.precision import INFERENCE_PRECISIONS, autocast, check_precision, native_bf16, resolve_precision


def test_auto_is_bf16_exactly_where_it_is_native():
    expected = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with autocast("auto", "cpu"):
        dtype = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    assert dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]


def test_training_precisions_have_no_auto():
    assert check_precision("auto", INFERENCE_PRECISIONS) == "auto"
    with pytest.raises(ValueError, match="unknown precision 'auto'; choose one of fp32, bf16"):
        check_precision("auto")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8")
