"""``concatnets evaluate``: metrics and a confusion matrix for a trained model."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from concatnets.cli.common import (
    HelpFormatter,
    add_data_source_arguments,
    describe,
    epilog,
    resolve_device,
)
from concatnets.cli.predict_command import DEFAULT_TILE_SIZE, check_tile_size
from concatnets.cli.tiled_forward import TiledForward
from concatnets.data.datasets import LabelledDataset
from concatnets.data.masks import parse_mask_values
from concatnets.data.notices import channel_conversion_notice, notice
from concatnets.data.sources import LabelledData, open_labelled_data
from concatnets.data.split import split_indices
from concatnets.data.transforms import SizePolicy
from concatnets.training.dimensions import check_model_fits_data
from concatnets.training.evaluation import evaluate_model
from concatnets.training.loading import TrainedModel, load_trained_model
from concatnets.training.losses import crop_to_output
from concatnets.training.plots import plot_confusion_matrix, save_overlay_panel

__all__ = ["add_parser", "open_evaluation_data", "run"]


def _saved_mask_values(trained: TrainedModel) -> dict[int, int] | None:
    saved = trained.metadata.get("mask_values")
    return {int(k): int(v) for k, v in saved.items()} if saved else None


def _same_source(address: str, other: str | None) -> bool:
    if other is None:
        return False
    if address.startswith("builtin:") or other.startswith("builtin:"):
        return address == other
    return Path(address).expanduser().resolve() == Path(other).expanduser().resolve()


def open_evaluation_data(
    args: argparse.Namespace, trained: TrainedModel
) -> tuple[LabelledData, list[int], str]:
    """The data to evaluate on: ``--data`` (all of it) or the run's validation split.

    Returns:
        ``(data, indices, description)``.
    """
    config = trained.config
    mask_values = (
        parse_mask_values(args.mask_values) if args.mask_values else _saved_mask_values(trained)
    )
    trained_on = config.get("data")
    separate_val = config.get("val_data")
    address = args.data or separate_val or trained_on
    if address is None:
        raise ValueError(f"{trained.checkpoint} does not record its training data; pass --data")
    run_seed = int(config.get("seed", 0))
    same_generation = all(
        getattr(args, key) in (None, config.get(key)) for key in ("num_images", "image_size")
    )
    if _same_source(address, trained_on) and not separate_val and same_generation:
        default_seed, default_split = run_seed, "val"
    elif _same_source(address, separate_val):
        default_seed, default_split = run_seed + 1, "all"  # as training opened --val-data
    else:
        # Built-in data from another seed: fresh images the model has never seen.
        default_seed, default_split = run_seed + 1, "all"
    seed = args.seed if args.seed is not None else default_seed
    split = args.split or default_split
    data = open_labelled_data(
        address,
        num_images=args.num_images or int(config.get("num_images", 64)),
        image_size=args.image_size or config.get("image_size"),
        seed=seed,
        mask_values=mask_values,
        task=trained.task,
    )
    check_model_fits_data(trained.architecture, trained.spatial_dims, data)
    _check_classes(data, trained)
    _match_model_channels(data, trained)
    if split == "val":
        _, indices = split_indices(
            len(data), float(config.get("val_fraction", 0.2)), seed, labels=data.labels
        )
        if not indices:
            raise ValueError(
                "the run has no validation split (val_fraction 0); pass --data or --split all"
            )
    else:
        indices = list(range(len(data)))
    return data, indices, f"{data.address} ({split} split, {len(indices)} image(s))"


def _check_classes(data: LabelledData, trained: TrainedModel) -> None:
    names = trained.class_names
    folder = not data.address.startswith("builtin:")
    if data.task == "classification" and folder and data.class_names != names:
        raise ValueError(
            f"{data.address} has class folders {data.class_names} but the model was "
            f"trained on {names}; use the same class folder names"
        )
    if data.num_classes > len(names):
        raise ValueError(
            f"{data.address} has {data.num_classes} classes but the model predicts "
            f"{len(names)}; pass --mask-values to map the masks to 0..{len(names) - 1}"
        )
    data.class_names = list(names)


def _match_model_channels(data: LabelledData, trained: TrainedModel) -> None:
    """Feed 2-D images with the model's channel count (as predict does), saying so."""
    if data.spatial_dims == 2 and data.in_channels != trained.in_channels:
        channel_conversion_notice([data.in_channels], trained.in_channels)
        data.in_channels = trained.in_channels


def _size_policy(trained: TrainedModel) -> SizePolicy | None:
    saved = trained.metadata.get("size_policy")
    if saved and saved.get("mode") == "resize":
        return SizePolicy("resize", tuple(int(v) for v in saved["size"]))
    return None


def _print_metrics(metrics: dict[str, float]) -> None:
    headline = [k for k in ("dice", "iou", "pixel_accuracy", "top1", "top5") if k in metrics]
    print("  ".join(f"{k} {metrics[k]:.4f}" for k in headline))
    for key, value in metrics.items():
        if key not in headline:
            shown = f"{value:.4f}" if math.isfinite(value) else "n/a (class absent)"
            print(f"  {key:<28} {shown}")


