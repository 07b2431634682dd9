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
from concatnets.data.io import (
    is_image_file,
    probe_image,
    read_image,
    write_mask_png,
)
from concatnets.data.notices import channel_conversion_notice, notice
from concatnets.inference.mask_encoding import (
    class_value_table,
    describe_table,
    stored_value_table,
)
from concatnets.inference.preview import preview_pair
from concatnets.inference.source import image_source
from concatnets.inference.streaming import class_dtype, predict_classes
from concatnets.training.dimensions import dims_mismatch_message
from concatnets.training.loading import TrainedModel, load_trained_model
from concatnets.training.plots import save_overlay_panel

__all__ = [
    "DEFAULT_TILE_SIZE",
    "add_parser",
    "check_tile_size",
    "predict_logits",
    "predict_mask",
    "run",
    "tile_size_for",
]

_FORMATS = ("png", "npy")
DEFAULT_TILE_SIZE = {2: 512, 3: 96}  # a 96^3 tile holds about as many voxels as 940^2 pixels


def check_tile_size(requested: int | None) -> None:
    """Refuse a ``--tile-size`` too small to tile with (None: the default applies)."""
    if requested is not None and requested < 16:
        raise ValueError(f"--tile-size {requested} is too small; use at least 16")


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
    segmentation logits are resized back. Volumes give ``(C, D, H, W)`` logits.

    Args:
        trained: The loaded model.
        image: ``(H, W)`` or ``(H, W, 3)`` image as read from disk; for a 3-D model a
            ``(D, H, W)`` or ``(D, H, W, C)`` volume.
        tile_size: Largest side predicted in one pass.
        overlap: Tile overlap for same-padding models (default: a quarter tile).
        batch_size: Tiles per forward pass.
        progress: Progress bar over tiles.
    """
    model = trained.model
    device = next(model.parameters()).device
    dims = trained.spatial_dims
    x = load_input_tensor(
        image, trained.in_channels, trained.normalization, dims, trained.normalization_statistics
    )[None]
    original = tuple(x.shape[2:])
    saved_policy = trained.metadata.get("size_policy") or {}
    resized = saved_policy.get("mode") == "resize"
    mode = "bilinear" if dims == 2 else "trilinear"
    if resized:
        size = tuple(int(v) for v in saved_policy["size"])
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=dims == 2)
    if trained.task == "classification":
        return model(x.to(device)).float()[0].cpu()
    valid = getattr(model, "padding", "same") == "valid"
    if valid or max(x.shape[2:]) > tile_size:
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
        logits = F.interpolate(logits, size=original, mode=mode, align_corners=False)
    return logits[0]


def predict_mask(
    trained: TrainedModel,
    image: np.ndarray,
    *,
    tile_size: int,
    overlap: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """Predicted classes of one stored segmentation image, ``(H, W)`` (or ``(D, H, W)``).

    As :func:`predict_logits` followed by an argmax, but streamed: the image is converted
    region by region (:class:`concatnets.inference.source.ImageSource`) and each band of
    tiles is reduced to classes at once, so memory is bounded by the tile and the image's
    width, not its area. Models trained with the ``resize`` size policy see the image
    resized as in training (small), through :func:`predict_logits`.
    """
    saved_policy = trained.metadata.get("size_policy") or {}
    if saved_policy.get("mode") == "resize":
        logits = predict_logits(trained, image, tile_size=tile_size, overlap=overlap)
        return logits.argmax(0).numpy().astype(class_dtype(logits.shape[0]))
    model = trained.model
    source = image_source(
        image,
        trained.in_channels,
        trained.normalization,
        trained.spatial_dims,
        trained.normalization_statistics,
    )
    valid = getattr(model, "padding", "same") == "valid"
    tiled = valid or max(source.spatial) > tile_size
    return predict_classes(
        model,
        source,
        tile_size=tile_size_for(model, tile_size) if tiled else None,
        overlap=None if valid else overlap,
        batch_size=batch_size,
        progress=progress,
    )


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


def _images_under(folder: Path) -> list[Path]:
    """Every supported image in ``folder``'s sub-folders, at any depth, hidden ones skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if not hidden and is_image_file(path):
            found.append(path)
    return found


