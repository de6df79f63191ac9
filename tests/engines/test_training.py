"""Tiny real trainings: both stages on 32-pixel phantom patches (seconds on a CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events

from monai_emma.data.pairs import PairedPatchDataset, find_pairs
from monai_emma.engines import FuserStep, SensorStep, build_stage_trainer, recipe, run_training
from monai_emma.engines.config import TrainConfig
from monai_emma.losses import EMMALoss
from monai_emma.networks import SensorBank, UFuser
from monai_emma.transforms import TransformGroup

TINY_SENSOR = dict(features=(4, 8, 16))


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        epochs=2,
        sensor_batch_size=8,
        fuser_batch_size=2,
        sensor_patch_size=32,
        fuser_patch_size=32,
        sensor_samples_per_epoch=32,
        fuser_samples_per_epoch=8,
        sensor_lr=3e-3,
        fuser_lr=1e-3,
    )
    base.update(kw)
    return recipe("cpu", **base)


class LossLog:
    def __init__(self):
        self.losses = []

    def attach(self, engine):
        engine.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.losses.append(float(e.state.output["loss"]))
        )


def test_recipes_and_overrides():
    paper = recipe("paper")
    assert (paper.sensor.epochs, paper.sensor.batch_size, paper.sensor.patch_size) == (40, 64, 128)
    assert (paper.fuser.epochs, paper.fuser.batch_size, paper.fuser.lr_step) == (120, 4, 20)
    assert (paper.alpha, paper.shifts, paper.rotations, paper.reflections) == (0.1, 3, 3, 3)
    cfg = recipe("cpu", epochs=3, fuser_lr=1e-5, seed=9)
    assert cfg.sensor.epochs == cfg.fuser.epochs == 3 and cfg.fuser.lr == 1e-5 and cfg.seed == 9
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        recipe("cpu", warp_speed=1)
    assert recipe("cpu", fuser_schedule="cosine").fuser.schedule == "cosine"
    with pytest.raises(ValueError, match="learning-rate schedule"):
        recipe("cpu", fuser_schedule="linear")
    assert recipe("cpu", stage1_rules=["max"]).stage1_rules == ("max",)  # normalised like a loaded config


def test_parse_overrides():
    from monai_emma.engines.config import parse_overrides

    got = parse_overrides(["fuser_lr=1e-3", 'stage1_rules=["max","mean"]', "fuser_schedule=cosine", "val_slices=null"])
    assert got == {"fuser_lr": 1e-3, "stage1_rules": ["max", "mean"], "fuser_schedule": "cosine", "val_slices": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["fuser_lr"])


def test_stage2_changes_only_the_fuser_and_sensors_get_no_gradients(phantom_root):
    bank = SensorBank(["mri", "ct", "pet"], **TINY_SENSOR)
    before = copy.deepcopy(bank.state_dict())
    fuser = UFuser()
    fuser_before = copy.deepcopy(fuser.state_dict())
    step = FuserStep(bank, EMMALoss(0.1), TransformGroup(1, 1, 1), seed=0)

    class Engine:
        pass

    engine = Engine()
    engine.network, engine.state = fuser, Engine()
    engine.state.device, engine.state.iteration = torch.device("cpu"), 1
    engine.optimizer = torch.optim.Adam(fuser.parameters(), lr=1e-3)
    ds = PairedPatchDataset(find_pairs(phantom_root), 32, 1, seed=0)
    batch = torch.utils.data.default_collate([ds[0], ds[5]])
    out = step(engine, batch)
    assert out["equivariance"] > 0 and torch.isfinite(out["loss"])
    for k, v in bank.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in bank.parameters())
    assert any(not torch.equal(v, fuser_before[k]) for k, v in fuser.state_dict().items())


def _stage(kind, cfg, out_dir, pairs, epochs, log, bank=None):
    torch.manual_seed(0)
    st = cfg.sensor if kind == "sensors" else cfg.fuser
    st.epochs = epochs
    ds = PairedPatchDataset(pairs, st.patch_size, st.samples_per_epoch // len(pairs), seed=cfg.seed)
    if kind == "sensors":
        net, step = SensorBank(["mri", "ct", "pet"], **TINY_SENSOR), SensorStep(("mean", "max"), seed=cfg.seed)
    else:
        net = UFuser()
        step = FuserStep(bank, EMMALoss(cfg.alpha), TransformGroup(1, 1, 1), seed=cfg.seed)
    trainer, epoch_end = build_stage_trainer(
        kind, net, step, ds, st, cfg, out_dir, torch.device("cpu"), progress=False, extra_handlers=[log]
    )
    trainer.run()
    return net, epoch_end


@pytest.mark.parametrize("kind", ["sensors", "fuser"])
def test_resume_gives_the_same_next_step_loss(phantom_root, tmp_path, kind):
    pairs = find_pairs(phantom_root)
    cfg = tiny_config()
    bank = SensorBank(["mri", "ct", "pet"], **TINY_SENSOR) if kind == "fuser" else None
    full = LossLog()
    _stage(kind, cfg, tmp_path / "full", pairs, 2, full, bank)
    first = LossLog()
    _stage(kind, cfg, tmp_path / "split", pairs, 1, first, bank)
    resumed = LossLog()
    _stage(kind, cfg, tmp_path / "split", pairs, 2, resumed, bank)  # picks up the epoch-1 checkpoint
    n = len(first.losses)
    assert len(full.losses) == 2 * n and len(resumed.losses) == n  # the resumed run did epoch 2 only
    assert first.losses == pytest.approx(full.losses[:n], rel=1e-6)
    assert resumed.losses[0] == pytest.approx(full.losses[n], rel=1e-5)


def test_two_stage_run_lowers_the_loss_and_writes_weights(phantom_root, tmp_path):
    cfg = tiny_config(epochs=3, sensor_samples_per_epoch=64, fuser_samples_per_epoch=24, fuser_lr=2e-4)
    cfg.extra["note"] = "tiny"
    out = tmp_path / "run"
    results = run_training(phantom_root, out, cfg, progress=False)
    for stage in ("sensors", "fuser"):
        hist = results[stage].history
        assert len(hist) == 3
        assert hist[-1]["train_total"] < hist[0]["train_total"], (stage, hist)
        assert results[stage].weights.exists()
    assert (out / "stage2_fuser" / "best_fuser.pt").exists()
    assert (out / "stage1_sensors" / "history_sensors.csv").read_text().startswith("epoch")
    net = UFuser()
    net.load_state_dict(torch.load(results["fuser"].weights, weights_only=True))
    # a second call finds both stages finished and trains nothing
    again = run_training(phantom_root, out, cfg, progress=False)
    assert again["fuser"].history == [] and again["fuser"].weights == results["fuser"].weights


def test_identity_sensors_skip_stage_one_and_train_the_fuser(phantom_root, tmp_path):
    bank = SensorBank(["mri", "ct"], preset="identity")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(bank(x, ["mri", "ct", "mri"]), x) and not list(bank.parameters())
    cfg = tiny_config(epochs=2, sensor_preset="identity", prior_weight=0.5)
    out = tmp_path / "identity"
    results = run_training(phantom_root, out, cfg, progress=False)
    assert "sensors" not in results and not (out / "stage1_sensors").exists()
    hist = results["fuser"].history
    assert len(hist) == 2 and "train_prior" in hist[0] and hist[0]["train_prior"] > 0
    assert results["fuser"].weights.exists()


def test_two_roots_cosine_schedule_and_prior_edge_weight(phantom_root, second_root, tmp_path):
    import json

    cfg = tiny_config(
        epochs=2, fuser_schedule="cosine", prior_weight=1.0, prior_gradient_weight=4.0, alpha=0.0, val_slices=3
    )
    out = tmp_path / "two"
    results = run_training([phantom_root, second_root], out, cfg, progress=False)
    split = json.loads((out / "split.json").read_text())
    assert split["data"] == [str(phantom_root), str(second_root)]
    assert set(split["counts"]) == {f"{phantom_root.name}/MRI_CT", f"{phantom_root.name}/MRI_PET"} | {
        "more/MRI_CT",
        "more/MRI_SPECT",
    }
    assert any(i.startswith("more/") for i in split["val"])
    hist = results["fuser"].history
    # validation ran through the MONAI evaluator: the sensing loss and fusion metrics of every epoch
    for row in hist:
        assert row["val_loss"] > 0 and 0 < row["val_VIF"] and 0 < row["val_SSIM"] <= 2 and "val_Qabf" in row
    assert results["sensors"].history[-1]["val_loss"] > 0
    assert hist[0]["lr"] < cfg.fuser.lr and hist[1]["lr"] < hist[0]["lr"]  # cosine decay, every epoch
    assert hist[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert json.loads((out / "config.json").read_text())["prior_gradient_weight"] == 4.0
    # the sensor bank covers the modalities of both roots
    from monai_emma.networks import load_sensor_bank

    assert load_sensor_bank(results["sensors"].weights).modalities == ["ct", "mri", "pet", "spect"]


def test_prior_edge_weight_reaches_the_loss():
    from monai_emma.losses import EMMALoss

    a, b, f = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    plain = EMMALoss(alpha=0.0, prior_weight=1.0, prior_gradient_weight=0.0).components(a, a, b, b, fused=f)
    edges = EMMALoss(alpha=0.0, prior_weight=1.0, prior_gradient_weight=4.0).components(a, a, b, b, fused=f)
    assert edges["prior"] > plain["prior"] > 0


def test_fuser_step_senses_once_and_equals_the_written_out_loss(phantom_root):
    """The step senses f through the group's identity element; its loss and gradients equal
    EMMA's loss written out with f sensed separately (as the official loop does)."""
    from monai_emma.losses import FusionLoss

    torch.manual_seed(0)
    bank = SensorBank(["mri", "ct"], **TINY_SENSOR).freeze()
    fuser = UFuser()
    reference = copy.deepcopy(fuser)
    group = TransformGroup(1, 1, 1)
    step = FuserStep(bank, EMMALoss(0.1), group, seed=3)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    parts = step.loss(fuser, a, b, ["mri"] * 2, ["ct"] * 2, iteration=5)
    parts["total"].backward()

    ell = FusionLoss()
    f = reference(torch.cat([a, b], 1))
    group.set_random_state(seed=step_seed_of(step, 5))
    ft = group(f)
    g = ft.shape[0] // 2
    refused = reference(torch.cat([bank(ft, ["mri"] * 2 * g), bank(ft, ["ct"] * 2 * g)], 1))
    total = ell(bank(f, ["mri"] * 2), a) + ell(bank(f, ["ct"] * 2), b) + 0.1 * ell(refused, ft)
    total.backward()
    torch.testing.assert_close(parts["total"], total, atol=1e-6, rtol=1e-5)
    for (name, p), q in zip(fuser.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def step_seed_of(step, iteration: int) -> int:
    from monai_emma.engines.steps import step_seed

    return step_seed(step.seed, iteration)


def test_stage_timings_and_bf16_training(phantom_root, tmp_path):
    from monai_emma.data.pairs import split_pairs
    from monai_emma.engines.stages import get_stage
    from monai_emma.engines.two_stage import stage_dataset

    cfg = tiny_config(epochs=1, precision="bf16", sensor_samples_per_epoch=16)
    results = run_training(phantom_root, tmp_path / "bf16", cfg, progress=False)
    train_pairs, _ = split_pairs(find_pairs(phantom_root), cfg.val_fraction, cfg.seed)
    for name in ("sensors", "fuser"):
        stage = get_stage(name)
        t = results[name].timings
        batches = len(stage_dataset(train_pairs, cfg, stage)) // stage.settings(cfg).batch_size
        assert t["steps_count"] == batches and t["data_count"] >= batches
        assert t["steps"] > 0 and t["validation"] > 0 and t["checkpoint"] > 0
        assert t["steps"] + t["validation"] + t["checkpoint"] <= results[name].seconds
        assert torch.isfinite(torch.tensor(results[name].history[-1]["train_total"]))
    with pytest.raises(ValueError, match="unknown precision"):
        tiny_config(precision="fp8")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_runs_in_the_engine_precision(phantom_root, precision):
    from monai.utils import CommonKeys

    bank = SensorBank(["mri", "ct", "pet"], **TINY_SENSOR)
    fuser = UFuser()
    step = FuserStep(bank, EMMALoss(0.1), TransformGroup(1, 1, 1), seed=0)

    class Engine:
        pass

    engine = Engine()
    engine.network, engine.state, engine.precision = fuser, Engine(), precision
    engine.state.device, engine.state.iteration = torch.device("cpu"), 1
    engine.optimizer = torch.optim.Adam(fuser.parameters(), lr=1e-3)
    ds = PairedPatchDataset(find_pairs(phantom_root), 32, 1, seed=0)
    out = step(engine, torch.utils.data.default_collate([ds[0], ds[5]]))
    assert out[CommonKeys.PRED].dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert torch.isfinite(out["loss"]) and all(
        p.grad is None or p.grad.dtype == torch.float32 for p in fuser.parameters()
    )


def test_stage2_loss_carries_every_prior_setting():
    """The training settings of the prior (edge and structure weights, per modality, SSIM's range)
    reach the loss the training step uses, and round-trip through config.json's dict."""
    from monai_emma.engines.config import TrainConfig
    from monai_emma.engines.two_stage import stage2_loss

    cfg = tiny_config(
        prior_weight=3.0,
        prior_gradient_weight=40.0,
        prior_gradient_weight_by_modality={"pet": 80},
        prior_ssim_weight=0.5,
        prior_ssim_weight_by_modality={"CT": 2},
        prior_ssim_data_range=2 / 255,
        prior_ssim_min_std=0.004,
    )
    loss = stage2_loss(TrainConfig.from_dict(cfg.to_dict()))
    assert loss.prior_weight == 3.0 and loss.prior.gradient_weight == 40.0 and loss.prior.ssim_weight == 0.5
    assert loss.prior_gradient_weight_by_modality == {"pet": 80.0}
    assert loss.prior_ssim_weight_by_modality == {"ct": 2.0}
    assert loss.prior.ssim_data_range == pytest.approx(2 / 255) and loss.prior.ssim_min_std == 0.004
    assert stage2_loss(tiny_config()).prior.ssim_weight == 0.0  # off unless asked for