def run(args: argparse.Namespace) -> int:
    """Evaluate a run folder or checkpoint and write metrics.json + confusion_matrix.png."""
    device = resolve_device(args.device)
    trained = load_trained_model(args.run, device, which=args.which)
    data, indices, description = open_evaluation_data(args, trained)
    policy = _size_policy(trained)
    batch_size = args.batch_size
    if policy is None and len({data.sizes[i] for i in indices}) > 1:
        notice("images differ in size: evaluating one image at a time at native size")
        batch_size = 1
    dataset = LabelledDataset(
        data,
        indices,
        size_policy=policy,
        normalization=trained.normalization,
        statistics=trained.normalization_statistics,
        train=False,
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=args.workers)
    model = trained.model
    tile_size = _tile_size(args, trained)
    if trained.task == "segmentation":
        model = TiledForward(trained.model, tile_size, batch_size=args.batch_size)
    result = evaluate_model(
        model,
        loader,
        task=trained.task,
        class_names=trained.class_names,
        device=device,
        bf16=args.bf16,
        progress=args.progress,
    )
    output = Path(args.output) if args.output else trained.checkpoint.parent / "evaluation"
    output.mkdir(parents=True, exist_ok=True)
    epoch = trained.metadata.get("epoch")
    print(f"evaluated {trained.checkpoint.name} (epoch {epoch}) on {description}")
    _print_metrics(result.metrics)
    if isinstance(model, TiledForward) and model.tiled:
        print(f"  {model.tiled} image(s) with a side above {tile_size} px evaluated tile by tile")
    summary = {
        "checkpoint": str(trained.checkpoint),
        "epoch": epoch,
        "data": description,
        "num_samples": result.num_samples,
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()},
        "class_names": trained.class_names,
        "confusion_matrix": result.confusion.tolist(),
    }
    (output / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_confusion_matrix(
        result.confusion.numpy(), trained.class_names, output / "confusion_matrix.png"
    )
    if isinstance(model, TiledForward) and args.overlays > 0:
        _write_overlays(trained, model, dataset, device, args.overlays, output / "overlays")
    print(f"wrote {output / 'metrics.json'} and {output / 'confusion_matrix.png'}")
    return 0


def _tile_size(args: argparse.Namespace, trained: TrainedModel) -> int:
    check_tile_size(args.tile_size)
    return args.tile_size or DEFAULT_TILE_SIZE[trained.spatial_dims]


def _write_overlays(
    trained: TrainedModel,
    model: TiledForward,
    dataset: LabelledDataset,
    device: torch.device,
    count: int,
    directory: Path,
) -> None:
    with torch.no_grad():
        for position in range(min(count, len(dataset))):
            item = dataset[position]
            logits = model(item["image"][None].to(device))
            prediction = logits.argmax(1)[0].cpu()
            target = crop_to_output(item["target"], tuple(prediction.shape))
            image = crop_to_output(item["image"], tuple(prediction.shape))
            name = dataset.data.names[dataset.indices[position]].replace("/", "_")
            save_overlay_panel(
                directory / f"{name}.png",
                image.numpy(),
                prediction.numpy(),
                len(trained.class_names),
                target=np.where(target.numpy() < 0, 0, target.numpy()),
                class_names=trained.class_names,
            )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the main CLI."""
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics and confusion matrix of a trained model on labelled data",
        description=describe(
            """
            Evaluate a trained model (a run folder: its best checkpoint; or a checkpoint
            .json). Without --data, or with exactly the run's own data, it uses the
            run's validation split; with other data it uses all of it (built-in sets are
            then generated with the run's seed + 1, so the images are new). Writes
            metrics.json, confusion_matrix.png and, for segmentation, overlays/ into
            --output (default: RUN/evaluation).
            """
        ),
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets evaluate runs/unet_small-cells-20250101-120000",
            "concatnets evaluate runs/my-run --data my_test_data/ --output results/",
            "concatnets evaluate runs/my-run/last.json --data builtin:cells --num-images 32",
            "concatnets evaluate runs/my-unet3d-run --data my_volumes/   # .npy (D, H, W) volumes",
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run folder or checkpoint .json")
    add_data_source_arguments(parser, default_note="default: the run's validation split")
    parser.add_argument(
        "--split",
        choices=("val", "all"),
        help="val: the run's validation split; all: every image (default: val without "
        "--data, all with it)",
    )
    parser.add_argument(
        "--which", choices=("best", "last"), default="best", help="checkpoint of a run folder"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images (or tiles) per pass (default: 8)"
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="segmentation images with a side above this are evaluated tile by tile, as "
        "predict does (default: 512; 96 for volumes)",
    )
    parser.add_argument("--workers", type=int, default=0, help="data loader workers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--output", metavar="DIR", help="output folder")
    parser.add_argument(
        "--overlays", type=int, default=4, help="overlay PNGs to write (default: 4)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar, shown when stderr is a terminal",
    )
    parser.set_defaults(func=run)
    return parser