def _find_inputs(path: Path, trained: TrainedModel, run: str) -> list[Path]:
    """The images to predict: ``path``, the images in it, or (classification) every image
    in its sub-folders, e.g. a class-folder tree, whose labels ``evaluate`` can score."""
    direct = path.is_dir() and not (path / "images").is_dir()
    if trained.task != "classification" or not direct or any(map(is_image_file, path.iterdir())):
        return find_input_images(path)
    files = _images_under(path)
    if not files:
        return find_input_images(path)  # its error names the folder and the file types
    folders = sorted({f.relative_to(path).parts[0] for f in files})
    known = [name for name in folders if name in trained.class_names]
    if known:
        notice(
            f"{path} holds class folders ({', '.join(known)}): predicting every image under "
            f"it; to score the predictions against these labels run "
            f"`concatnets evaluate {run} --data {path}`"
        )
    return files


def _check_inputs(trained: TrainedModel, files: list[Path]) -> None:
    """Refuse inputs of another dimensionality than the model before predicting any, and
    say once when images are converted to the model's channel count."""
    infos = [probe_image(path) for path in files]
    for path, info in zip(files, infos, strict=True):
        if info.spatial_dims != trained.spatial_dims:
            raise ValueError(
                dims_mismatch_message(
                    trained.architecture, trained.spatial_dims, str(path), info.spatial_dims
                )
            )
    if trained.spatial_dims == 2:
        channel_conversion_notice([info.channels for info in infos], trained.in_channels)


def _write_mask(
    output: Path,
    stem: str,
    mask: np.ndarray,
    formats: tuple[str, ...],
    tables: tuple[np.ndarray, np.ndarray],
) -> None:
    """Write ``masks/<stem>.png`` and/or ``.npy``; volumes are always ``.npy``.

    ``tables`` give the value of each class in the PNG and in the ``.npy``.
    """
    (output / "masks").mkdir(exist_ok=True)
    png_table, npy_table = tables
    if "png" in formats and mask.ndim == 2:
        write_mask_png(output / "masks" / f"{stem}.png", png_table[mask])
    if "npy" in formats or mask.ndim == 3:
        _save_npy_in_bands(output / "masks" / f"{stem}.npy", mask, npy_table)


