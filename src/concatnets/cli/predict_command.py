"""``concatnets predict``: masks and overlays (segmentation) or labels (classification)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from concatnets.cli.common import HelpFormatter, describe, epilog, resolve_device
from concatnets.data.datasets import load_input_tensor
from concatnets.data.folders import find_input_images
from concatnets.data.io import read_image, write_mask_png
from concatnets.data.notices import notice
from concatnets.training.loading import TrainedModel, load_trained_model
from concatnets.training.plots import save_overlay_panel

__all__ = ["add_parser", "predict_logits", "run", "tile_size_for"]

_FORMATS = ("png", "npy")


def tile_size_for(model: torch.nn.Module, requested: int) -> int:
    """The tile side nearest ``requested`` (not above it where possible) the model accepts.

    Valid-padding U-Nets take only certain sizes; same-padding ones want a multiple of
    ``2**depth`` so that tiles line up with the pooling grid.

    Args:
        model: The model (its ``padding`` and ``depth`` attributes are read if present).
        requested: The ``--tile-size`` value.
    """
    depth = int(getattr(model, "depth", 0) or 0)
    if getattr(model, "padding", "same") == "valid":
        from concatnets.models.unet import nearest_valid_input_sizes

        below, above = nearest_valid_input_sizes(requested, depth)
        return below if below is not None else above
    step = 2**depth
    return max(step, requested - requested % step)


@torch.no_grad()
def predict_logits(
    trained: TrainedModel,
    image: np.ndarray,
    *,
    tile_size: int,
    overlap: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> Tensor:
    """Logits for one stored image: ``(C, H, W)`` for segmentation, ``(C,)`` otherwise.

    Images larger than ``tile_size`` on a side, and every image for valid-padding
    U-Nets, go through :func:`concatnets.inference.predict_tiled`. Models trained with
    the ``resize`` size policy see the image resized as in training, and their
    segmentation logits are resized back.

    Args:
        trained: The loaded model.
        image: ``(H, W)`` or ``(H, W, 3)`` image as read from disk.
        tile_size: Largest side predicted in one pass.
        overlap: Tile overlap for same-padding models (default: a quarter tile).
        batch_size: Tiles per forward pass.
        progress: Progress bar over tiles.
    """
    model = trained.model
    device = next(model.parameters()).device
    x = load_input_tensor(image, trained.in_channels, trained.normalization)[None]  # (1, C, H, W)
    original = tuple(x.shape[-2:])
    saved_policy = trained.metadata.get("size_policy") or {}
    resized = saved_policy.get("mode") == "resize"
    if resized:
        size = tuple(int(v) for v in saved_policy["size"])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if trained.task == "classification":
        return model(x.to(device)).float()[0].cpu()
    valid = getattr(model, "padding", "same") == "valid"
    if valid or max(x.shape[-2:]) > tile_size:
        from concatnets.inference import predict_tiled

        tile = tile_size_for(model, tile_size)
        logits = predict_tiled(
            model,
            x,
            tile_size=tile,
            overlap=None if valid else overlap,
            batch_size=batch_size,
            progress=progress,
        )
    else:
        logits = model(x.to(device)).cpu()
    logits = logits.float()
    if resized:
        logits = F.interpolate(logits, size=original, mode="bilinear", align_corners=False)
    return logits[0]


def _stored_values(trained: TrainedModel) -> np.ndarray | None:
    """Class -> smallest stored mask value mapping to it, from the training run's map."""
    saved = trained.metadata.get("mask_values")
    if not saved:
        return None
    table = np.arange(len(trained.class_names), dtype=np.int64)
    for stored, klass in sorted(((int(k), int(v)) for k, v in saved.items()), reverse=True):
        if klass < len(table):
            table[klass] = stored
    return table


def _unique_stems(files: list[Path]) -> list[str]:
    seen: set[str] = set()
    stems = []
    for path in files:
        stem = path.stem if path.stem not in seen else path.name.replace(".", "_")
        seen.add(stem)
        stems.append(stem)
    return stems


def _parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format {text!r}: choose one or more of {', '.join(_FORMATS)}")
    return formats


