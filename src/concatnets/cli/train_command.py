"""``concatnets train``: train a model on built-in data or an image folder."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

from concatnets.cli.common import HelpFormatter, describe, epilog
from concatnets.data.transforms import NORMALIZATIONS, SIZE_POLICIES
from concatnets.training.checkpoint import CheckpointError, read_checkpoint_metadata
from concatnets.training.config import (
    TrainConfig,
    apply_settings,
    load_config_file,
    parse_model_arg,
)
from concatnets.training.losses import SEGMENTATION_LOSSES
from concatnets.training.optim import OPTIMIZERS, SCHEDULES
from concatnets.training.runner import TrainResult, run_training

__all__ = ["add_parser", "add_train_arguments", "config_from_args", "report", "run"]

_DEFAULTS = TrainConfig()
_NOT_SETTINGS = {"command", "func", "config", "resume", "overwrite", "model_arg"}


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    return f" (default: {value})" if value not in (None, "", {}) else ""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every training setting as a flag whose default is "not given".

    Unset flags leave the config file's (or the built-in) value in place.
    """
    s = argparse.SUPPRESS
    parser.add_argument("--config", metavar="FILE", help="settings file: .toml, .yaml or .json")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (its config.json "
        "is loaded; flags such as --epochs override it)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --output (its checkpoints, metrics and plots are "
        "deleted once every check has passed); without it such a folder is refused",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="NAME",
        default=s,
        help="registry name, or a third-party LIBRARY:NAME (torchvision:densenet121, "
        "timm:densenet121, monai:BasicUNet, smp:Unet)" + _default("model"),
    )
    model.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        default=s,
        help="builder argument, repeatable, e.g. --model-arg features=32 --model-arg depth=3",
    )
    model.add_argument(
        "--memory-efficient",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="build the model with memory_efficient=True (shared concatenation buffers, "
        "recomputed batch norm); default: the model's own setting",
    )
    model.add_argument(
        "--init-weights",
        metavar="FILE",
        default=s,
        help="start from these weights: a concatnets checkpoint or run folder, a "
        ".safetensors file, or a PyTorch .pth/.pt state dict (read with "
        "torch.load(weights_only=True), never running code from the file)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=s,
        metavar="SOURCE",
        help="builtin:cells, builtin:cells3d (3-D volumes), builtin:shapes, or a folder with "
        "images/ + masks/ (segmentation; .npy (D, H, W) arrays are volumes) or one sub-folder "
        "per class" + _default("data"),
    )
    data.add_argument("--val-data", default=s, metavar="FOLDER", help="separate validation set")
    data.add_argument(
        "--num-images",
        metavar="N",
        type=int,
        default=s,
        help="built-in set size" + _default("num_images"),
    )
    data.add_argument(
        "--image-size",
        metavar="PX",
        type=int,
        default=s,
        help="built-in image side (default: 64 for cells, 32 for cells3d volumes and shapes)",
    )
    data.add_argument(
        "--val-fraction",
        metavar="F",
        type=float,
        default=s,
        help="held-out share" + _default("val_fraction"),
    )
    data.add_argument(
        "--mask-values",
        default=s,
        metavar="MAP",
        help="stored mask value -> class, e.g. 0:0,255:1 (default: 0/255 masks become 0/1, "
        "other values are class indices)",
    )
    data.add_argument(
        "--size-policy",
        choices=SIZE_POLICIES,
        default=s,
        help="how to batch images of different sizes (required when sizes differ)",
    )
    data.add_argument(
        "--patch-size",
        type=int,
        default=s,
        metavar="PX",
        help="target side for --size-policy, on every axis (default: most common size for "
        "resize, largest for pad, smallest for crop)",
    )
    data.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default=s,
        help="dataset: per-channel mean/std of the training split, computed once and kept in "
        "the run (keeps colour and brightness); image: each image to zero mean/unit variance "
        "on its own; unit: [0, 1]" + _default("normalization"),
    )
    data.add_argument(
        "--augment",
        default=s,
        metavar="LIST",
        help="comma list of flip, rot90, elastic, or none; volumes flip along every axis and "
        "turn in random planes" + _default("augment"),
    )
    data.add_argument(
        "--elastic-sigma",
        metavar="PX",
        type=float,
        default=s,
        help="elastic displacement std in px (U-Net paper: 10)" + _default("elastic_sigma"),
    )
    data.add_argument(
        "--elastic-probability",
        metavar="P",
        type=float,
        default=s,
        help="share of samples deformed" + _default("elastic_probability"),
    )
    loss = parser.add_argument_group("loss")
    loss.add_argument(
        "--loss",
        choices=("auto", *SEGMENTATION_LOSSES),
        default=s,
        help="auto: ce_dice for segmentation, ce for classification; weighted_ce: the U-Net "
        "paper's border-weighted cross-entropy",
    )
    loss.add_argument(
        "--border-w0", metavar="W", type=float, default=s, help="weighted_ce w0 (default: 10)"
    )
    loss.add_argument(
        "--border-sigma",
        metavar="PX",
        type=float,
        default=s,
        help="weighted_ce sigma in px (default: 5)",
    )
    loss.add_argument(
        "--label-smoothing", metavar="E", type=float, default=s, help="cross-entropy smoothing"
    )
    optim = parser.add_argument_group("optimization")
    optim.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=s, help="optimizer" + _default("optimizer")
    )
    optim.add_argument(
        "--lr", metavar="LR", type=float, default=s, help="learning rate" + _default("lr")
    )
    optim.add_argument(
        "--weight-decay",
        metavar="WD",
        type=float,
        default=s,
        help="default: 0 (sgd, adam), 0.01 (adamw)",
    )
    optim.add_argument(
        "--momentum", metavar="M", type=float, default=s, help="sgd momentum (default: 0.9)"
    )
    optim.add_argument(
        "--schedule", choices=SCHEDULES, default=s, help="per-epoch schedule" + _default("schedule")
    )
    optim.add_argument(
        "--step-size", metavar="EPOCHS", type=int, default=s, help="epochs per step decay"
    )
    optim.add_argument(
        "--gamma", metavar="G", type=float, default=s, help="step decay factor (default: 0.1)"
    )
    optim.add_argument(
        "--epochs", metavar="N", type=int, default=s, help="epochs" + _default("epochs")
    )
    optim.add_argument(
        "--batch-size", metavar="N", type=int, default=s, help="batch size" + _default("batch_size")
    )
    optim.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="bfloat16 autocast (default: off)",
    )
    optim.add_argument(
        "--sync-batchnorm",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="under torchrun on GPUs: batch-norm statistics over the global batch "
        "(SyncBatchNorm; default: off, each process normalizes its own share)",
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--device", metavar="DEVICE", default=s, help="auto, cpu, cuda, cuda:N (default: auto)"
    )
    run_group.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=s,
        help="data loader workers (default: 0 CPU, 4 GPU)",
    )
    run_group.add_argument(
        "--seed", metavar="N", type=int, default=s, help="seed" + _default("seed")
    )
    run_group.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="deterministic GPU kernels, slower (CPU runs repeat exactly anyway; "
        "see docs/training.md)",
    )
    run_group.add_argument(
        "--output",
        default=s,
        metavar="RUN_DIR",
        help="run folder (default: runs/<model>-<data>-<time>)",
    )
    run_group.add_argument(
        "--keep-epochs",
        type=int,
        default=s,
        metavar="N",
        help="also keep the last N per-epoch checkpoints (default: 0; last and best are kept)",
    )
    run_group.add_argument(
        "--overlays",
        metavar="N",
        type=int,
        default=s,
        help="validation overlay PNGs" + _default("overlays"),
    )
    run_group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=s,
        help="progress bars, shown when stderr is a terminal (default: on)",
    )


