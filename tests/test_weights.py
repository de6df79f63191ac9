"""The shipped weights: typed members load and fuse, ``DEFAULT`` is one of them, and the record
(package and bundle) is complete and agrees. One copy of every file in the repository."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from monai_emma.model_source import ModelSourceError, resolve_fuser
from monai_emma.networks import SensorBank, UFuser, pseudo_sensors, ufuser
from monai_emma.weights import SensorWeights, UFuserWeights, bundle_models_dir, get_weights, weights_info

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "emma"


def test_every_member_loads_and_fuses():
    assert {"V1", "V2"} <= set(UFuserWeights.__members__)  # earlier sets stay loadable by name
    assert get_weights("v2.1") is get_weights("V2_1") is UFuserWeights.V2_1  # a dotted name is a member
    assert resolve_fuser(weights="v2.1")[1] == "shipped weights 'v2.1'"  # --weights v2.1
    for member in UFuserWeights:  # aliases (DEFAULT) are not repeated by iteration
        net = ufuser(weights=member)
        assert isinstance(net, UFuser) and not net.training
        x = torch.rand(1, 2, 32, 32)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 1, 32, 32) and torch.isfinite(y).all() and 0 <= y.min() <= y.max() <= 1
        bank = pseudo_sensors(weights=get_weights(member, "sensors"))
        assert isinstance(bank, SensorBank) and {"mri", "ct", "pet", "spect"} <= set(bank.modalities)
        assert not any(p.requires_grad for p in bank.parameters())
    assert not ufuser().training and isinstance(pseudo_sensors(), SensorBank)  # weights=None: random init


def test_default_alias_meta_and_transforms():
    info = weights_info()
    assert UFuserWeights.DEFAULT is get_weights(info["default"])
    assert UFuserWeights.DEFAULT.set_name == info["default"]
    assert SensorWeights.DEFAULT.set_name == info["default"]
    meta = UFuserWeights.DEFAULT.meta
    assert meta["version"] == info["default"] and meta["num_params"] == sum(p.numel() for p in UFuser().parameters())
    for key in ("recipe", "data", "command", "hardware", "val_pairs", "config"):
        assert meta[key], key
    assert SensorWeights.DEFAULT.meta["num_params"] > 0
    scale = UFuserWeights.DEFAULT.transforms["ct"]
    out = scale(torch.tensor([[[-1000.0, 100.0, 3000.0]]]))  # HU: air, parenchyma, bone
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0 and 0 < float(out[0, 0, 1]) < 1
    assert set(UFuserWeights.DEFAULT.transforms) >= {"mri", "ct", "pet", "spect"}


def test_the_one_resolver_takes_members_names_and_files(tmp_path):
    ref = ufuser(weights=UFuserWeights.V1)
    for source in (UFuserWeights.V1, "v1", "V1"):
        net, where = resolve_fuser(weights=source)
        assert where == "shipped weights 'v1'"
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    net, where = resolve_fuser()
    assert where == f"shipped weights '{weights_info()['default']}'"
    path = tmp_path / "w.pt"
    torch.save(ref.state_dict(), path)
    assert resolve_fuser(weights=path)[1] == f"weights {path}"
    with pytest.raises(ModelSourceError, match="no such weights file"):
        resolve_fuser(weights="v0")
    with pytest.raises(KeyError, match=r"unknown weight set 'v0'; shipped: .*default"):
        get_weights("v0")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_copy_of_each_file_and_a_self_contained_bundle():
    models = BUNDLE / "models"
    for f in models.iterdir():
        assert not f.is_symlink(), f"{f} is a link: a copied bundle would have no weights"
    assert bundle_models_dir() == models  # this checkout (an installed wheel carries its own copy)
    assert UFuserWeights.DEFAULT.path == models / "model.pt" and SensorWeights.DEFAULT.path == models / "sensors.pt"
    assert sum(f.stat().st_size for f in models.glob("*.pt")) < 20 * 2**20
    skip = {".git", "emma-runs", "build", "dist", ".venv"}  # build outputs and runs are not the repository
    files = [p for p in REPO.rglob("*.pt") if not skip.intersection(p.relative_to(REPO).parts)]
    digests = [_sha(p) for p in files]
    assert len(digests) == len(set(digests)), "a weights file is in the repository twice"


@pytest.mark.parametrize("member", list(UFuserWeights.__members__))
def test_record_says_how_the_weights_were_trained(member):
    record = UFuserWeights[member].meta
    cfg = record["config"]
    assert isinstance(cfg["seed"], int)
    for stage, section in (("sensors", "sensor"), ("fuser", "fuser")):
        assert record["stages"][stage]["epochs"] == cfg[section]["epochs"]
        assert record["stages"][stage]["wall_minutes"] > 0


def test_bundle_metadata_records_the_default():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    record = UFuserWeights.DEFAULT.meta
    assert meta["version"] in meta["changelog"]
    shipped = meta["shipped_weights"]
    assert shipped["set"] == record["version"]
    assert shipped["command"] == record["command"]
    assert shipped["seed"] == record["config"]["seed"]
    assert shipped["fuser_epochs"] == record["stages"]["fuser"]["epochs"]
    assert shipped["sensor_epochs"] == record["stages"]["sensors"]["epochs"]
    assert shipped["prior_weight"] == record["config"].get("prior_weight", 0.0)


def test_a_set_may_share_another_sets_file():
    """v2.1's sensors are v3's (v3 continued v2.1's stage 2 with the same sensors): the record says
    ``set:v3`` and the file is found wherever v3's is, with one copy in the repository."""
    assert weights_info()["sets"]["v2.1"]["sensors"] == "set:v3"
    assert SensorWeights.V2_1.path == SensorWeights.V3.path
    assert SensorWeights.V2_1.get_state_dict().keys() == SensorWeights.V3.get_state_dict().keys()
    assert UFuserWeights.V2_1.path != UFuserWeights.V3.path