def run(args: argparse.Namespace) -> int:
    """Predict every input image and write the results."""
    formats = _parse_formats(args.format)
    if args.tile_size < 16:
        raise ValueError(f"--tile-size {args.tile_size} is too small; use at least 16")
    device = resolve_device(args.device)
    trained = load_trained_model(args.run, device, which=args.which)
    files = find_input_images(Path(args.input))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    stored = _stored_values(trained) if args.original_values else None
    if args.original_values and stored is None:
        notice("the model's training masks were class indices already; writing class indices")
    rows = []
    tiled = 0
    for path, stem in tqdm(
        list(zip(files, _unique_stems(files), strict=True)),
        desc="predict",
        disable=None if args.progress and len(files) > 1 else True,  # None: on a terminal
    ):
        image = read_image(path)
        logits = predict_logits(
            trained,
            image,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
        )
        if trained.task == "classification":
            probabilities = logits.softmax(0)
            best = int(probabilities.argmax())
            rows.append((str(path), trained.class_names[best], float(probabilities[best])))
            continue
        tiled += max(image.shape[:2]) > args.tile_size
        mask = logits.argmax(0).numpy()
        written = mask if stored is None else stored[mask]
        if "png" in formats:
            (output / "masks").mkdir(exist_ok=True)
            write_mask_png(output / "masks" / f"{stem}.png", written)
        if "npy" in formats:
            (output / "masks").mkdir(exist_ok=True)
            np.save(output / "masks" / f"{stem}.npy", written.astype(np.int64))
        if args.overlay:
            save_overlay_panel(
                output / "overlays" / f"{stem}.png", image, mask, len(trained.class_names)
            )
    if trained.task == "classification":
        with (output / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "class", "probability"])
            writer.writerows(rows)
        for file, name, probability in rows[:10]:
            print(f"{file}: {name} ({probability:.3f})")
        if len(rows) > 10:
            print(f"... {len(rows) - 10} more")
        print(f"wrote {output / 'predictions.csv'} ({len(rows)} images)")
        return 0
    parts = [f"masks/ ({', '.join(formats)})"] + (["overlays/"] if args.overlay else [])
    tiling = f", {tiled} large image(s) tiled at {args.tile_size} px" if tiled else ""
    print(f"predicted {len(files)} image(s){tiling}; wrote {' and '.join(parts)} in {output}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``predict`` on the main CLI."""
    parser = subparsers.add_parser(
        "predict",
        help="predict masks (segmentation) or labels (classification) for images",
        description=describe(
            """
            Run a trained model on an image or a folder of images (PNG, JPEG, TIFF, NPY).
            Segmentation writes masks/<name>.png (class indices; --format npy for NumPy)
            and overlays/<name>.png; images larger than --tile-size on a side are
            predicted tile by tile (overlap-tile, blended), so any size fits in memory.
            Classification writes predictions.csv.
            """
        ),
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets predict runs/my-run image.png",
            "concatnets predict runs/my-run images/ --output preds/ --format png,npy",
            "concatnets predict runs/my-run/best.json big_slide.tif --tile-size 256",
            "concatnets predict runs/my-run images/ --original-values   # e.g. 0/255 masks",
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run folder or checkpoint .json")
    parser.add_argument("input", metavar="INPUT", help="image file or folder of images")
    parser.add_argument(
        "--output", default="predictions", metavar="DIR", help="default: predictions/"
    )
    parser.add_argument(
        "--format", default="png", help="mask formats, comma list of png, npy (default: png)"
    )
    parser.add_argument(
        "--overlay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write overlay PNGs (default: on)",
    )
    parser.add_argument(
        "--original-values",
        action="store_true",
        help="write masks with the stored values of the training masks (e.g. 0/255) "
        "instead of class indices",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        default=512,
        metavar="PX",
        help="images with a side above this are tiled (default: 512)",
    )
    parser.add_argument(
        "--overlap", type=int, metavar="PX", help="tile overlap (default: a quarter tile)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per pass (default: 4)")
    parser.add_argument(
        "--which", choices=("best", "last"), default="best", help="checkpoint of a run folder"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar, shown when stderr is a terminal",
    )
    parser.set_defaults(func=run)
    return parser