def _saved_settings(run_dir: Path) -> tuple[dict[str, Any], str]:
    """The settings a run folder's last checkpoint was trained with (else its config.json).

    The checkpoint's own copy is authoritative: ``config.json`` records the latest start,
    which may have failed before saving anything (e.g. a resume that diverged).
    """
    if not run_dir.exists():
        raise FileNotFoundError(
            f"--resume {run_dir} does not exist; pass the run folder written by "
            "`concatnets train` (it holds config.json and last.json)"
        )
    last = run_dir / "last.json"
    if last.exists():
        try:
            settings = read_checkpoint_metadata(last).get("config")
        except CheckpointError:
            settings = None  # run_training reports the damaged checkpoint
        if isinstance(settings, dict):
            return settings, str(last)
    saved = run_dir / "config.json"
    if not saved.exists():
        raise FileNotFoundError(
            f"--resume {run_dir} holds no config.json; pass a run folder written by "
            "`concatnets train`"
        )
    return load_config_file(saved), str(saved)


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults (or ``base``), then ``--resume``'s config, ``--config``, then flags.

    Args:
        args: Parsed ``train`` arguments.
        base: Settings to start from instead of the defaults (e.g. the demo preset).
    """
    config = base or TrainConfig()
    resume = getattr(args, "resume", None)
    if resume:
        settings, source = _saved_settings(Path(resume))
        config = apply_settings(config, settings, source)
    if getattr(args, "config", None):
        config = apply_settings(config, load_config_file(args.config), f"--config {args.config}")
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    if "model_arg" in vars(args):
        flags["model_args"] = dict(parse_model_arg(item) for item in args.model_arg)
    config = apply_settings(config, flags, "command line")
    if resume:
        config = dataclasses.replace(config, output=str(resume))
    return config


def report(result: TrainResult) -> None:
    """Print where the run's outputs are and its best result."""
    state = result.state
    best = state.best_metric
    best_text = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else "n/a"
    print(
        f"done: best {result.monitor} {best_text} at epoch {state.best_epoch}; "
        f"outputs in {result.run_dir} (config.json, metrics.csv, learning_curves.png, "
        "best.json, last.json)"
    )


