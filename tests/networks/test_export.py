"""ONNX export of the U-Fuser: one graph for any batch, height and width, equal to PyTorch."""

import pytest
import torch

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.xdist_group("onnx")  # one export (the module fixture) for all of them

from monai_emma.networks import UFuser  # noqa: E402
from monai_emma.networks.export import MIN_SIZE, check_onnx, export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = UFuser().eval()
    with torch.no_grad():  # realistic, non-trivial weights in every layer
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net, export_onnx(net, tmp_path_factory.mktemp("onnx") / "ufuser.onnx")


def test_onnx_equals_pytorch_at_many_sizes(exported):
    net, path = exported
    sizes = [(1, 256, 256), (2, 97, 131), (1, MIN_SIZE, MIN_SIZE), (3, 17, 250), (1, 64, 300)]
    assert check_onnx(path, net, sizes) < 1e-5


def test_onnx_graph_has_dynamic_batch_height_width(exported):
    import onnxruntime as ort

    _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.shape[1] == 2
    assert all(isinstance(d, str) for d in (image.shape[0], image.shape[2], image.shape[3]))
    assert [o.name for o in session.get_outputs()] == ["pred"]


def test_a_failed_export_leaves_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            if (x * self.scale).sum() > 0:  # data-dependent control flow: torch.export refuses it
                return x[:, :1]
            return -x[:, :1]

    with pytest.raises(torch.onnx.errors.OnnxExporterError):
        export_onnx(Broken(), tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []
