"""From a :class:`TrainConfig` to a finished run folder.

A run folder holds::

    config.json            the resolved settings (usable as --config)
    last.json + .safetensors, best.json + .safetensors   checkpoints
    metrics.csv, metrics.json, learning_curves.png
    overlays/*.png         validation predictions (segmentation)

Nothing in a run folder is written before every check has passed: the data is opened
and checked, the model built, and a resumed checkpoint loaded and matched against the
model first. A folder that already holds a run is refused unless the caller resumes it
or asks to overwrite it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from concatnets.data.datasets import LabelledDataset, channel_statistics, resolve_size_policy
from concatnets.data.masks import parse_mask_values
from concatnets.data.notices import notice
from concatnets.data.sources import LabelledData, describe_dims, open_labelled_data
from concatnets.data.split import small_validation_message, split_indices
from concatnets.data.transforms import (
    NORMALIZATIONS,
    Augment,
    ChannelStatistics,
    SizePolicy,
    parse_augmentations,
)
from concatnets.engine.choices import restore_engine_choices
from concatnets.models import create_model, get_model_spec
from concatnets.models.external import conversion_report
from concatnets.training.border_weights import unet_weight_map
from concatnets.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    check_optimizer_state,
    load_checkpoint,
    load_model_weights,
)
from concatnets.training.config import (
    TrainConfig,
    config_to_dict,
    validate_config,
    write_config,
)
from concatnets.training.data_checks import check_samples
from concatnets.training.dimensions import check_model_fits_data, model_spatial_dims
from concatnets.training.distributed import (
    DistributedContext,
    barrier,
    cleanup_distributed,
    init_distributed,
    unwrap_model,
    wrap_model,
)
from concatnets.training.legacy_keys import rename_legacy_densenet_keys
from concatnets.training.losses import build_loss
from concatnets.training.model_args import check_model_args
from concatnets.training.optim import build_optimizer, build_scheduler
from concatnets.training.repair import (
    metrics_files_match,
    remove_temporary_files,
    repair_checkpoints,
)
from concatnets.training.rng import configure_determinism, seed_everything
from concatnets.training.run_lock import locked_run_folder
from concatnets.training.trainer import Trainer, TrainerState

__all__ = [
    "RUN_FILES",
    "PreparedData",
    "TrainResult",
    "default_run_dir",
    "find_run_files",
    "prepare_data",
    "remove_run_files",
    "run_training",
]

# Files and folders `concatnets train` writes into a run folder (checkpoints aside).
RUN_FILES: tuple[str, ...] = (
    "config.json",
    "metrics.csv",
    "metrics.json",
    "learning_curves.png",
    "overlays",
    "tensorboard",
)
# Checkpoint pairs (and temporary files of interrupted saves) of last, best, epoch-NNNN.
_CHECKPOINT_FILE = re.compile(
    r"\.?(?:last|best|epoch-\d{4})(?:\.json|-[0-9a-f]{16}\.safetensors)(?:\..+\.tmp)?"
)


@dataclass
class PreparedData:
    """Datasets of a run and what was learned about the data.

    Args:
        data: The training data.
        train_set: Training samples.
        val_set: Validation samples (may be empty).
        size_policy: How samples are brought to one size, or ``None``.
        loss: The resolved loss name.
        statistics: Channel statistics of ``--normalization dataset``, else ``None``.
    """

    data: LabelledData
    train_set: LabelledDataset
    val_set: LabelledDataset
    size_policy: SizePolicy | None
    loss: str
    statistics: ChannelStatistics | None = None

    def summary(self) -> str:
        """One line: source, sizes, channels, classes and split."""
        data = self.data
        channels = "1 channel" if data.in_channels == 1 else f"{data.in_channels} channels"
        if data.spatial_dims == 3:
            samples = f"{len(data)} volumes (DxHxW {data.size_summary()})"
        else:
            samples = f"{len(data)} images ({data.size_summary()})"
        return (
            f"data: {data.address}, {samples}, {channels}, "
            f"{data.num_classes} classes ({', '.join(data.class_names)}); "
            f"train {len(self.train_set)} / val {len(self.val_set)}"
            + (f"; normalization {self.statistics.describe()}" if self.statistics else "")
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
    """``runs/<model>-<data>-<YYYYmmdd-HHMMSS>`` (``smp:Unet`` becomes ``smp_Unet``)."""
    data = config.data.replace("builtin:", "").rstrip("/").split("/")[-1] or "data"
    model = config.model.replace(":", "_")  # no colon in a folder name (Windows refuses it)
    return Path("runs") / f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


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
    if val.spatial_dims != data.spatial_dims:
        raise ValueError(
            f"--val-data {config.val_data} has {describe_dims(val.spatial_dims)} but --data "
            f"has {describe_dims(data.spatial_dims)}; validate on data of the same kind"
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
    check_samples(val)
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
    if mask_values is not None:
        _check_classes_consecutive(config.mask_values or "", mask_values)
    data = open_labelled_data(
        config.data,
        num_images=config.num_images,
        image_size=config.image_size,
        seed=config.seed,
        mask_values=mask_values,
        task=task,
    )
    check_model_fits_data(config.model, model_spatial_dims(config.model, config.model_args), data)
    check_samples(data)
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
    small = small_validation_message(
        len(val_indices),
        len(data),
        config.val_fraction,
        val_folder=config.val_data,
        kind="volume" if data.spatial_dims == 3 else "image",
    )
    if small:
        notice(small)
    loss = config.loss
    if loss == "auto":
        loss = "ce_dice" if task == "segmentation" else "ce"
    weight_map = None
    if loss == "weighted_ce" and data.spatial_dims == 3:
        raise ValueError(
            "--loss weighted_ce (the U-Net paper's border weights) is computed on 2-D images "
            "only; for volumes use --loss ce_dice (the default), dice or ce"
        )
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
    statistics = _normalization_statistics(config, data, train_indices)
    common: dict[str, Any] = dict(
        size_policy=policy,
        normalization=config.normalization,
        statistics=statistics,
        seed=config.seed,
        weight_map=weight_map,
    )
    train_set = LabelledDataset(data, train_indices, augment=augment, train=True, **common)
    val_set = LabelledDataset(val_data, val_indices, train=False, **common)
    return PreparedData(data, train_set, val_set, policy, loss, statistics)


def _normalization_statistics(
    config: TrainConfig, data: LabelledData, train_indices: list[int]
) -> ChannelStatistics | None:
    """The saved statistics (a resumed run keeps its own), else computed from the split."""
    if config.normalization != "dataset":
        return None
    if config.normalization_statistics is None:
        return channel_statistics(data, train_indices)
    saved = ChannelStatistics.from_json(config.normalization_statistics, "normalization_statistics")
    if len(saved.mean) != data.in_channels:
        raise ValueError(
            f"normalization_statistics hold {len(saved.mean)} channel(s) but the images in "
            f"{data.address} have {data.in_channels}; remove the setting to compute it again"
        )
    return saved


def _check_classes_consecutive(text: str, mapping: dict[int, int]) -> None:
    """Refuse a ``--mask-values`` map that leaves classes without any mask value."""
    classes = sorted(set(mapping.values()))
    if classes == list(range(len(classes))):
        return
    empty = sorted(set(range(classes[-1] + 1)) - set(classes))
    renumbered = {klass: index for index, klass in enumerate(classes)}
    example = ",".join(f"{value}:{renumbered[klass]}" for value, klass in mapping.items())
    raise ValueError(
        f"--mask-values {text} maps to classes {', '.join(map(str, classes))}, so class(es) "
        f"{', '.join(map(str, empty))} would have no pixels and the model "
        f"{classes[-1] + 1} outputs; number the classes 0..{len(classes) - 1}, "
        f"e.g. --mask-values {example}"
    )


def data_fingerprint(prepared: PreparedData) -> dict[str, Any]:
    """What identifies the samples a run trains and validates on: counts and a hash of
    their names in order (a resumed run compares it with its checkpoint's)."""
    digest = hashlib.sha256()
    for dataset in (prepared.train_set, prepared.val_set):
        names = (dataset.data.names[index] for index in dataset.indices)
        digest.update(b"\0".join(name.encode("utf-8") for name in names) + b"\1")
    return {
        "images": len(prepared.data),
        "train": len(prepared.train_set),
        "val": len(prepared.val_set),
        "sha256": digest.hexdigest(),
    }


def _notice_data_change(checkpoint: Checkpoint, fingerprint: dict[str, Any]) -> None:
    saved = checkpoint.metadata.get("data_fingerprint")
    if not isinstance(saved, dict) or saved.get("sha256") == fingerprint["sha256"]:
        return
    notice(
        f"the data differs from the data {checkpoint.path} was trained on "
        f"({saved.get('images')} images then, split {saved.get('train')} / {saved.get('val')}; "
        f"{fingerprint['images']} now, split {fingerprint['train']} / {fingerprint['val']}): "
        "the training continues on the new data, but its split and order differ, so some "
        "images used for training may now be validated and the result will not match an "
        "uninterrupted run; resume on the original data to avoid this"
    )


def model_kwargs_for(config: TrainConfig, data: LabelledData) -> dict[str, Any]:
    """Builder arguments: ``model_args`` plus channels and classes taken from the data.

    Args:
        config: The settings.
        data: The training data.
    """
    kwargs = dict(config.model_args)
    channels = kwargs.get("in_channels")
    if channels is not None and channels != data.in_channels:
        raise ValueError(
            f"model_args sets in_channels={channels} but the images in {data.address} have "
            f"{data.in_channels} channel(s); remove in_channels from model_args (it is taken "
            "from the data) or convert the images"
        )
    classes = kwargs.get("num_classes")
    if classes is not None and classes != data.num_classes:
        raise ValueError(
            f"model_args sets num_classes={classes} but the masks or class folders in "
            f"{data.address} hold {data.num_classes} classes (mask values 0..{data.num_classes - 1}"
            " after --mask-values); remove num_classes from model_args (it is taken from the "
            "data) or map the mask values with --mask-values VALUE:CLASS,..."
        )
    kwargs["in_channels"] = data.in_channels
    kwargs["num_classes"] = data.num_classes
    if config.memory_efficient is not None:
        kwargs["memory_efficient"] = config.memory_efficient
    return kwargs


def find_run_files(run_dir: Path) -> list[str]:
    """Names of the files in ``run_dir`` that a training run wrote (sorted)."""
    if not run_dir.is_dir():
        return []
    found = {name for name in RUN_FILES if (run_dir / name).exists()}
    found.update(path.name for path in run_dir.iterdir() if _CHECKPOINT_FILE.fullmatch(path.name))
    return sorted(found)


def remove_run_files(run_dir: Path) -> None:
    """Delete what a training run wrote into ``run_dir``; other files stay.

    Args:
        run_dir: A run folder.
    """
    for name in find_run_files(run_dir):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _check_resume_target(resume: Path, overwrite: bool) -> None:
    """Refuse a ``--resume`` folder that does not hold a resumable run (nothing written)."""
    if overwrite:
        raise ValueError(
            "--resume and --overwrite contradict each other; drop --overwrite to continue "
            f"the run in {resume}, or drop --resume to replace it"
        )
    if not resume.exists():
        raise FileNotFoundError(
            f"--resume {resume} does not exist; pass the run folder written by "
            "`concatnets train` (it holds config.json and last.json)"
        )
    if not resume.is_dir():
        raise NotADirectoryError(
            f"--resume {resume} is a file, not a run folder; pass the folder written by "
            "`concatnets train` (it holds config.json and last.json)"
        )
    if not (resume / "last.json").exists():
        started = (resume / "config.json").exists()
        raise FileNotFoundError(
            f"--resume {resume} holds no last.json checkpoint"
            + (
                " (the run stopped before it saved one); start it again with "
                f"--output {resume} --overwrite"
                if started
                else "; pass a run folder written by `concatnets train`"
            )
        )


def _check_output(run_dir: Path, overwrite: bool) -> None:
    """Refuse an ``--output`` folder that holds another run, unless overwriting."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--output {run_dir} is a file; choose a folder path for the run")
    existing = find_run_files(run_dir)
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise FileExistsError(
            f"run folder {run_dir} already holds a run ({shown}); continue it with "
            f"--resume {run_dir}, replace it with --overwrite, or choose another --output"
        )


def _check_resumable(checkpoint: Checkpoint, config: TrainConfig, ctx: DistributedContext) -> None:
    """Refuse setting changes a resumed run cannot honour, before anything is written."""
    saved = checkpoint.metadata.get("config", {})
    name = checkpoint.path
    if saved.get("optimizer") not in (None, config.optimizer):
        raise CheckpointError(
            f"--optimizer {config.optimizer} differs from the optimizer {saved['optimizer']} "
            f"whose state {name} holds; a resumed run keeps its optimizer: drop --optimizer, "
            "or start a new run with --init-weights"
        )
    try:
        state = TrainerState.from_json(checkpoint.metadata.get("trainer"))
        if checkpoint.metadata.get("epoch", state.epoch) != state.epoch:
            raise ValueError(
                f"its epoch {checkpoint.metadata.get('epoch')!r} differs from its trainer "
                f"state's {state.epoch}"
            )
        world = checkpoint.metadata.get("world_size", 1)
        if not (isinstance(world, int) and not isinstance(world, bool) and world >= 1):
            raise ValueError(f"its world_size {world!r} is not a process count")
        confusion = (state.partial or {}).get("confusion")
        classes = len(checkpoint.metadata.get("class_names") or [])
        if confusion is not None and (
            len(confusion) != classes or any(len(row) != classes for row in confusion)
        ):
            raise ValueError(f"its unfinished epoch's confusion matrix is not {classes}x{classes}")
    except ValueError as exc:
        raise CheckpointError(
            f"checkpoint {name} cannot be resumed: {exc}; it was damaged or edited; resume "
            "from another copy of the run folder or start again with --overwrite"
        ) from exc
    steps = state.epoch_step
    if steps:
        saved_batch = checkpoint.metadata.get("batch_size", saved.get("batch_size"))
        saved_world = int(checkpoint.metadata.get("world_size", 1))
        if saved_batch != config.batch_size or saved_world != ctx.world_size:
            raise CheckpointError(
                f"{name} was saved in the middle of epoch {state.epoch + 1} "
                f"(after {steps} steps of --batch-size {saved_batch} on {saved_world} "
                f"process(es)); resume it with the same --batch-size and number of processes "
                f"(this run: --batch-size {config.batch_size} on {ctx.world_size})"
            )
    saved_world = int(checkpoint.metadata.get("world_size", ctx.world_size))
    if saved_world != ctx.world_size and ctx.is_main:
        notice(
            f"{name} was trained on {saved_world} process(es), this run has {ctx.world_size}: "
            "the effective batch changes, so the result will differ from an uninterrupted run"
        )


def _apply_changed_hyperparameters(
    trainer: Trainer, checkpoint: Checkpoint, config: TrainConfig
) -> bool:
    """Put a resumed run's new ``--lr`` / ``--weight-decay`` into the restored optimizer.

    Returns:
        Whether the learning rate changed (the schedule must then be rebuilt).
    """
    saved = checkpoint.metadata.get("config", {})
    lr_changed = saved.get("lr") not in (None, config.lr)
    decay_changed = saved.get("weight_decay", config.weight_decay) != config.weight_decay
    decay = None
    if decay_changed:  # None means the optimizer's own default
        probe = build_optimizer(
            config.optimizer,
            [torch.nn.Parameter(torch.zeros(1))],
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        decay = probe.param_groups[0]["weight_decay"]
    for group in trainer.optimizer.param_groups:
        if lr_changed:
            group["initial_lr"] = config.lr
        if decay is not None:
            group["weight_decay"] = decay
    return lr_changed


def _restore(trainer: Trainer, checkpoint: Checkpoint, config: TrainConfig) -> bool:
    """Restore ``checkpoint`` into ``trainer`` and apply changed hyperparameters.

    Returns:
        Whether the schedule must be rebuilt (new length or new learning rate).
    """
    same_length = checkpoint.metadata.get("config", {}).get("epochs") == config.epochs
    try:  # the engine computes as the interrupted run did (timed choices, see engine.choices)
        restore_engine_choices(checkpoint.metadata.get("engine_choices") or {})
    except (ValueError, AttributeError) as exc:
        raise ValueError(
            f"checkpoint {checkpoint.path} has unreadable engine choices ({exc}); it was "
            "damaged or edited; remove its 'engine_choices' entry to let the engine choose again"
        ) from exc
    trainer.restore(checkpoint, scheduler=same_length)
    lr_changed = _apply_changed_hyperparameters(trainer, checkpoint, config)
    return lr_changed or not same_length


def _prepare_run_folder(run_dir: Path, config: TrainConfig, *, overwrite: bool) -> None:
    """Just before a run's first write: drop the replaced run's files, write config.json."""
    if overwrite:
        remove_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_temporary_files(run_dir)
    if removed:
        notice(f"removed {len(removed)} temporary file(s) of interrupted writes from {run_dir}")
    write_config(config, run_dir / "config.json")


def _repair_run_folder(run_dir: Path, checkpoint: Checkpoint, trainer: Trainer) -> None:
    """Rewrite the records of the epoch ``last.json`` committed that a kill left stale."""
    removed = remove_temporary_files(run_dir)
    rewritten = repair_checkpoints(
        run_dir, checkpoint, trainer.keep_epochs, before_write=trainer.prepare_folder
    )
    if not metrics_files_match(run_dir, trainer.state.history):
        trainer.rewrite_metrics()
        rewritten += ["metrics.csv", "metrics.json"]
    if rewritten:
        notice(
            f"{run_dir} was interrupted after its last checkpoint was committed; rewrote "
            f"{', '.join(rewritten)} from last.json (epoch {trainer.state.epoch})"
        )
    if removed:
        notice(f"removed {len(removed)} temporary file(s) of interrupted writes from {run_dir}")


def _load_initial_weights(model: torch.nn.Module, path: str, architecture: str) -> None:
    # Hub DenseNet files of old torchvision name dense-layer keys norm.1, conv.1, ...
    weights = rename_legacy_densenet_keys(
        load_model_weights(path), unwrap_model(model).state_dict()
    )
    check_compatible(Checkpoint(weights, None, None, {}, {}, Path(path)), model, architecture)
    unwrap_model(model).load_state_dict(weights)


def _check_sync_batchnorm(config: TrainConfig, kwargs: dict[str, Any]) -> None:
    if config.sync_batchnorm and kwargs.get("memory_efficient") is True:
        raise ValueError(
            "--sync-batchnorm does not reach the batch norm of --memory-efficient models (the "
            "memory engine computes statistics per process); drop one of the two"
        )


def run_training(
    config: TrainConfig, *, resume: str | Path | None = None, overwrite: bool = False
) -> TrainResult:
    """Train as ``config`` says; with ``resume`` continue the run in that folder.

    Args:
        config: The settings (for a resume: the run's ``config.json`` with any overrides).
        resume: A run folder holding ``last.json``.
        overwrite: Replace a run already in ``config.output`` (its files are deleted once
            every check has passed, just before the new run writes its first file).
    """
    resume_dir = Path(resume) if resume is not None else None
    validate_config(config)
    spec = get_model_spec(config.model)
    check_model_args(config.model, config.model_args)
    if spec.task not in ("segmentation", "classification"):
        raise ValueError(f"model {config.model!r} has unsupported task {spec.task!r}")
    if resume_dir is not None:
        _check_resume_target(resume_dir, overwrite)
        run_dir = resume_dir
    else:
        run_dir = Path(config.output) if config.output else default_run_dir(config)
        if run_dir.exists() and not run_dir.is_dir():
            raise NotADirectoryError(
                f"--output {run_dir} is a file; choose a folder path for the run"
            )
    # Only rank 0 writes the folder; under torchrun the others must not contend for it.
    main_process = os.environ.get("RANK", "0") == "0"
    again = f"--resume {run_dir}" if resume_dir is not None else "run again"
    with locked_run_folder(run_dir, enabled=main_process, purpose=again):
        if resume_dir is None:
            _check_output(run_dir, overwrite)
        return _train_in_folder(config, spec.task, run_dir, resume_dir, overwrite)


def _train_in_folder(
    config: TrainConfig, task: str, run_dir: Path, resume_dir: Path | None, overwrite: bool
) -> TrainResult:
    """The body of :func:`run_training`, run while this process holds the folder's lock."""
    ctx: DistributedContext = init_distributed(None if config.device == "auto" else config.device)
    determinism = _determinism_settings()
    try:
        if config.deterministic:
            configure_determinism(True)
        seed_everything(config.seed)
        prepared = prepare_data(config, task)
        workers = config.workers
        if workers is None:
            workers = 4 if ctx.device.type == "cuda" else 0
        statistics = prepared.statistics
        config = replace(
            config,
            output=str(run_dir),
            workers=workers,
            normalization_statistics=statistics.to_json() if statistics else None,
        )
        data = prepared.data
        kwargs = model_kwargs_for(config, data)
        _check_sync_batchnorm(config, kwargs)
        model = create_model(config.model, **kwargs)
        report = conversion_report(model)
        if report is not None and ctx.is_main:
            print(f"concatnets.memory_efficient({config.model}): {report}", flush=True)
        if config.init_weights and resume_dir is None:
            _load_initial_weights(model, config.init_weights, config.model)
        model = wrap_model(model, ctx, sync_batchnorm=config.sync_batchnorm)
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
            "task": task,
            "class_names": list(data.class_names),
            "in_channels": data.in_channels,
            "normalization": config.normalization,
            "normalization_statistics": config.normalization_statistics,
            "mask_values": data.value_map.to_json() if data.value_map is not None else None,
            "size_policy": (
                {"mode": prepared.size_policy.mode, "size": list(prepared.size_policy.size)}
                if prepared.size_policy is not None
                else None
            ),
            "loss": prepared.loss,
            "data_fingerprint": data_fingerprint(prepared),
            "config": config_to_dict(config),
        }
        trainer = Trainer(
            model,
            task=task,
            class_names=data.class_names,
            loss_fn=build_loss(prepared.loss, task, label_smoothing=config.label_smoothing),
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
            prepare_folder=functools.partial(
                _prepare_run_folder, run_dir, config, overwrite=overwrite
            ),
        )
        if resume_dir is not None:
            checkpoint = load_checkpoint(resume_dir)
            check_compatible(checkpoint, model, config.model)
            _check_resumable(checkpoint, config, ctx)
            if ctx.is_main:
                _notice_data_change(checkpoint, metadata["data_fingerprint"])
            check_optimizer_state(checkpoint, optimizer, unwrap_model(model))
            if _restore(trainer, checkpoint, config):
                trainer.replay_schedule(
                    functools.partial(
                        build_scheduler,
                        config.schedule,
                        epochs=config.epochs,
                        step_size=config.step_size,
                        gamma=config.gamma,
                    )
                )
        # Every check has passed. The folder is first written when the first checkpoint is
        # saved (trainer.prepare_folder): a run that fails before then leaves it untouched.
        if ctx.is_main:
            print(prepared.summary(), flush=True)
            print(
                f"model: {config.model} ({sum(p.numel() for p in model.parameters()):,} "
                f"parameters) on {ctx.device}"
                + (f" x {ctx.world_size} processes" if ctx.is_distributed else "")
                + f"; loss {prepared.loss}; run folder {run_dir}",
                flush=True,
            )
            if resume_dir is not None:
                _repair_run_folder(run_dir, checkpoint, trainer)
                position = f"epoch {trainer.state.epoch}"
                if trainer.state.epoch_step:
                    position += f" and {trainer.state.epoch_step} steps of epoch "
                    position += str(trainer.state.epoch + 1)
                print(f"resuming after {position} from {resume_dir / 'last.json'}", flush=True)
        state = trainer.fit(config.epochs)
        trainer.write_overlays(config.overlays)
        barrier(ctx)  # leave the process group together (gloo dislikes peers vanishing early)
        return TrainResult(run_dir, state, trainer.monitor, config, ctx.is_main)
    finally:
        _restore_determinism_settings(determinism)
        cleanup_distributed(ctx)


def _determinism_settings() -> tuple[bool, bool, bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def _restore_determinism_settings(settings: tuple[bool, bool, bool, bool]) -> None:
    """Put back the global switches ``--deterministic`` changed (for library callers)."""
    enabled, warn_only, cudnn_deterministic, cudnn_benchmark = settings
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark
