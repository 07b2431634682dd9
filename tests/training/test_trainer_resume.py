from __future__ import annotations

import math

import pytest
import torch

from concatnets.training.checkpoint import load_checkpoint
from concatnets.training.config import TrainConfig
from concatnets.training.runner import run_training
from concatnets.training.trainer import EpochSampler, Trainer, TrainingDivergedError

TINY = TrainConfig(
    model="unet_small",
    model_args={"features": 4, "depth": 2},
    data="builtin:cells",
    num_images=8,
    image_size=32,
    epochs=2,
    batch_size=4,
    device="cpu",
    progress=False,
    overlays=0,
)


def test_resume_after_interrupt_continues_exactly_like_an_uninterrupted_run(
    tmp_path, monkeypatch, capsys
):
    straight = run_training(TrainConfig(**{**TINY.__dict__, "output": str(tmp_path / "a")}))
    interrupted = TrainConfig(**{**TINY.__dict__, "output": str(tmp_path / "b")})
    original_run_epoch = Trainer.run_epoch

    def stop_at_second_epoch(self, epoch, epochs):
        if epoch == 2:
            raise KeyboardInterrupt
        return original_run_epoch(self, epoch, epochs)

    monkeypatch.setattr(Trainer, "run_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(interrupted)
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "run_epoch", original_run_epoch)
    resumed = run_training(interrupted, resume=tmp_path / "b")
    assert resumed.state.epoch == 2 and resumed.state.global_step == straight.state.global_step
    expected = load_checkpoint(tmp_path / "a").model_state
    actual = load_checkpoint(tmp_path / "b").model_state
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)
    assert [r["epoch"] for r in load_checkpoint(tmp_path / "b").metadata["trainer"]["history"]] == [
        1,
        2,
    ]


def test_existing_run_folder_is_not_overwritten(tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "output": str(tmp_path / "run")})
    run_training(config)
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(config)


def test_nan_loss_stops_with_advice(tmp_path):
    config = TrainConfig(
        **{**TINY.__dict__, "epochs": 1, "lr": 1e30, "optimizer": "sgd", "momentum": 0.0}
    )
    config.output = str(tmp_path / "nan")
    config.epochs = 3
    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        run_training(config)


def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    assert math.isfinite(len(sampler))


def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path):
    run_training(TrainConfig(**{**TINY.__dict__, "output": str(tmp_path / "run")}))
    longer = TrainConfig(**{**TINY.__dict__, "epochs": 3, "output": str(tmp_path / "run")})
    result = run_training(longer, resume=tmp_path / "run")
    assert [r["epoch"] for r in result.state.history] == [1, 2, 3]
    # Cosine over 3 epochs at epoch 3: lr = base * (1 + cos(2 pi / 3)) / 2 = base / 4.
    assert result.state.history[2]["lr"] == pytest.approx(TINY.lr / 4)


def test_keep_epochs_prunes_older_epoch_checkpoints(tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "keep_epochs": 1, "output": str(tmp_path / "run")})
    run_training(config)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "epoch-0002.json" in names and "epoch-0001.json" not in names
    assert not [n for n in names if n.startswith("epoch-0001")]
    assert load_checkpoint(tmp_path / "run" / "epoch-0002.json").metadata["epoch"] == 2