def run(args: argparse.Namespace) -> int:
    """Train as the flags and config file say.

    A failed write (a full disk while saving) prints one ``error:`` line and returns 2;
    the checkpoint protocol has kept the previous checkpoint intact.
    """
    config = config_from_args(args)
    try:
        result = run_training(config, resume=args.resume, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, NotADirectoryError):
        raise  # our own one-line messages; the CLI prints them
    except OSError as exc:
        if os.environ.get("CONCATNETS_DEBUG", "") not in ("", "0"):
            raise
        message = exc.strerror or str(exc)
        if exc.filename and exc.filename not in message:
            message = f"{exc.filename}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    if result.is_main:
        report(result)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the main CLI."""
    parser = subparsers.add_parser(
        "train",
        help="train a model on built-in data or your image folder",
        description=describe(
            """
            Train a model. Settings come from the defaults, then --config FILE, then
            flags (flags win). The run folder receives config.json (the resolved
            settings, reusable with --config), checkpoints last.json/best.json
            (safetensors weights), metrics.csv/metrics.json, learning_curves.png and
            validation overlays.

            Folder layouts: DIR/images/*.png + DIR/masks/*.png (segmentation, matched
            by file stem; PNG, JPEG, TIFF or NPY) or DIR/<class>/*.png (classification).
            3-D volumes: DIR/images/*.npy holding (D, H, W) or (D, H, W, C) arrays and
            DIR/masks/*.npy holding (D, H, W) integer masks; train them with a 3-D model
            such as unet3d.
            """
        ),
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets train --model unet_small --data builtin:cells --epochs 5",
            "concatnets train --model unet --data my_data/ --size-policy crop --patch-size 256",
            "concatnets train --model densenet_bc --model-arg depth=40 --data builtin:shapes",
            "concatnets train --model unet3d --data builtin:cells3d --epochs 5",
            "concatnets train --config examples/cells_unet_small.toml --lr 3e-3",
            "concatnets train --resume runs/unet_small-cells-20250101-120000 --epochs 20",
            "torchrun --nproc_per_node=2 -m concatnets.cli.main train --data my_data/ --model unet",
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)
    return parser