def _save_npy_in_bands(path: Path, mask: np.ndarray, table: np.ndarray) -> None:
    """``np.save(path, table[mask].astype(np.int64))`` a band of rows at a time, so the
    int64 array (8 bytes per pixel) is never held whole."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=mask.shape)
    rows = max(1, (1 << 20) // max(1, int(np.prod(mask.shape[1:]))))
    for first in range(0, mask.shape[0], rows):
        out[first : first + rows] = table[mask[first : first + rows]]
    out.flush()
    del out


def _mask_tables(
    trained: TrainedModel, args: argparse.Namespace
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """Class -> value tables for PNG and ``.npy`` masks, and a line saying what PNGs hold."""
    classes = len(trained.class_names)
    stored = stored_value_table(trained.metadata.get("mask_values"), classes)
    if args.original_values and stored is None:
        notice("the model's training masks were class indices already; writing class indices")
    encoding = (
        "original" if args.original_values else "indices" if args.class_indices else "viewable"
    )
    png = class_value_table(classes, stored, encoding)
    npy = class_value_table(classes, stored, "original" if args.original_values else "indices")
    return (png, npy), describe_table(png, trained.class_names)


def run(args: argparse.Namespace) -> int:
    """Predict every input image and write the results."""
    formats = _parse_formats(args.format)
    check_tile_size(args.tile_size)
    device = resolve_device(args.device)
    trained = load_trained_model(args.run, device, which=args.which)
    files = _find_inputs(Path(args.input), trained, args.run)
    _check_inputs(trained, files)
    volumes = trained.spatial_dims == 3
    tile_size = args.tile_size or DEFAULT_TILE_SIZE[trained.spatial_dims]
    if volumes and "png" in formats and trained.task == "segmentation":
        notice("volume masks are written as .npy (D, H, W) arrays: PNG holds 2-D images only")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    tables, png_values = _mask_tables(trained, args)
    rows: list[tuple[str, int, list[float]]] = []  # file, best class, probabilities
    tiled = 0
    for path, stem in tqdm(
        list(zip(files, _unique_stems(files), strict=True)),
        desc="predict",
        disable=None if args.progress and len(files) > 1 else True,  # None: on a terminal
    ):
        image = read_image(path, mmap=True)
        if trained.task == "classification":
            logits = predict_logits(trained, image, tile_size=tile_size)
            probabilities = logits.softmax(0).tolist()
            best = max(range(len(probabilities)), key=probabilities.__getitem__)
            rows.append((str(path), best, probabilities))
            continue
        mask = predict_mask(
            trained, image, tile_size=tile_size, overlap=args.overlap, batch_size=args.batch_size
        )
        tiled += max(image.shape[: trained.spatial_dims]) > tile_size
        _write_mask(output, stem, mask, formats, tables)
        if args.overlay:
            shown, shown_mask = preview_pair(image, mask)
            save_overlay_panel(
                output / "overlays" / f"{stem}.png", shown, shown_mask, len(trained.class_names)
            )
        del image, mask
    if trained.task == "classification":
        with (output / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            names = trained.class_names
            writer.writerow(["file", "class", "probability", *(f"p_{n}" for n in names)])
            for file, best, probabilities in rows:
                shown = [f"{p:.6g}" for p in probabilities]
                writer.writerow([file, names[best], shown[best], *shown])
        for file, best, probabilities in rows[:10]:
            print(f"{file}: {trained.class_names[best]} ({probabilities[best]:.3f})")
        if len(rows) > 10:
            print(f"... {len(rows) - 10} more")
        print(f"wrote {output / 'predictions.csv'} ({len(rows)} images)")
        return 0
    written = ("npy",) if volumes else formats
    if "png" in written:
        print(
            f"mask PNGs hold {png_values}"
            + ("" if args.class_indices else " (--class-indices for 0, 1, ...)")
        )
    overlays = "overlays/ (middle slices)" if volumes else "overlays/"
    parts = [f"masks/ ({', '.join(written)})"] + ([overlays] if args.overlay else [])
    kind = "volume" if volumes else "image"
    unit = "voxels" if volumes else "px"
    tiling = f", {tiled} large {kind}(s) tiled at {tile_size} {unit}" if tiled else ""
    print(f"predicted {len(files)} {kind}(s){tiling}; wrote {' and '.join(parts)} in {output}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``predict`` on the main CLI."""
    parser = subparsers.add_parser(
        "predict",
        help="predict masks (segmentation) or labels (classification) for images",
        description=describe(
            """
            Run a trained model on an image or a folder of images (PNG, JPEG, TIFF, NPY).
            Segmentation writes masks/<name>.png (viewable: the training masks' values
            such as 0/255 where the run knows them, else classes spread over 0..255;
            --class-indices for 0, 1, ...), masks/<name>.npy with --format npy (class
            indices) and overlays/<name>.png; images larger than --tile-size on a side are
            predicted tile by tile (overlap-tile, blended), so any size fits in memory.
            Classification takes an image, a folder of images or a class-folder tree
            and writes predictions.csv: file, predicted class, its probability and one
            p_<class> column per class (softmax of the model as trained). A 3-D model
            (e.g. unet3d) takes .npy volumes (D, H, W) or (D, H, W, C) and writes
            masks/<name>.npy (D, H, W) and an overlay of the middle slice.
            """
        ),
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets predict runs/my-run image.png",
            "concatnets predict runs/my-run images/ --output preds/ --format png,npy",
            "concatnets predict runs/my-run/best.json big_slide.tif --tile-size 256",
            "concatnets predict runs/my-run images/ --original-values   # e.g. 0/255 masks",
            "concatnets predict runs/my-unet3d-run volumes/ --tile-size 64   # .npy volumes",
            "concatnets predict runs/my-densenet-run my_classes/   # every image in the tree",
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
    values = parser.add_mutually_exclusive_group()
    values.add_argument(
        "--class-indices",
        action="store_true",
        help="PNG masks hold class indices 0, 1, ... (default: viewable values, e.g. 0/255)",
    )
    values.add_argument(
        "--original-values",
        action="store_true",
        help="PNG and .npy masks hold the stored values of the training masks (e.g. 0/255) "
        "whatever they are",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="images with a side above this are tiled (default: 512; 96 for volumes)",
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
