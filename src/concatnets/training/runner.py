"""From a :class:`TrainConfig` to a finished run folder.

A run folder holds::

    config.json            the resolved settings (usable as --config)
    last.json + .safetensors, best.json + .safetensors   checkpoints
    metrics.csv, metrics.json, learning_curves.png
    overlays/*.png         validation predictions (segmentation)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from concatnets.data.datasets import LabelledDataset, resolve_size_policy
from concatnets.data.masks import parse_mask_values
from concatnets.data.sources import LabelledData, open_labelled_data
from concatnets.data.split import split_indices
from concatnets.data.transforms import NORMALIZATIONS, Augment, SizePolicy, parse_augmentations
from concatnets.models import create_model, get_model_spec
from concatnets.training.border_weights import unet_weight_map
from concatnets.training.checkpoint import check_compatible, load_checkpoint
from concatnets.training.config import TrainConfig, config_to_dict, write_config
from concatnets.training.distributed import (
    DistributedContext,
    cleanup_distributed,
    init_distributed,
    wrap_model,
)
from concatnets.training.losses import build_loss
from concatnets.training.optim import build_optimizer, build_scheduler
from concatnets.training.rng import seed_everything
from concatnets.training.trainer import Trainer, TrainerState

__all__ = ["PreparedData", "TrainResult", "default_run_dir", "prepare_data", "run_training"]


@dataclass
class PreparedData:
    """Datasets of a run and what was learned about the data.

    Args:
        data: The training data.
        train_set: Training samples.
        val_set: Validation samples (may be empty).
        size_policy: How samples are brought to one size, or ``None``.
        loss: The resolved loss name.
    """

    data: LabelledData
    train_set: LabelledDataset
    val_set: LabelledDataset
    size_policy: SizePolicy | None
    loss: str

    def summary(self) -> str:
        """One line: source, sizes, channels, classes and split."""
        data = self.data
        channels = "1 channel" if data.in_channels == 1 else f"{data.in_channels} channels"
        return (
            f"data: {data.address}, {len(data)} images ({data.size_summary()}), {channels}, "
            f"{data.num_classes} classes ({', '.join(data.class_names)}); "
            f"train {len(self.train_set)} / val {len(self.val_set)}"
        )


@dataclass
class TrainResult:
    """What :func:`run_training` produced.

    Args:
        run_dir: The run folder.
        state: Final trainer state (history, best metric).
        monitor: Name of the monitored metric.
        config: The resolved settings.
        is_main: Whether this process is rank 0 (the one that reports and writes files).
    """

    run_dir: Path
    state: TrainerState
    monitor: str
    config: TrainConfig
    is_main: bool = True

    @property
    def last(self) -> dict[str, Any]:
        """The last epoch's record."""
        return self.state.history[-1] if self.state.history else {}


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>``."""
    data = config.data.replace("builtin:", "").rstrip("/").split("/")[-1] or "data"
    return Path("runs") / f"{config.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def _open_validation(config: TrainConfig, data: LabelledData, task: str) -> LabelledData:
    assert config.val_data is not None
    mapping = data.value_map.mapping if data.value_map is not None else None
    val = open_labelled_data(
        config.val_data,
        num_images=config.num_images,
        image_size=config.image_size,
        seed=config.seed + 1,
        mask_values=mapping,
        task=task,
    )
    if task == "classification" and val.class_names != data.class_names:
        raise ValueError(
            f"--val-data {config.val_data} has classes {val.class_names} but --data has "
            f"{data.class_names}; use the same class folders in both"
        )
    if val.num_classes > data.num_classes:
        raise ValueError(
            f"--val-data {config.val_data} has {val.num_classes} classes but --data has "
            f"{data.num_classes}; use masks with the same classes"
        )
    val.class_names = list(data.class_names)
    return val


def prepare_data(config: TrainConfig, task: str) -> PreparedData:
    """Open, split and wrap the data of ``config`` for a model doing ``task``.

    Args:
        config: The settings.
        task: ``'segmentation'`` or ``'classification'``.
    """
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {config.normalization!r}; "
            f"choose from {', '.join(NORMALIZATIONS)}"
        )
    mask_values = parse_mask_values(config.mask_values) if config.mask_values else None
    data = open_labelled_data(
        config.data,
        num_images=config.num_images,
        image_size=config.image_size,
        seed=config.seed,
        mask_values=mask_values,
        task=task,
    )
    policy = resolve_size_policy(data, config.size_policy, config.patch_size)
    if config.val_data:
        val_data = _open_validation(config, data, task)
        train_indices, val_indices = list(range(len(data))), list(range(len(val_data)))
        if policy is None:
            resolve_size_policy(val_data, None, None)
            if set(val_data.sizes) != set(data.sizes) and task == "classification":
                raise ValueError(
                    "--val-data images differ in size from --data images; "
                    "pass --size-policy resize|pad|crop"
                )
    else:
        val_data = data
        train_indices, val_indices = split_indices(
            len(data), config.val_fraction, config.seed, labels=data.labels
        )
    loss = config.loss
    if loss == "auto":
        loss = "ce_dice" if task == "segmentation" else "ce"
    weight_map = None
    if loss == "weighted_ce":
        weight_map = functools.partial(
            unet_weight_map, w0=config.border_w0, sigma=config.border_sigma
        )
    names = parse_augmentations(config.augment)
    augment = (
        Augment(names, config.elastic_sigma, elastic_probability=config.elastic_probability)
        if names
        else None
    )
    common: dict[str, Any] = dict(
        size_policy=policy,
        normalization=config.normalization,
        seed=config.seed,
        weight_map=weight_map,
    )
    train_set = LabelledDataset(data, train_indices, augment=augment, train=True, **common)
    val_set = LabelledDataset(val_data, val_indices, train=False, **common)
    return PreparedData(data, train_set, val_set, policy, loss)


def model_kwargs_for(config: TrainConfig, data: LabelledData) -> dict[str, Any]:
    """Builder arguments: ``model_args`` plus channels and classes taken from the data.

    Args:
        config: The settings.
        data: The training data.
    """
    kwargs = dict(config.model_args)
    for key, value in (("in_channels", data.in_channels), ("num_classes", data.num_classes)):
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"model_args sets {key}={kwargs[key]} but the data has {value}; "
                f"remove {key} from model_args (it is taken from the data)"
            )
        kwargs[key] = value
    if config.memory_efficient is not None:
        kwargs["memory_efficient"] = config.memory_efficient
    return kwargs


def _resolve_run_dir(config: TrainConfig, resume: Path | None) -> Path:
    if resume is not None:
        if not (resume / "last.json").exists():
            raise FileNotFoundError(
                f"--resume {resume} holds no last.json checkpoint; pass a run folder "
                "written by `concatnets train`"
            )
        return resume
    run_dir = Path(config.output) if config.output else default_run_dir(config)
    if (run_dir / "last.json").exists():
        raise FileExistsError(
            f"run folder {run_dir} already holds a checkpoint; continue it with "
            f"--resume {run_dir} or choose another --output"
        )
    return run_dir


def run_training(config: TrainConfig, *, resume: str | Path | None = None) -> TrainResult:
    """Train as ``config`` says; with ``resume`` continue the run in that folder.

    Args:
        config: The settings (for a resume: the run's ``config.json`` with any overrides).
        resume: A run folder holding ``last.json``.
    """
    resume_dir = Path(resume) if resume is not None else None
    spec = get_model_spec(config.model)
    if spec.task not in ("segmentation", "classification"):
        raise ValueError(f"model {config.model!r} has unsupported task {spec.task!r}")
    run_dir = _resolve_run_dir(config, resume_dir)
    if config.epochs < 1:
        raise ValueError(f"--epochs {config.epochs} must be at least 1")
    ctx: DistributedContext = init_distributed(None if config.device == "auto" else config.device)
    try:
        seed_everything(config.seed)
        prepared = prepare_data(config, spec.task)
        workers = config.workers
        if workers is None:
            workers = 4 if ctx.device.type == "cuda" else 0
        config = replace(config, output=str(run_dir), workers=workers)
        data = prepared.data
        kwargs = model_kwargs_for(config, data)
        model = create_model(config.model, **kwargs)
        model = wrap_model(model, ctx)
        optimizer = build_optimizer(
            config.optimizer,
            model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
        scheduler = build_scheduler(
            config.schedule,
            optimizer,
            epochs=config.epochs,
            step_size=config.step_size,
            gamma=config.gamma,
        )
        metadata = {
            "architecture": config.model,
            "model_kwargs": kwargs,
            "task": spec.task,
            "class_names": list(data.class_names),
            "in_channels": data.in_channels,
            "normalization": config.normalization,
            "mask_values": data.value_map.to_json() if data.value_map is not None else None,
            "size_policy": (
                {"mode": prepared.size_policy.mode, "size": list(prepared.size_policy.size)}
                if prepared.size_policy is not None
                else None
            ),
            "loss": prepared.loss,
            "config": config_to_dict(config),
        }
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(config, run_dir / "config.json")
            print(prepared.summary(), flush=True)
            print(
                f"model: {config.model} ({sum(p.numel() for p in model.parameters()):,} "
                f"parameters) on {ctx.device}; loss {prepared.loss}; run folder {run_dir}",
                flush=True,
            )
        trainer = Trainer(
            model,
            task=spec.task,
            class_names=data.class_names,
            loss_fn=build_loss(prepared.loss, spec.task, label_smoothing=config.label_smoothing),
            optimizer=optimizer,
            scheduler=scheduler,
            train_set=prepared.train_set,
            val_set=prepared.val_set,
            run_dir=run_dir,
            metadata=metadata,
            ctx=ctx,
            batch_size=config.batch_size,
            workers=workers,
            seed=config.seed,
            bf16=config.bf16,
            progress=config.progress,
            keep_epochs=config.keep_epochs,
        )
        if resume_dir is not None:
            checkpoint = load_checkpoint(resume_dir)
            check_compatible(checkpoint, model, config.model)
            saved_epochs = checkpoint.metadata.get("config", {}).get("epochs")
            same_length = saved_epochs == config.epochs
            trainer.restore(checkpoint, scheduler=same_length)
            if not same_length:
                trainer.replay_schedule(
                    functools.partial(
                        build_scheduler,
                        config.schedule,
                        epochs=config.epochs,
                        step_size=config.step_size,
                        gamma=config.gamma,
                    )
                )
            if ctx.is_main:
                print(f"resuming after epoch {trainer.state.epoch} from {checkpoint.path}")
        state = trainer.fit(config.epochs)
        trainer.write_overlays(config.overlays)
        return TrainResult(run_dir, state, trainer.monitor, config, ctx.is_main)
    finally:
        cleanup_distributed(ctx)
